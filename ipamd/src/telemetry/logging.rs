//! Logs: tracing to stderr, as JSON or text (LOG_FORMAT), filtered by LOG_LEVEL.

use crate::config::LogFormat;

/// Sets up tracing to stderr in the configured format (an unparsable level falls back to `info`).
pub fn init(format: LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

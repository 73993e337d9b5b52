//! The node daemon. Configuration errors exit with status 2 and a message naming the variable.

use ipamd::config::{Config, ConfigError};

// Two workers whatever the node's size: ipamd's load is a few requests per pod, and every worker costs memory
// (a 96-vCPU node would otherwise get 96).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cfg = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Parse(e)) => e.exit(),
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    ipamd::init_logging(cfg.log_format, &cfg.log_level);
    ipamd::daemon::run(cfg).await?;
    Ok(())
}

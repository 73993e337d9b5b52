//! Logs: tracing as JSON or text (LOG_FORMAT), filtered by LOG_LEVEL, to stderr — or where
//! AWS_VPC_K8S_CNI_LOG_FILE says: stdout instead, or a file as well as stderr (so `kubectl logs` keeps working
//! while EKS' log collector finds the file). The file is rotated at [`ROTATE_AT`] with one old copy: a node's
//! disk must not fill with ipamd's log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{LogFile, LogFormat};

/// Size at which the log file is renamed to `<path>.1` (replacing the older copy) and started anew.
pub const ROTATE_AT: u64 = 100 << 20;

/// Sets up tracing in the configured format (an unparsable level falls back to `info`). A log file that cannot
/// be opened is an error naming it.
pub fn init(format: LogFormat, level: &str, file: Option<&LogFile>) -> std::io::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sink = match file {
        None | Some(LogFile::Stderr) => Sink::Stderr,
        Some(LogFile::Stdout) => Sink::Stdout,
        Some(LogFile::Path(p)) => Sink::File(Arc::new(Mutex::new(Rotating::open(p, ROTATE_AT)?))),
    };
    let ansi = matches!(sink, Sink::Stderr) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(move || sink.clone()).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Where one log line goes.
#[derive(Clone)]
enum Sink {
    Stderr,
    Stdout,
    /// The file and stderr.
    File(Arc<Mutex<Rotating>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stderr => std::io::stderr().write(buf),
            Sink::Stdout => std::io::stdout().write(buf),
            Sink::File(f) => {
                // The file is best effort once open: a full disk must not stop stderr's copy.
                let _ = f.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf);
                std::io::stderr().write_all(buf).map(|()| buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().flush(),
            _ => std::io::stderr().flush(),
        }
    }
}

/// An append-only file renamed to `<path>.1` once it would grow past `limit`.
pub struct Rotating {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    limit: u64,
}

impl Rotating {
    /// Opens (creating its directory) `path` for appending.
    pub fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(named)?;
        let size = file.metadata().map_err(named)?.len();
        Ok(Self { path: path.to_path_buf(), file, size, limit })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.limit {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file never grows past the limit: the older half is kept as `.1`, anything older is gone.
    #[test]
    fn the_log_file_rotates_with_one_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ipamd.log");
        let mut f = Rotating::open(&path, 100).unwrap();
        for i in 0..25 {
            writeln!(f, "line {i:03} of the log").unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("sub/ipamd.log.1")).unwrap();
        assert!(now.len() <= 100 && old.len() <= 100, "{} {}", now.len(), old.len());
        assert!(now.ends_with("line 024 of the log\n"), "{now}");
        assert!(old.contains("line 019") && !old.contains("line 000"), "{old}");
        // Reopened, it goes on from its size.
        drop(f);
        let mut f = Rotating::open(&path, 100).unwrap();
        writeln!(f, "line 025 of the log").unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().len() <= 100);
    }
}

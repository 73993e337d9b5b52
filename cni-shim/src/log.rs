//! The plugin's log: appended to `logFile` (never stdout, which carries only the CNI result). A log that cannot
//! be opened is skipped rather than failing the pod.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Log {
    file: Option<std::fs::File>,
    debug: bool,
    prefix: String,
}

impl Log {
    pub fn open(path: &Path, level: Option<&str>, prefix: String) -> Self {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
        Self { file, debug: level.is_some_and(|l| l.eq_ignore_ascii_case("debug")), prefix }
    }

    fn write(&mut self, level: &str, msg: &str) {
        if let Some(f) = self.file.as_mut() {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let _ = writeln!(f, "{t:.3} {level} {} {msg}", self.prefix);
        }
    }

    pub fn info(&mut self, msg: &str) {
        self.write("INFO", msg);
    }

    pub fn debug(&mut self, msg: &str) {
        if self.debug {
            self.write("DEBUG", msg);
        }
    }

    pub fn error(&mut self, msg: &str) {
        self.write("ERROR", msg);
    }
}

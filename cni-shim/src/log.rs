//! The plugin's log: appended to `logFile` (never stdout, which carries only the CNI result), mode 0600 (it names
//! pods and addresses), and rotated once it passes [`MAX_BYTES`]: the full file becomes `<logFile>.1` (the one
//! before is dropped), so the log never grows without bound on a node that lives for months. A log that cannot
//! be opened is skipped rather than failing the pod. [`Phases`] times an ADD or DEL step by step for the debug
//! level.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size past which the log is rotated (the next plugin run starts a new one).
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

pub struct Log {
    file: Option<std::fs::File>,
    debug: bool,
    prefix: String,
}

impl Log {
    pub fn open(path: &Path, level: Option<&str>, prefix: String) -> Self {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Plugins run concurrently: two may rotate at once, and the later rename then drops a few lines of the
        // newest file at worst; nothing blocks a pod.
        if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_BYTES) {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            let _ = std::fs::rename(path, old);
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).ok();
        // A log an earlier version made world-readable is made private too.
        if let Some(f) = &file {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
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

/// Wall time per step of one command, for `logLevel: debug` ("phases: ipamd 0.61ms, veth 1.20ms, …").
#[derive(Debug)]
pub struct Phases {
    start: Instant,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub fn start() -> Self {
        let now = Instant::now();
        Self { start: now, last: now, marks: Vec::new() }
    }

    /// Ends the step called `name` (it began at the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("phases:")?;
        for (name, d) in &self.marks {
            write!(f, " {name} {:.2}ms,", d.as_secs_f64() * 1e3)?;
        }
        write!(f, " total {:.2}ms", (self.last - self.start).as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_private_and_rotated_by_size() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A log an earlier run left world-readable.
        std::fs::write(&path, b"old line\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Log::open(&path, None, "ADD c1".into()).info("first");
        assert_eq!(mode(&path), 0o600);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("INFO ADD c1 first\n"));
        // Past the size limit: the next run moves it to plugin.log.1 and starts afresh.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().set_len(MAX_BYTES).unwrap();
        Log::open(&path, None, "ADD c2".into()).info("second");
        let rotated = dir.path().join("plugin.log.1");
        assert_eq!(std::fs::metadata(&rotated).unwrap().len(), MAX_BYTES);
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert!(fresh.ends_with("INFO ADD c2 second\n") && fresh.lines().count() == 1, "{fresh}");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn phases_name_every_step_and_the_total() {
        let mut p = Phases::start();
        p.mark("ipamd");
        std::thread::sleep(Duration::from_millis(2));
        p.mark("veth");
        let s = p.to_string();
        assert!(s.starts_with("phases: ipamd "), "{s}");
        let veth: f64 = s.split("veth ").nth(1).unwrap().split("ms").next().unwrap().parse().unwrap();
        let total: f64 = s.split("total ").nth(1).unwrap().trim_end_matches("ms").parse().unwrap();
        assert!(veth >= 2.0 && total >= veth, "{s}");
    }
}

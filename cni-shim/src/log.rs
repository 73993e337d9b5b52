//! The plugin's log: appended to `logFile` (never stdout, which carries only the CNI result). A log that cannot
//! be opened is skipped rather than failing the pod. [`Phases`] times an ADD or DEL step by step for the debug
//! level.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

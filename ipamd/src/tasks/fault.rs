//! Failing a named task on demand, for the supervision tests — in debug builds only: a release build (what ships)
//! compiles none of it. With IPAMD_TEST_FAULT_FILE set, each supervised task looks at that file every 20 ms; a
//! line `<task>=panic` or `<task>=exit` makes that task panic or return; `<loop>=stall` stops a loop at its
//! [`stall_point`] (its heartbeat then lapses); `<point>=delay:<ms>` slows a named point of a request and
//! `<point>=error:<message>` makes it answer an error.

use std::future::Future;
use std::time::Duration;

#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic,
    Exit,
}

/// The file's line for `name`, if the file is configured and names it.
#[cfg(debug_assertions)]
fn line_for(name: &str) -> Option<String> {
    let path = std::env::var_os("IPAMD_TEST_FAULT_FILE")?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('=').map(str::to_string))
}

/// Runs `fut`, unless a fault for `task` turns up first; `None` when the fault made the task return.
#[cfg(debug_assertions)]
pub async fn inject<F: Future>(task: &str, fut: F) -> Option<F::Output> {
    if std::env::var_os("IPAMD_TEST_FAULT_FILE").is_none() {
        return Some(fut.await);
    }
    let mut fut = std::pin::pin!(fut);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = poll.tick() => {
                let fault = match line_for(task).as_deref() {
                    Some("panic") => Fault::Panic,
                    Some("exit") => Fault::Exit,
                    _ => continue,
                };
                tracing::warn!(task, ?fault, "test fault injected");
                match fault {
                    Fault::Panic => panic!("test fault: task '{task}' panics"),
                    Fault::Exit => return None,
                }
            }
        }
    }
}

#[cfg(not(debug_assertions))]
pub async fn inject<F: Future>(_task: &str, fut: F) -> Option<F::Output> {
    Some(fut.await)
}

/// A point where a loop waits forever when the file says `<name>=stall` (its heartbeat then lapses, as a
/// deadlocked loop's would). Returns at once otherwise, and always in release builds.
pub async fn stall_point(name: &str) {
    #[cfg(debug_assertions)]
    if line_for(name).as_deref() == Some("stall") {
        tracing::warn!(name, "test fault: the loop stalls here");
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// The error the request point `point` answers with (`None`: none; always `None` in release builds).
pub fn error(point: &str) -> Option<String> {
    #[cfg(debug_assertions)]
    {
        line_for(point)?.strip_prefix("error:").map(str::to_string)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = point;
        None
    }
}

/// How long to hold up the request point `point` (`None`: not at all; always `None` in release builds).
pub fn delay(point: &str) -> Option<Duration> {
    #[cfg(debug_assertions)]
    {
        let ms = line_for(point)?.strip_prefix("delay:")?.parse().ok()?;
        Some(Duration::from_millis(ms))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = point;
        None
    }
}

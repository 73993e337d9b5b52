//! Named long-lived tasks and the one supervisor over them. Every task that must run for ipamd's whole life
//! (the gRPC server, the pool actor's thread, the reconcile loop, the metrics server, pod GC, the conntrack
//! janitor, the Kubernetes watches and Event sender) is started through [`Tasks`]; the [`Supervisor`] learns at
//! once when one ends or panics, and when a loop that beats a [`Heartbeat`] stops making progress. The daemon
//! then reports NOT_SERVING and exits non-zero, so the kubelet restarts a node agent that would otherwise serve
//! from a frozen pool forever (the checkpoint is durable before every reply, so nothing is lost).
//!
//! May use: nothing else of ipamd.

pub mod fault;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often heartbeats are checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Why a task is no longer running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its future returned (or its thread's function did).
    Returned,
    /// It returned an error.
    Failed(String),
    Panicked(String),
    /// It beat no heartbeat within the time it promised.
    Stalled(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Returned => write!(f, "ended"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Panicked(e) => write!(f, "panicked: {e}"),
            Outcome::Stalled(e) => write!(f, "stalled: {e}"),
        }
    }
}

/// A task that is no longer running, and whether that was allowed (a one-shot job that finished, or any task
/// once shutdown has begun).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub task: String,
    pub outcome: Outcome,
    pub expected: bool,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task '{}' {}", self.task, self.outcome)
    }
}

#[derive(Debug)]
struct Beat {
    task: String,
    deadline: Instant,
    promised: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    handles: Vec<(String, JoinHandle<()>)>,
    beats: Vec<Arc<Mutex<Beat>>>,
}

/// Cheap, cloneable: starts named tasks under the supervisor and tells them when shutdown begins.
#[derive(Clone, Debug)]
pub struct Tasks {
    ended: mpsc::UnboundedSender<Ended>,
    shutdown: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
}

/// Progress of a loop: each [`Heartbeat::beat`] promises the next one within the given time; a promise
/// broken counts as the task's death.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Mutex<Beat>>);

impl Heartbeat {
    /// The loop is alive and will beat again within `within`.
    pub fn beat(&self, within: Duration) {
        let mut b = lock(&self.0);
        b.deadline = Instant::now() + within;
        b.promised = within;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Whether a task may return without that being a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Runs until shutdown: returning earlier is a failure.
    Forever,
    /// A job that finishes (the CNI install): returning is fine, a panic or error is not.
    UntilDone,
}

impl Tasks {
    /// Runs `fut` for ipamd's whole life: its end, its error or its panic before shutdown is fatal.
    pub fn spawn<F, E>(&self, name: &str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.spawn_as(name, Life::Forever, fut);
    }

    /// Runs a loop for ipamd's whole life: its end or panic before shutdown is fatal.
    pub fn spawn_loop<F>(&self, name: &str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_as(name, Life::Forever, fut.map(Ok::<(), String>));
    }

    /// Runs a job that finishes by itself; only an error or a panic is fatal.
    pub fn spawn_job<F>(&self, name: &str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_as(name, Life::UntilDone, fut.map(Ok::<(), String>));
    }

    fn spawn_as<F, E>(&self, name: &str, life: Life, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        let watched = self.watched(name, life, fut);
        let handle = tokio::spawn(watched);
        lock(&self.shared).handles.push((name.to_string(), handle));
    }

    /// Runs `f` on its own OS thread (the pool actor: its fsyncs must not hold up a runtime worker) with a
    /// current-thread runtime for the future it makes; its end or panic before shutdown is fatal.
    pub fn spawn_thread<F, Fut>(&self, name: &str, f: F) -> std::io::Result<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let me = self.clone();
        let task = name.to_string();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            // Built on the thread: the future need not be Send.
            let watched = me.watched(&task, Life::Forever, async move {
                f().await;
                Ok::<(), String>(())
            });
            rt.block_on(watched);
        })?;
        Ok(())
    }

    /// Wraps `fut` so that its end is reported, panics included (and, in debug builds, so that a test can fail
    /// it on demand: see [`fault`]).
    fn watched<F, E>(&self, name: &str, life: Life, fut: F) -> impl Future<Output = ()> + use<F, E>
    where
        F: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let ended = self.ended.clone();
        let shutdown = self.shutdown.clone();
        let task = name.to_string();
        async move {
            let fut = fault::inject(&task, fut);
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Some(Ok(()))) | Ok(None) => Outcome::Returned,
                Ok(Some(Err(e))) => Outcome::Failed(e.to_string()),
                Err(p) => Outcome::Panicked(panic_text(p.as_ref())),
            };
            let expected = *shutdown.borrow() || (life == Life::UntilDone && outcome == Outcome::Returned);
            let _ = ended.send(Ended { task, outcome, expected });
        }
    }

    /// A heartbeat for the loop `name`; it must first beat within `first`.
    pub fn heartbeat(&self, name: &str, first: Duration) -> Heartbeat {
        let beat = Arc::new(Mutex::new(Beat { task: name.into(), deadline: Instant::now() + first, promised: first }));
        lock(&self.shared).beats.push(beat.clone());
        Heartbeat(beat)
    }

    /// Resolves when shutdown begins (tasks that stop gracefully wait on it).
    pub async fn shutdown_started(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The receiving side: owned by the daemon.
#[derive(Debug)]
pub struct Supervisor {
    tasks: Tasks,
    ended: mpsc::UnboundedReceiver<Ended>,
    shutdown: watch::Sender<bool>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = Tasks { ended: ended_tx, shutdown: shutdown_rx, shared: Arc::default() };
        Self { tasks, ended, shutdown }
    }

    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// Watches every task until `stop` resolves (SIGTERM: `Ok`) or a task dies (`Err`, naming it and why).
    pub async fn watch(&mut self, stop: impl Future<Output = ()>) -> Result<(), Ended> {
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                Some(e) = self.ended.recv() => {
                    if !e.expected {
                        return Err(e);
                    }
                    tracing::info!("{e} (its work is done)");
                }
                _ = tick.tick() => {
                    if let Some(stalled) = self.stalled() {
                        return Err(stalled);
                    }
                }
            }
        }
    }

    fn stalled(&self) -> Option<Ended> {
        let now = Instant::now();
        let shared = lock(&self.tasks.shared);
        shared.beats.iter().find_map(|b| {
            let b = lock(b);
            (now > b.deadline).then(|| Ended {
                task: b.task.clone(),
                outcome: Outcome::Stalled(format!(
                    "no progress for {:.1?} (it promised its next round within {:.1?})",
                    now - (b.deadline - b.promised),
                    b.promised
                )),
                expected: false,
            })
        })
    }

    /// Waits for `task` to end (the ends of others are passed over).
    pub async fn ended(&mut self, task: &str) -> Ended {
        while let Some(e) = self.ended.recv().await {
            if e.task == task {
                return e;
            }
        }
        // Never reached: the supervisor itself holds a sender, so the channel stays open.
        std::future::pending().await
    }

    /// Begins shutdown: tasks waiting on [`Tasks::shutdown_started`] stop by themselves, and every end from now
    /// on is expected.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Ends every task still running (after those that stop by themselves had their chance) and waits until
    /// each has ended. Returns the names of those that had to be stopped.
    pub async fn stop_all(mut self) -> Vec<String> {
        self.begin_shutdown();
        let handles = std::mem::take(&mut lock(&self.tasks.shared).handles);
        let mut stopped = Vec::new();
        for (name, handle) in handles {
            if !handle.is_finished() {
                handle.abort();
                stopped.push(name);
            }
            // An aborted task never reaches its wrapper's report: its handle says when it is gone.
            let _ = handle.await;
        }
        while self.ended.try_recv().is_ok() {}
        stopped
    }
}

#[cfg(test)]
mod tests;

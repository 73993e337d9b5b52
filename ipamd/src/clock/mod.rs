//! The process's two clocks. Every deadline and age ipamd keeps in memory (an IP's cooldown, the grace of an IP
//! given back to EC2, surge's window, pod GC's grace, how old an allocation is) is a [`Mono`]: a monotonic clock
//! that NTP or an operator stepping the system time cannot move, so a step forward cannot hand out an IP whose
//! conntrack entries are still due to be flushed and a step back cannot hold IPs or waiters forever. The wall
//! clock ([`Clock::wall_ms`]) only stamps what is shown or saved (status, events, `allocated_unix`, the
//! checkpoint) and is never compared with a deadline. A [`Mono`] means nothing outside this process: what is
//! saved across a restart is read back conservatively (see `Datastore::restore`). [`Fake`] drives both clocks by
//! hand in tests and steps the wall clock alone.
//!
//! May use: nothing else of ipamd.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point on the process's monotonic clock: milliseconds since an origin of the clock's choosing (the process
/// start for [`System`]). Only differences between two of them mean anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(i64);

impl Mono {
    pub const fn from_ms(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn ms(self) -> i64 {
        self.0
    }

    /// This point plus `d` (saturating: a huge setting cannot wrap a deadline into the past).
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(self, earlier: Mono) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

/// Both clocks read at one moment: what turns a monotonic deadline into a wall time to show or save.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub mono: Mono,
    pub wall_ms: i64,
}

impl Reading {
    /// The wall time (unix millis) at which `t` falls, as the wall clock reads now (a later step moves it).
    pub fn wall_of(&self, t: Mono) -> i64 {
        self.wall_ms.saturating_add(t.0.saturating_sub(self.mono.0))
    }
}

/// Where ipamd reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now on the monotonic clock: for deadlines and ages.
    fn now(&self) -> Mono;
    /// Now on the wall clock, unix milliseconds: for what is shown or saved, never for a deadline.
    fn wall_ms(&self) -> i64;

    fn read(&self) -> Reading {
        Reading { mono: self.now(), wall_ms: self.wall_ms() }
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock, unix milliseconds (0 before 1970).
pub fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The real clocks: `Instant` (CLOCK_MONOTONIC) from the process start, and the system time.
#[derive(Debug)]
pub struct System {
    origin: Instant,
}

impl Clock for System {
    fn now(&self) -> Mono {
        Mono(self.origin.elapsed().as_millis() as i64)
    }

    fn wall_ms(&self) -> i64 {
        wall_ms()
    }
}

/// The real clocks, shared.
pub fn system() -> SharedClock {
    Arc::new(System { origin: Instant::now() })
}

/// A clock for tests: [`Fake::advance`] moves both clocks as time passing does; [`Fake::step_wall`] moves the
/// wall clock alone, either way, as NTP or an operator does.
#[derive(Debug)]
pub struct Fake {
    mono: AtomicI64,
    wall: AtomicI64,
}

impl Fake {
    /// Monotonic time 0 and the wall clock at `wall_ms`.
    pub fn new(wall_ms: i64) -> Arc<Self> {
        Arc::new(Self { mono: AtomicI64::new(0), wall: AtomicI64::new(wall_ms) })
    }

    pub fn advance(&self, d: Duration) {
        let ms = d.as_millis() as i64;
        self.mono.fetch_add(ms, Ordering::SeqCst);
        self.wall.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps the wall clock by `by_ms` (negative: back); the monotonic clock does not move.
    pub fn step_wall(&self, by_ms: i64) {
        self.wall.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for Fake {
    fn now(&self) -> Mono {
        Mono(self.mono.load(Ordering::SeqCst))
    }

    fn wall_ms(&self) -> i64 {
        self.wall.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_step_does_not_move_the_monotonic_clock() {
        let c = Fake::new(1_700_000_000_000);
        c.advance(Duration::from_secs(2));
        let t = c.now();
        c.step_wall(-3_600_000);
        c.step_wall(7_200_000);
        assert_eq!((c.now(), c.wall_ms()), (t, 1_700_000_000_000 + 2_000 + 3_600_000));
        assert_eq!(t.after(Duration::from_secs(1)).since(t), Duration::from_secs(1));
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO, "never negative");
        assert_eq!(t.after(Duration::MAX).ms(), i64::MAX, "saturates");
        let r = c.read();
        assert_eq!(r.wall_of(r.mono.after(Duration::from_secs(30))), r.wall_ms + 30_000);
    }

    #[test]
    fn the_system_clock_runs_forward() {
        let c = system();
        let (a, b) = (c.now(), c.now());
        assert!(b >= a && c.wall_ms() > 1_600_000_000_000);
    }
}

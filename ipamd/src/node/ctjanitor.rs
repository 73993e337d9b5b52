//! Deletes the conntrack entries of released IPs, off the request path and in batches.
//!
//! Each release is flushed twice: soon after the release, and again as the cooldown ends, just before the IP can
//! be handed to another pod (flows that appeared in between must not reach the next pod either). The second
//! flush is timed from the release itself, which each job carries: a job can wait in the queue while a flush of
//! a big table runs, and timing it from when it is taken would flush after the IP is back in use. Releases that
//! arrive within a short window share one flush: a flush dumps the whole conntrack table, and doing that once
//! per DEL on a busy node costs more CPU than the DEL itself (it showed as +2 ms on DEL's p50 on 2 cores).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::tasks::Tasks;

/// How long released IPs gather before one flush; never more than a quarter of the cooldown, so the first
/// flush still lands well inside it.
pub const BATCH_WINDOW: Duration = Duration::from_millis(500);
/// The second flush runs this long before the cooldown of the batch's first IP ends.
const BEFORE_REUSE: Duration = Duration::from_millis(100);

/// Deletes the conntrack entries of each IP given; blocking (it runs on tokio's blocking pool).
pub type Flush = Arc<dyn Fn(&[Ipv4Addr]) + Send + Sync>;

/// The flush ipamd uses: ctnetlink in ipamd's own namespace (the node's), logging what went.
pub fn kernel_flush() -> Flush {
    Arc::new(|ips: &[Ipv4Addr]| match datapath::conntrack::forget_many(ips) {
        Ok(0) => {}
        Ok(n) => tracing::info!(ips = ?ips, entries = n, "conntrack entries of released IPs deleted"),
        Err(e) => tracing::warn!(ips = ?ips, "conntrack clean-up: {e}"),
    })
}

/// Starts the janitor under the supervisor; send each released IP on the returned channel, with when it was
/// released (or a moment before: the pool's cooldown must not end before the janitor's idea of it).
pub fn start(cooldown: Duration, flush: Flush, tasks: &Tasks) -> UnboundedSender<(Ipv4Addr, Instant)> {
    let (tx, rx) = unbounded_channel();
    tasks.spawn_loop("conntrack janitor", run(rx, cooldown, flush));
    tx
}

fn window(cooldown: Duration) -> Duration {
    BATCH_WINDOW.min(cooldown / 4)
}

async fn flush_off_thread(flush: &Flush, ips: Arc<[Ipv4Addr]>) {
    let f = flush.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || f(&ips)).await {
        tracing::warn!("conntrack clean-up task: {e}");
    }
}

async fn run(mut rx: UnboundedReceiver<(Ipv4Addr, Instant)>, cooldown: Duration, flush: Flush) {
    let window = window(cooldown);
    while let Some((first, released)) = rx.recv().await {
        tokio::time::sleep(window).await;
        let mut batch = vec![first];
        // The earliest release of the batch is the first whose cooldown ends.
        let mut earliest = released;
        while let Ok((ip, released)) = rx.try_recv() {
            batch.push(ip);
            earliest = earliest.min(released);
        }
        let reuse = earliest + cooldown;
        batch.sort_unstable();
        batch.dedup();
        let batch: Arc<[Ipv4Addr]> = batch.into();
        flush_off_thread(&flush, batch.clone()).await;
        let flush = flush.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(reuse.checked_sub(BEFORE_REUSE).unwrap_or(reuse)).await;
            flush_off_thread(&flush, batch).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Calls = Arc<Mutex<Vec<(Duration, Vec<Ipv4Addr>)>>>;

    fn recorder(t0: Instant) -> (Flush, Calls) {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        (Arc::new(move |ips: &[Ipv4Addr]| c.lock().unwrap().push((t0.elapsed(), ips.to_vec()))), calls)
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    /// Releases close together share a flush, each IP is flushed again just before its cooldown ends, and a
    /// release after the window starts a batch of its own.
    #[tokio::test(start_paused = true)]
    async fn releases_close_together_share_each_flush() {
        let cooldown = Duration::from_secs(30);
        let t0 = Instant::now();
        let (flush, calls) = recorder(t0);
        let tx = start(cooldown, flush, &crate::tasks::Supervisor::new().tasks());
        for n in [1, 2, 2, 3] {
            tx.send((ip(n), Instant::now())).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.send((ip(4), Instant::now())).unwrap();
        tokio::time::sleep(Duration::from_secs(40)).await;
        let calls = calls.lock().unwrap().clone();
        let ips: Vec<_> = calls.iter().map(|(_, ips)| ips.clone()).collect();
        assert_eq!(ips, [vec![ip(1), ip(2), ip(3)], vec![ip(4)], vec![ip(1), ip(2), ip(3)], vec![ip(4)]]);
        let at: Vec<_> = calls.iter().map(|(t, _)| t.as_millis()).collect();
        // First flushes one window after the batch's first release; the second ones before that IP's cooldown
        // (30 s after its release) ends.
        assert_eq!(at[0], 500);
        assert!(at[1] >= 2400 + 500 && at[1] < 2400 + 600, "{at:?}");
        assert!(at[2] < 30_000 && at[2] >= 29_800, "{at:?}");
        assert!(at[3] < 30_000 + 2400 && at[3] >= 29_800 + 2400, "{at:?}");
    }

    /// A short cooldown shrinks the window so both flushes still land inside it.
    #[tokio::test(start_paused = true)]
    async fn a_short_cooldown_shrinks_the_window() {
        let t0 = Instant::now();
        let (flush, calls) = recorder(t0);
        let tx = start(Duration::from_secs(1), flush, &crate::tasks::Supervisor::new().tasks());
        tx.send((ip(9), Instant::now())).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at: Vec<_> = calls.lock().unwrap().iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(at.len(), 2);
        assert_eq!(at[0], 250);
        assert!(at[1] < 1000, "{at:?}");
    }

    /// A job that waited in the queue (the janitor was busy with a flush of a big table): its second flush is
    /// still before its cooldown ends, counted from the release, not from when the janitor took it.
    #[tokio::test(start_paused = true)]
    async fn the_second_flush_is_timed_from_the_release_not_from_the_queue() {
        let t0 = Instant::now();
        let (flush, calls) = recorder(t0);
        let tx = start(Duration::from_secs(30), flush, &crate::tasks::Supervisor::new().tasks());
        // Released at t0, handed over 10 s later.
        tokio::time::sleep(Duration::from_secs(10)).await;
        tx.send((ip(7), t0)).unwrap();
        tokio::time::sleep(Duration::from_secs(40)).await;
        let at: Vec<_> = calls.lock().unwrap().iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(at.len(), 2, "{at:?}");
        assert_eq!(at[0], 10_500, "first flush one window after it arrives");
        assert!((29_800..30_000).contains(&at[1]), "second flush before the IP is reused at 30 000 ms: {at:?}");
    }
}

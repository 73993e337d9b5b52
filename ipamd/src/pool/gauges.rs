//! The pool's numbers for `/metrics`, published by the actor after each batch it made durable: a scrape reads
//! the latest copy and never queues on the actor (a scraper polling hard, or many scrapers, cannot slow an ADD
//! or cut a group commit short).

use tokio::sync::watch;

use super::Actor;
use crate::planner::Limits;
use crate::state::datastore::Stats;

/// What the metrics show of the pool; consistent with itself (one batch's end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub stats: Stats,
    pub limits: Option<Limits>,
    pub max_pods: Option<u32>,
    pub serving: bool,
    pub last_reconcile_unix: i64,
    pub prefixes: usize,
    pub fallback_enis: usize,
    pub checkpoint_writes: u64,
}

pub(super) fn channel() -> (watch::Sender<Gauges>, watch::Receiver<Gauges>) {
    watch::channel(Gauges::default())
}

impl Actor {
    /// Publishes the gauges when they changed (readers are not woken for nothing).
    pub(super) fn publish(&self) {
        let g = Gauges {
            stats: self.ds.stats(self.read().mono),
            limits: self.limits,
            max_pods: self.pod_limits().map(|l| l.max_pods(self.settings.targets.warm_prefix.is_some())),
            serving: self.serving,
            last_reconcile_unix: self.last_reconcile_unix,
            prefixes: self.ds.prefix_count(),
            fallback_enis: self.ds.fallback_enis().count(),
            checkpoint_writes: self.checkpoint_writes,
        };
        self.gauges.send_if_modified(|cur| {
            let changed = *cur != g;
            if changed {
                *cur = g;
            }
            changed
        });
    }
}

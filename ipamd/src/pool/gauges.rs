//! The pool's numbers for `/metrics`, published by the actor after each batch it made durable: a scrape reads
//! the latest copy and never queues on the actor (a scraper polling hard, or many scrapers, cannot slow an ADD
//! or cut a group commit short).

use tokio::sync::watch;

use super::Actor;
use crate::planner::Limits;
use crate::state::datastore::{Datastore, ForceRemoved, IpState, Stats};

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
    /// Attached ENIs ipamd does not manage (they take slots of the instance's limit).
    pub foreign: u32,
    pub prefix_mode: bool,
    /// Pods' IPs per ENI (ENI id, count).
    pub assigned_per_eni: Vec<(String, usize)>,
    /// Pods' IPs per /28 prefix, and each pod IP outside a prefix as its /32.
    pub assigned_per_cidr: Vec<(String, usize)>,
    pub force_removed: ForceRemoved,
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
            foreign: self.foreign,
            prefix_mode: self.settings.targets.warm_prefix.is_some(),
            assigned_per_eni: per_eni(&self.ds),
            assigned_per_cidr: per_cidr(&self.ds),
            force_removed: self.ds.force_removed,
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

fn per_eni(ds: &Datastore) -> Vec<(String, usize)> {
    ds.enis.values().map(|e| (e.id.clone(), e.ips.values().filter(|s| **s == IpState::Assigned).count())).collect()
}

fn per_cidr(ds: &Datastore) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for e in ds.enis.values() {
        for p in &e.prefixes {
            let n = e.ips.iter().filter(|(ip, s)| **s == IpState::Assigned && p.contains(*ip)).count();
            out.push((p.to_string(), n));
        }
        let single =
            e.ips.iter().filter(|(ip, s)| **s == IpState::Assigned && !e.prefixes.iter().any(|p| p.contains(*ip)));
        out.extend(single.map(|(ip, _)| (format!("{ip}/32"), 1)));
    }
    out
}

//! Surge: how many pods are waiting for an IP right now. A Deployment scaling up sends AddNetwork requests faster
//! than one warm step per round refills the pool; each refused pod (kubelet retries it) is counted here, and the
//! planner asks EC2 for all of them in one call instead of one warm step per round. A pod stops counting when it
//! gets an IP, or when it has not asked again for [`WINDOW`] (it went away), so the demand decays to nothing
//! and the pool shrinks back to its targets. Pods are counted by namespace/name: kubelet retries a failed pod
//! with a new sandbox (a new container id), which is still one pod waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::Mono;
use crate::state::datastore::AllocKey;

/// Who is waiting: the pod (namespace/name) when the runtime said, else the attachment.
pub fn waiter(key: &AllocKey, namespace: &str, name: &str) -> String {
    if name.is_empty() { format!("container {}", key.container_id) } else { format!("{namespace}/{name}") }
}

/// How long a refused pod counts without asking again (kubelet retries a failed sandbox within seconds).
pub const WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Surge {
    /// Refused pods ([`waiter`]) and when each last asked (monotonic: a wall step back must not keep a pod that
    /// went away counted, and the pool grown for it, for as long as the step).
    waiting: BTreeMap<String, Mono>,
}

impl Surge {
    pub fn refused(&mut self, waiter: String, now: Mono) {
        self.waiting.insert(waiter, now);
    }

    pub fn served(&mut self, waiter: &str) {
        self.waiting.remove(waiter);
    }

    /// Pods waiting now (forgetting those that stopped asking).
    pub fn demand(&mut self, now: Mono) -> u32 {
        self.waiting.retain(|_, at| now.since(*at) < WINDOW);
        self.waiting.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Mono {
        Mono::from_ms(ms)
    }

    fn key(c: &str) -> AllocKey {
        AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
    }

    #[test]
    fn waiting_pods_count_until_served_or_gone() {
        let mut s = Surge::default();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            s.refused(waiter(&key(&format!("sandbox-{c}")), "ns", c), t(i as i64));
        }
        // kubelet retries pod "a" in a new sandbox: still one pod waiting.
        s.refused(waiter(&key("sandbox-a2"), "ns", "a"), t(5));
        assert_eq!(s.demand(t(10)), 3, "a retry is the same pod");
        s.served(&waiter(&key("sandbox-b"), "ns", "b"));
        assert_eq!(s.demand(t(10)), 2);
        // Neither asked again: "c" (last at 2) goes first, then "a" (last at 5).
        assert_eq!(s.demand(t(2).after(WINDOW)), 1);
        assert_eq!(s.demand(t(5).after(WINDOW)), 0, "the demand decays to nothing");
        // Without a pod name (not Kubernetes), the attachment is the waiter.
        assert_eq!(waiter(&key("c1"), "", ""), "container c1");
    }
}

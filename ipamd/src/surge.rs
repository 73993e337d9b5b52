//! Surge: how many pods are waiting for an IP right now. A Deployment scaling up sends AddNetwork requests faster
//! than one warm step per round refills the pool; each refused pod (kubelet retries it) is counted here, and the
//! planner asks EC2 for all of them in one call instead of one warm step per round. A pod stops counting when it
//! gets an IP, or when it has not asked again for [`WINDOW`] (it went away), so the demand decays to nothing
//! and the pool shrinks back to its targets.

use std::collections::BTreeMap;

use crate::datastore::AllocKey;

/// How long a refused pod counts without asking again (kubelet retries a failed sandbox within seconds).
pub const WINDOW_MS: i64 = 30_000;

#[derive(Debug, Default)]
pub struct Surge {
    /// Refused pods and when each last asked (unix millis).
    waiting: BTreeMap<AllocKey, i64>,
}

impl Surge {
    pub fn refused(&mut self, key: &AllocKey, now_ms: i64) {
        self.waiting.insert(key.clone(), now_ms);
    }

    pub fn served(&mut self, key: &AllocKey) {
        self.waiting.remove(key);
    }

    /// Pods waiting now (forgetting those that stopped asking).
    pub fn demand(&mut self, now_ms: i64) -> u32 {
        self.waiting.retain(|_, at| now_ms - *at < WINDOW_MS);
        self.waiting.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AllocKey {
        AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
    }

    #[test]
    fn waiting_pods_count_until_served_or_gone() {
        let mut s = Surge::default();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            s.refused(&key(c), i as i64);
        }
        s.refused(&key("a"), 5);
        assert_eq!(s.demand(10), 3, "a retry is the same pod");
        s.served(&key("b"));
        assert_eq!(s.demand(10), 2);
        // Neither asked again: "c" (last at 2) goes first, then "a" (last at 5).
        assert_eq!(s.demand(2 + WINDOW_MS), 1);
        assert_eq!(s.demand(5 + WINDOW_MS), 0, "the demand decays to nothing");
    }
}

//! The node's address book: attached ENIs, their secondary IPs and each IP's state, and the pod allocations
//! keyed by (network name, container id, ifname). Pure data with no I/O; the pool actor is its only owner.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::planner::{EniView, PoolView, PrefixView};

/// The network name of allocations rebuilt from host state after the checkpoint was lost: their CNI keys are
/// unknown, so no runtime GC of a real network touches them; each is released once its pod's host route is
/// gone (the runtime deleted the pod's namespace).
pub const RECOVERED_NETWORK: &str = "vpc-cni-recovered";

/// One pod attachment, as the CNI spec identifies it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocKey {
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
}

/// What ipamd remembers about an allocation (also what the checkpoint stores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// K8S_POD_UID when the runtime passed it: tells this pod from a later one with the same namespace/name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    pub allocated_unix: i64,
}

/// State of one secondary IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpState {
    Free,
    Assigned,
    /// Released; not handed out again before this time (unix millis).
    Cooling {
        until_ms: i64,
    },
    /// Chosen by the planner to be unassigned in EC2; never handed out.
    Releasing,
    /// EC2 assigned it but IMDS does not show it yet (IMDS lags EC2): counted, not handed out.
    Pending,
}

/// One attached ENI as observed in EC2, plus ipamd's view of its IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub mac: String,
    pub device_number: u32,
    pub primary: bool,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub primary_ip: Ipv4Addr,
    /// Secondary IPs only: the primary IP is the ENI's own and never goes to a pod.
    pub ips: BTreeMap<Ipv4Addr, IpState>,
    /// Chosen by the planner for detach + delete; no new assignments.
    pub deleting: bool,
    /// The node's link for this ENI is configured (host routing in place); only then are its IPs handed out.
    pub ready: bool,
    /// Prefix mode: the /28s delegated to it (their addresses are in `ips`).
    pub prefixes: Vec<Ipv4Net>,
    /// Prefix mode: EC2 had no free /28 for it, so it grows by single IPs.
    pub fallback: bool,
}

impl Eni {
    /// Secondary slots in use: one per prefix, one per address outside the prefixes.
    pub fn slots(&self) -> usize {
        self.prefixes.len() + self.ips.keys().filter(|ip| !in_prefixes(&self.prefixes, ip)).count()
    }
}

pub use crate::cloud::ec2::PREFIX_LEN;

/// Every address of `net` (all 16 of a /28 serve pods: EC2 reserves nothing inside a delegated prefix). Only a
/// /28 is expanded: anything else yields nothing (the boundaries refuse them; this is the last guard).
pub fn prefix_addresses(net: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + use<> {
    let base = u32::from(net.network());
    let size = if net.prefix_len() == PREFIX_LEN { 1u64 << (32 - u32::from(PREFIX_LEN)) } else { 0 };
    (0..size).map(move |k| Ipv4Addr::from(base.wrapping_add(k as u32)))
}

/// Whether `ip` lies in one of `prefixes`.
pub(crate) fn in_prefixes(prefixes: &[Ipv4Net], ip: &Ipv4Addr) -> bool {
    prefixes.iter().any(|p| p.contains(ip))
}

/// An ENI as EC2 reports it (input to [`Datastore::observe`]); also what the checkpoint keeps of each ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedEni {
    pub id: String,
    pub mac: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Those of `secondary_ips` that IMDS does not show yet.
    #[serde(default, skip_serializing)]
    pub unconfirmed: Vec<Ipv4Addr>,
    /// Host networking for the ENI is in place (always true for the primary ENI).
    #[serde(default = "yes", skip_serializing)]
    pub ready: bool,
    /// Delegated /28 prefixes (prefix mode); their addresses are handed out like secondary IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<Ipv4Net>,
    /// Prefix mode: EC2 had no free /28 for this ENI (InsufficientCidrBlocks); it grows by single IPs.
    #[serde(default, skip_serializing)]
    pub fallback: bool,
}

impl ObservedEni {
    /// Secondary IPs and every address of the prefixes.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.secondary_ips.iter().copied().chain(self.prefixes.iter().flat_map(prefix_addresses))
    }
}

fn yes() -> bool {
    true
}

/// Why an assignment could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error(
        "no free IP on this node: {assigned} assigned, {cooling} cooling, {pending} waiting for IMDS, {enis} ENIs attached"
    )]
    Exhausted { assigned: usize, cooling: usize, pending: usize, enis: usize },
}

/// Result of an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_number: u32,
    /// false when the key already held this IP (an idempotent repeat).
    pub new: bool,
}

/// Counts for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub enis: usize,
    pub total: usize,
    pub assigned: usize,
    pub cooling: usize,
    pub free: usize,
    /// Assigned in EC2, not yet shown by IMDS.
    pub pending: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Datastore {
    pub enis: BTreeMap<String, Eni>,
    pub allocations: BTreeMap<AllocKey, Allocation>,
    /// Released IPs still resting (kept here too so they survive an ENI observation and a restart).
    pub cooling: BTreeMap<Ipv4Addr, i64>,
    /// IPs handed to EC2 for unassignment, until when to keep them out of use even if EC2 still lists them
    /// (its reads can lag a write).
    pub releasing: BTreeMap<Ipv4Addr, i64>,
    /// Custom networking: the primary ENI serves no pods, so it is neither handed out from nor planned for.
    pub primary_reserved: bool,
}

/// How long an IP given back to EC2 stays unusable while EC2 may still report it.
const RELEASE_GRACE_MS: i64 = 60_000;

impl Datastore {
    /// Rebuilds from a checkpoint: allocations and cooling IPs. ENIs come with the first observation.
    pub fn restore(allocations: BTreeMap<AllocKey, Allocation>, cooling: BTreeMap<Ipv4Addr, i64>) -> Self {
        Self { allocations, cooling, ..Self::default() }
    }

    /// Replaces the ENI set with what EC2 reports. IPs that EC2 no longer has are dropped; allocations are
    /// kept either way (a pod whose IP vanished still needs its DEL to find what to tear down).
    pub fn observe(&mut self, observed: Vec<ObservedEni>, primary_eni_id: &str, now_ms: i64) {
        self.cooling.retain(|_, until| *until > now_ms);
        let in_ec2: std::collections::BTreeSet<Ipv4Addr> = observed.iter().flat_map(ObservedEni::addresses).collect();
        self.releasing.retain(|ip, until| *until > now_ms && in_ec2.contains(ip));
        let mut assigned: BTreeMap<Ipv4Addr, ()> = BTreeMap::new();
        for a in self.allocations.values() {
            assigned.insert(a.ip, ());
        }
        let mut enis = BTreeMap::new();
        for o in observed {
            let mut ips = BTreeMap::new();
            for ip in o.addresses() {
                let state = if assigned.contains_key(&ip) {
                    IpState::Assigned
                } else if self.releasing.contains_key(&ip) {
                    IpState::Releasing
                } else if let Some(until) = self.cooling.get(&ip) {
                    IpState::Cooling { until_ms: *until }
                } else if o.unconfirmed.contains(&ip) {
                    IpState::Pending
                } else {
                    IpState::Free
                };
                ips.insert(ip, state);
            }
            enis.insert(
                o.id.clone(),
                Eni {
                    primary: o.id == primary_eni_id,
                    id: o.id,
                    mac: o.mac,
                    device_number: o.device_number,
                    subnet_id: o.subnet_id,
                    subnet_cidr: o.subnet_cidr,
                    primary_ip: o.primary_ip,
                    ips,
                    deleting: false,
                    ready: o.ready,
                    prefixes: o.prefixes,
                    fallback: o.fallback,
                },
            );
        }
        // An allocation whose IP moved to another ENI (or whose checkpoint predates an ENI id) follows EC2; one
        // whose IP no ENI holds any more (taken back outside ipamd) names none, as the checkpoint's check expects.
        for a in self.allocations.values_mut() {
            match enis.values().find(|e| e.ips.contains_key(&a.ip)) {
                Some(eni) => a.eni_id.clone_from(&eni.id),
                None => a.eni_id.clear(),
            }
        }
        self.enis = enis;
    }

    /// Hands out an IP for `key`, or the one it already holds. Packs onto the lowest device number first so
    /// that higher ENIs drain and can be given back.
    pub fn assign(
        &mut self,
        key: &AllocKey,
        pod_namespace: &str,
        pod_name: &str,
        now_ms: i64,
    ) -> Result<Assigned, AssignError> {
        if let Some(a) = self.allocations.get(key) {
            let device_number = self.enis.get(&a.eni_id).map(|e| e.device_number).unwrap_or(0);
            return Ok(Assigned { ip: a.ip, eni_id: a.eni_id.clone(), device_number, new: false });
        }
        let reserved = self.primary_reserved;
        let mut enis: Vec<&mut Eni> =
            self.enis.values_mut().filter(|e| e.ready && !e.deleting && !(reserved && e.primary)).collect();
        enis.sort_by_key(|e| e.device_number);
        for eni in enis {
            let pick = eni.ips.iter().find(|(_, s)| usable(**s, now_ms)).map(|(ip, _)| *ip);
            if let Some(ip) = pick {
                eni.ips.insert(ip, IpState::Assigned);
                self.cooling.remove(&ip);
                self.allocations.insert(
                    key.clone(),
                    Allocation {
                        ip,
                        eni_id: eni.id.clone(),
                        pod_namespace: pod_namespace.to_string(),
                        pod_name: pod_name.to_string(),
                        pod_uid: String::new(),
                        allocated_unix: now_ms / 1000,
                    },
                );
                return Ok(Assigned { ip, eni_id: eni.id.clone(), device_number: eni.device_number, new: true });
            }
        }
        let s = self.stats(now_ms);
        Err(AssignError::Exhausted { assigned: s.assigned, cooling: s.cooling, pending: s.pending, enis: s.enis })
    }

    /// Releases `key`'s IP into cooldown. `None` when the key holds nothing (a repeated DEL).
    pub fn release(&mut self, key: &AllocKey, now_ms: i64, cooldown_ms: i64) -> Option<(Allocation, u32)> {
        let a = self.allocations.remove(key)?;
        let until_ms = now_ms + cooldown_ms;
        let mut device_number = 0;
        if let Some(eni) = self.enis.get_mut(&a.eni_id) {
            device_number = eni.device_number;
            if let Some(state) = eni.ips.get_mut(&a.ip) {
                *state = IpState::Cooling { until_ms };
            }
        }
        if cooldown_ms > 0 {
            self.cooling.insert(a.ip, until_ms);
        }
        Some((a, device_number))
    }

    /// Undoes [`Datastore::release`] (its checkpoint write failed).
    pub fn restore_allocation(&mut self, key: AllocKey, a: Allocation) {
        self.cooling.remove(&a.ip);
        if let Some(state) = self.enis.get_mut(&a.eni_id).and_then(|e| e.ips.get_mut(&a.ip)) {
            *state = IpState::Assigned;
        }
        self.allocations.insert(key, a);
    }

    /// Prefix mode: /28 prefixes delegated to the node's ENIs.
    pub fn prefix_count(&self) -> usize {
        self.enis.values().map(|e| e.prefixes.len()).sum()
    }

    /// Prefix mode: the ENIs that fell back to single IPs.
    pub fn fallback_enis(&self) -> impl Iterator<Item = &str> {
        self.enis.values().filter(|e| e.fallback).map(|e| e.id.as_str())
    }

    /// Device number of the ENI that holds `eni_id` (0 when unknown).
    pub fn device_number(&self, eni_id: &str) -> u32 {
        self.enis.get(eni_id).map(|e| e.device_number).unwrap_or(0)
    }

    pub fn stats(&self, now_ms: i64) -> Stats {
        let mut s = Stats { enis: self.enis.len(), ..Stats::default() };
        for state in self.enis.values().flat_map(|e| e.ips.values()) {
            s.total += 1;
            match *state {
                IpState::Assigned => s.assigned += 1,
                IpState::Pending => s.pending += 1,
                st if usable(st, now_ms) => s.free += 1,
                _ => s.cooling += 1,
            }
        }
        s
    }

    /// The earliest time a cooling IP becomes free, for the reconciler's requeue.
    pub fn next_cooldown_expiry(&self, now_ms: i64) -> Option<i64> {
        self.cooling.values().copied().filter(|t| *t > now_ms).min()
    }

    /// The planner's input: per ENI, its free IPs and what must not be touched.
    pub fn view(&self, now_ms: i64) -> PoolView {
        let enis = self
            .enis
            .values()
            .filter(|e| !(self.primary_reserved && e.primary))
            .map(|e| {
                let mut v = EniView {
                    id: e.id.clone(),
                    device_number: e.device_number,
                    primary: e.primary,
                    fallback: e.fallback,
                    ..EniView::default()
                };
                for net in &e.prefixes {
                    let free = prefix_addresses(net)
                        .filter(|ip| e.ips.get(ip).is_some_and(|s| *s == IpState::Pending || usable(*s, now_ms)))
                        .count() as u32;
                    v.prefixes.push(PrefixView { net: *net, free });
                }
                for (ip, st) in &e.ips {
                    match *st {
                        IpState::Assigned => v.assigned += 1,
                        // About to be usable: counted as free so the planner does not ask EC2 for more.
                        IpState::Pending => v.free.push(*ip),
                        s if usable(s, now_ms) => v.free.push(*ip),
                        _ => v.cooling += 1,
                    }
                }
                v
            })
            .collect();
        PoolView { enis }
    }

    /// Marks IPs the planner will unassign so that no pod gets one meanwhile. Returns those still free.
    pub fn reserve_for_release(&mut self, eni_id: &str, ips: &[Ipv4Addr], now_ms: i64) -> Vec<Ipv4Addr> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return Vec::new();
        };
        ips.iter()
            .copied()
            .filter(|ip| match eni.ips.get_mut(ip) {
                Some(st) if usable(*st, now_ms) => {
                    *st = IpState::Releasing;
                    self.releasing.insert(*ip, now_ms + RELEASE_GRACE_MS);
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// Marks the addresses of prefixes the planner will unassign so that no pod gets one meanwhile. Returns the
    /// prefixes whose addresses were all still free (only those go back).
    pub fn reserve_prefixes_for_release(&mut self, eni_id: &str, prefixes: &[Ipv4Net], now_ms: i64) -> Vec<Ipv4Net> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for net in prefixes {
            let all_free = prefix_addresses(net).all(|ip| eni.ips.get(&ip).is_some_and(|s| usable(*s, now_ms)));
            if all_free && eni.prefixes.contains(net) {
                for ip in prefix_addresses(net) {
                    eni.ips.insert(ip, IpState::Releasing);
                    self.releasing.insert(ip, now_ms + RELEASE_GRACE_MS);
                }
                out.push(*net);
            }
        }
        out
    }

    /// Marks an ENI for deletion when nothing is assigned or cooling on it; returns whether it was marked.
    pub fn reserve_eni_for_delete(&mut self, eni_id: &str, now_ms: i64) -> bool {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return false;
        };
        if eni.primary || eni.ips.values().any(|s| !usable(*s, now_ms)) {
            return false;
        }
        eni.deleting = true;
        true
    }
}

fn usable(state: IpState, now_ms: i64) -> bool {
    match state {
        IpState::Free => true,
        IpState::Cooling { until_ms } => until_ms <= now_ms,
        IpState::Assigned | IpState::Releasing | IpState::Pending => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AllocKey {
        AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
    }

    fn eni(id: &str, dev: u32, ips: &[&str]) -> ObservedEni {
        ObservedEni {
            id: id.into(),
            mac: format!("02:00:00:00:00:0{dev}"),
            device_number: dev,
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.1.0/24".parse().unwrap(),
            primary_ip: format!("10.0.1.{}", 100 + dev).parse().unwrap(),
            secondary_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            unconfirmed: Vec::new(),
            ready: true,
            prefixes: Vec::new(),
            fallback: false,
        }
    }

    fn two_enis() -> Datastore {
        let mut ds = Datastore::default();
        ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"]), eni("eni-b", 1, &["10.0.1.20"])], "eni-a", 0);
        ds
    }

    #[test]
    fn only_a_28_is_expanded() {
        assert_eq!(prefix_addresses(&"10.0.1.16/28".parse().unwrap()).count(), 16);
        assert_eq!(prefix_addresses(&"10.0.0.0/8".parse().unwrap()).count(), 0, "not 16 million addresses");
    }

    #[test]
    fn assign_is_idempotent_and_packs_the_lowest_device() {
        let mut ds = two_enis();
        let a = ds.assign(&key("c1"), "ns", "p1", 0).unwrap();
        assert_eq!((a.ip.to_string().as_str(), a.device_number, a.new), ("10.0.1.10", 0, true));
        let again = ds.assign(&key("c1"), "ns", "p1", 0).unwrap();
        assert_eq!((again.ip, again.new), (a.ip, false));
        let b = ds.assign(&key("c2"), "ns", "p2", 0).unwrap();
        let c = ds.assign(&key("c3"), "ns", "p3", 0).unwrap();
        assert_eq!((b.device_number, c.device_number), (0, 1));
        assert!(matches!(ds.assign(&key("c4"), "ns", "p4", 0), Err(AssignError::Exhausted { assigned: 3, .. })));
    }

    #[test]
    fn released_ip_rests_for_the_cooldown() {
        let mut ds = two_enis();
        let a = ds.assign(&key("c1"), "ns", "p1", 0).unwrap();
        let (rel, dev) = ds.release(&key("c1"), 1_000, 30_000).unwrap();
        assert_eq!((rel.ip, dev), (a.ip, 0));
        assert!(ds.release(&key("c1"), 1_000, 30_000).is_none(), "a second DEL finds nothing");
        // Within the cooldown the other IPs go first, then nothing.
        let ips: Vec<_> = ["x", "y"].iter().map(|c| ds.assign(&key(c), "ns", "p", 2_000).unwrap().ip).collect();
        assert!(!ips.contains(&a.ip));
        assert!(ds.assign(&key("z"), "ns", "p", 2_000).is_err());
        // After it the IP is usable again.
        assert_eq!(ds.assign(&key("z"), "ns", "p", 31_000).unwrap().ip, a.ip);
    }

    #[test]
    fn observation_keeps_allocations_and_drops_vanished_ips() {
        let mut ds = two_enis();
        let a = ds.assign(&key("c1"), "ns", "p1", 0).unwrap();
        ds.release(&key("c1"), 0, 10_000);
        let b = ds.assign(&key("c2"), "ns", "p2", 0).unwrap();
        // EC2 no longer has eni-b's IP; the checkpointed cooldown and the allocation survive a re-observation.
        ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"])], "eni-a", 5_000);
        assert_eq!(ds.enis.len(), 1);
        assert_eq!(ds.enis["eni-a"].ips[&a.ip], IpState::Cooling { until_ms: 10_000 });
        assert_eq!(ds.enis["eni-a"].ips[&b.ip], IpState::Assigned);
        assert!(ds.allocations.contains_key(&key("c2")));
        let s = ds.stats(5_000);
        assert_eq!((s.total, s.assigned, s.cooling, s.free), (2, 1, 1, 0));
    }

    #[test]
    fn ips_given_back_stay_out_of_use_while_ec2_still_lists_them() {
        let mut ds = two_enis();
        let ip: Ipv4Addr = "10.0.1.11".parse().unwrap();
        assert_eq!(ds.reserve_for_release("eni-a", &[ip], 0), vec![ip]);
        // EC2 has not caught up with the unassign yet.
        ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"]), eni("eni-b", 1, &["10.0.1.20"])], "eni-a", 1_000);
        assert_eq!(ds.enis["eni-a"].ips[&ip], IpState::Releasing);
        let got: Vec<Ipv4Addr> = ["a", "b"].iter().map(|c| ds.assign(&key(c), "ns", "p", 1_000).unwrap().ip).collect();
        assert!(!got.contains(&ip));
        // Once EC2 no longer lists it, the mark goes.
        ds.observe(vec![eni("eni-a", 0, &["10.0.1.10"])], "eni-a", 2_000);
        assert!(ds.releasing.is_empty());
    }

    #[test]
    fn enis_without_host_networking_are_not_used() {
        let mut ds = Datastore::default();
        let mut b = eni("eni-b", 1, &["10.0.1.20"]);
        b.ready = false;
        ds.observe(vec![eni("eni-a", 0, &[]), b], "eni-a", 0);
        assert!(ds.assign(&key("c1"), "ns", "p", 0).is_err());
    }

    #[test]
    fn a_reserved_primary_eni_is_neither_used_nor_planned_for() {
        let mut ds = two_enis();
        ds.primary_reserved = true;
        let ips: Vec<String> =
            ["a", "b"].iter().filter_map(|c| ds.assign(&key(c), "ns", "p", 0).ok()).map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.1.20"], "only the secondary ENI's IP is handed out");
        let view = ds.view(0);
        assert_eq!(view.enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["eni-b"]);
    }

    #[test]
    fn reserved_ips_and_enis_are_not_handed_out() {
        let mut ds = two_enis();
        let got = ds.reserve_for_release("eni-a", &["10.0.1.10".parse().unwrap()], 0);
        assert_eq!(got.len(), 1);
        assert!(ds.reserve_eni_for_delete("eni-b", 0));
        assert!(!ds.reserve_eni_for_delete("eni-a", 0), "the primary ENI is never deleted");
        assert_eq!(ds.assign(&key("c1"), "ns", "p", 0).unwrap().ip.to_string(), "10.0.1.11");
        assert!(ds.assign(&key("c2"), "ns", "p", 0).is_err());
    }

    #[test]
    fn a_prefix_serves_its_16_addresses_and_goes_back_only_when_all_are_free() {
        let net: Ipv4Net = "10.0.1.32/28".parse().unwrap();
        let mut ds = Datastore::default();
        ds.observe(vec![ObservedEni { prefixes: vec![net], ..eni("eni-a", 0, &[]) }], "eni-a", 0);
        assert_eq!((ds.stats(0).free, ds.enis["eni-a"].slots()), (16, 1));
        let view = ds.view(0);
        assert_eq!(view.enis[0].prefixes, [PrefixView { net, free: 16 }]);
        let got: Vec<Ipv4Addr> = (0..16).map(|i| ds.assign(&key(&format!("c{i}")), "ns", "p", 0).unwrap().ip).collect();
        assert_eq!(got.first().unwrap().to_string(), "10.0.1.32", "the network address of a /28 serves a pod too");
        assert_eq!(got.last().unwrap().to_string(), "10.0.1.47");
        assert!(ds.assign(&key("c16"), "ns", "p", 0).is_err());
        // One address still cooling keeps the prefix.
        for i in 0..16 {
            ds.release(&key(&format!("c{i}")), 0, if i == 5 { 10_000 } else { 0 });
        }
        assert!(ds.reserve_prefixes_for_release("eni-a", &[net], 1_000).is_empty());
        assert_eq!(ds.reserve_prefixes_for_release("eni-a", &[net], 10_000), [net]);
        assert!(ds.assign(&key("late"), "ns", "p", 10_000).is_err(), "a prefix on its way back serves nobody");
        // EC2 took it back.
        ds.observe(vec![eni("eni-a", 0, &[])], "eni-a", 11_000);
        assert_eq!((ds.stats(11_000).total, ds.releasing.len()), (0, 0));
    }
}

//! The node's address book: attached ENIs, their secondary IPs and each IP's state, and the pod allocations
//! keyed by (network name, container id, ifname). Pure data with no I/O; the pool actor is its only owner.
//!
//! Every deadline here (cooldowns, the release grace) and every allocation's age is on the process's monotonic
//! clock ([`Mono`]), so no step of the system time shortens or stretches them; `allocated_unix` is a wall stamp
//! for people and the checkpoint, never read as an age.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::clock::{Mono, Reading};
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

/// The longest key fields and pod facts ipamd keeps, whoever sends them (the plugin, aws-node's checkpoint), so
/// what the checkpoint holds per pod stays small: CNI's network name and container id, a Linux interface
/// name (IFNAMSIZ - 1), a Kubernetes namespace or pod name (a DNS subdomain), a pod UID.
pub const MAX_NETWORK_NAME: usize = 256;
pub const MAX_CONTAINER_ID: usize = 256;
pub const MAX_IF_NAME: usize = 15;
pub const MAX_POD_NAME: usize = 253;
pub const MAX_POD_UID: usize = 64;

impl AllocKey {
    /// The first field longer than ipamd keeps, as "<field> is N bytes; at most M".
    pub fn too_long(&self) -> Option<String> {
        too_long(&[
            ("network_name", &self.network_name, MAX_NETWORK_NAME),
            ("container_id", &self.container_id, MAX_CONTAINER_ID),
            ("if_name", &self.if_name, MAX_IF_NAME),
        ])
    }
}

/// The first of `(field, value, max)` longer than its max, as "<field> is N bytes; at most M".
pub fn too_long(fields: &[(&str, &str, usize)]) -> Option<String> {
    fields
        .iter()
        .find(|(_, v, max)| v.len() > *max)
        .map(|(f, v, max)| format!("{f} is {} bytes; at most {max}", v.len()))
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
    /// When it was made, wall clock (unix seconds): shown and saved; ages come from [`Datastore::age`].
    pub allocated_unix: i64,
}

/// State of one secondary IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpState {
    Free,
    Assigned,
    /// Released; not handed out again before this time.
    Cooling {
        until: Mono,
    },
    /// Chosen by the planner to be unassigned in EC2; never handed out.
    Releasing,
    /// EC2 assigned it but IMDS does not show it yet (IMDS lags EC2): counted, not handed out.
    Pending,
}

/// What observations took away from under pods (see [`Datastore::observe`]): aws-vpc-cni's "force removed".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForceRemoved {
    pub enis: u64,
    pub ips: u64,
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

    /// The tests' primary ENI: `eni-a`, device 0, 10.0.1.0/24 (primary 10.0.1.4), ready, holding `secondary`.
    #[cfg(test)]
    pub fn test_eni(secondary: &[&str]) -> Self {
        Self {
            id: "eni-a".into(),
            mac: "02:00:00:00:00:01".into(),
            device_number: 0,
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.1.0/24".parse().unwrap(),
            primary_ip: "10.0.1.4".parse().unwrap(),
            secondary_ips: secondary.iter().map(|s| s.parse().unwrap()).collect(),
            unconfirmed: Vec::new(),
            ready: true,
            prefixes: Vec::new(),
            fallback: false,
        }
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
    /// Released IPs still resting, and until when (kept here too so they survive an ENI observation and a
    /// restart).
    pub cooling: BTreeMap<Ipv4Addr, Mono>,
    /// IPs handed to EC2 for unassignment, until when to keep them out of use even if EC2 still lists them
    /// (its reads can lag a write).
    pub releasing: BTreeMap<Ipv4Addr, Mono>,
    /// When each allocation was made, or loaded from the checkpoint (its age before that is not trusted).
    pub born: BTreeMap<AllocKey, Mono>,
    /// Custom networking: the primary ENI serves no pods, so it is neither handed out from nor planned for.
    pub primary_reserved: bool,
    /// What observations took away from under pods since start (metrics).
    pub force_removed: ForceRemoved,
}

/// How long an IP given back to EC2 stays unusable while EC2 may still report it.
const RELEASE_GRACE: Duration = Duration::from_secs(60);

impl Datastore {
    /// Rebuilds from a checkpoint: allocations and cooling IPs. ENIs come with the first observation.
    ///
    /// The checkpoint's times are wall-clock times of another process, and the wall clock may have been stepped
    /// since (or while ipamd was down), so none is trusted to shorten a wait: every IP that was cooling cools
    /// again for the whole `cooldown` from `now` (its conntrack entries may not have been flushed twice yet),
    /// and every allocation counts as made `now` (pod GC and GcNetworks release nothing for being old on the
    /// word of a clock that may have jumped forward). What this costs: those IPs are unusable for one more
    /// cooldown, and clean-up of pods gone while ipamd was down waits one more grace period.
    pub fn restore(
        allocations: BTreeMap<AllocKey, Allocation>,
        cooling: impl IntoIterator<Item = Ipv4Addr>,
        now: Mono,
        cooldown: Duration,
    ) -> Self {
        let until = now.after(cooldown);
        let cooling =
            if cooldown.is_zero() { BTreeMap::new() } else { cooling.into_iter().map(|ip| (ip, until)).collect() };
        let born = allocations.keys().map(|k| (k.clone(), now)).collect();
        Self { allocations, cooling, born, ..Self::default() }
    }

    /// How long ago `key`'s allocation was made (or loaded); zero when unknown.
    pub fn age(&self, key: &AllocKey, now: Mono) -> Duration {
        self.born.get(key).map_or(Duration::ZERO, |b| now.since(*b))
    }

    /// The cooling IPs with their deadlines as wall-clock unix millis, as the checkpoint keeps them (for
    /// people and older versions; a start reads only which IPs were cooling, see [`Datastore::restore`]).
    pub fn cooling_wall(&self, at: Reading) -> BTreeMap<Ipv4Addr, i64> {
        self.cooling.iter().map(|(ip, until)| (*ip, at.wall_of(*until))).collect()
    }

    /// Replaces the ENI set with what EC2 reports. IPs that EC2 no longer has are dropped; allocations are
    /// kept either way (a pod whose IP vanished still needs its DEL to find what to tear down).
    /// Takes EC2's view of the node's ENIs, counting in [`Datastore::force_removed`] what was taken away from
    /// under pods outside ipamd: ENIs that held pods' IPs and are gone, and pods' IPs no ENI holds any more.
    pub fn observe(&mut self, observed: Vec<ObservedEni>, primary_eni_id: &str, now: Mono) {
        self.cooling.retain(|_, until| *until > now);
        let in_ec2: std::collections::BTreeSet<Ipv4Addr> = observed.iter().flat_map(ObservedEni::addresses).collect();
        self.releasing.retain(|ip, until| *until > now && in_ec2.contains(ip));
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
                    IpState::Cooling { until: *until }
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
        let removed = &mut self.force_removed;
        let mut gone_enis = std::collections::BTreeSet::new();
        for a in self.allocations.values_mut() {
            match enis.values().find(|e| e.ips.contains_key(&a.ip)) {
                Some(eni) => a.eni_id.clone_from(&eni.id),
                None => {
                    if !a.eni_id.is_empty() {
                        removed.ips += 1;
                        if !enis.contains_key(&a.eni_id) {
                            gone_enis.insert(a.eni_id.clone());
                        }
                    }
                    a.eni_id.clear();
                }
            }
        }
        removed.enis += gone_enis.len() as u64;
        self.enis = enis;
    }

    /// Hands out an IP for `key`, or the one it already holds. Packs onto the lowest device number first so
    /// that higher ENIs drain and can be given back.
    pub fn assign(
        &mut self,
        key: &AllocKey,
        pod_namespace: &str,
        pod_name: &str,
        at: Reading,
    ) -> Result<Assigned, AssignError> {
        let now = at.mono;
        if let Some(a) = self.allocations.get(key) {
            let device_number = self.enis.get(&a.eni_id).map(|e| e.device_number).unwrap_or(0);
            return Ok(Assigned { ip: a.ip, eni_id: a.eni_id.clone(), device_number, new: false });
        }
        let reserved = self.primary_reserved;
        let mut enis: Vec<&mut Eni> =
            self.enis.values_mut().filter(|e| e.ready && !e.deleting && !(reserved && e.primary)).collect();
        enis.sort_by_key(|e| e.device_number);
        for eni in enis {
            let pick = eni.ips.iter().find(|(_, s)| usable(**s, now)).map(|(ip, _)| *ip);
            if let Some(ip) = pick {
                eni.ips.insert(ip, IpState::Assigned);
                self.cooling.remove(&ip);
                self.born.insert(key.clone(), now);
                self.allocations.insert(
                    key.clone(),
                    Allocation {
                        ip,
                        eni_id: eni.id.clone(),
                        pod_namespace: pod_namespace.to_string(),
                        pod_name: pod_name.to_string(),
                        pod_uid: String::new(),
                        allocated_unix: at.wall_ms.div_euclid(1000),
                    },
                );
                return Ok(Assigned { ip, eni_id: eni.id.clone(), device_number: eni.device_number, new: true });
            }
        }
        let s = self.stats(now);
        Err(AssignError::Exhausted { assigned: s.assigned, cooling: s.cooling, pending: s.pending, enis: s.enis })
    }

    /// Releases `key`'s IP into cooldown. `None` when the key holds nothing (a repeated DEL).
    pub fn release(&mut self, key: &AllocKey, now: Mono, cooldown: Duration) -> Option<(Allocation, u32)> {
        let a = self.allocations.remove(key)?;
        self.born.remove(key);
        let until = now.after(cooldown);
        let mut device_number = 0;
        if let Some(eni) = self.enis.get_mut(&a.eni_id) {
            device_number = eni.device_number;
            if let Some(state) = eni.ips.get_mut(&a.ip) {
                *state = IpState::Cooling { until };
            }
        }
        if !cooldown.is_zero() {
            self.cooling.insert(a.ip, until);
        }
        Some((a, device_number))
    }

    /// Undoes [`Datastore::release`] (its checkpoint write failed): the allocation is back as it was, made at
    /// `born` (what [`Datastore::born`] said before the release, or now: never older than it is).
    pub fn restore_allocation(&mut self, key: AllocKey, a: Allocation, born: Mono) {
        self.cooling.remove(&a.ip);
        self.born.insert(key.clone(), born);
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

    pub fn stats(&self, now: Mono) -> Stats {
        let mut s = Stats { enis: self.enis.len(), ..Stats::default() };
        for state in self.enis.values().flat_map(|e| e.ips.values()) {
            s.total += 1;
            match *state {
                IpState::Assigned => s.assigned += 1,
                IpState::Pending => s.pending += 1,
                st if usable(st, now) => s.free += 1,
                _ => s.cooling += 1,
            }
        }
        s
    }

    /// The earliest time a cooling IP becomes free, for the reconciler's requeue.
    pub fn next_cooldown_expiry(&self, now: Mono) -> Option<Mono> {
        self.cooling.values().copied().filter(|t| *t > now).min()
    }

    /// The planner's input: per ENI, its free IPs and what must not be touched.
    pub fn view(&self, now: Mono) -> PoolView {
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
                        .filter(|ip| e.ips.get(ip).is_some_and(|s| *s == IpState::Pending || usable(*s, now)))
                        .count() as u32;
                    v.prefixes.push(PrefixView { net: *net, free });
                }
                for (ip, st) in &e.ips {
                    match *st {
                        IpState::Assigned => v.assigned += 1,
                        // About to be usable: counted as free so the planner does not ask EC2 for more.
                        IpState::Pending => v.free.push(*ip),
                        s if usable(s, now) => v.free.push(*ip),
                        _ => v.cooling += 1,
                    }
                }
                v
            })
            .collect();
        PoolView { enis }
    }

    /// Marks IPs the planner will unassign so that no pod gets one meanwhile. Returns those still free.
    pub fn reserve_for_release(&mut self, eni_id: &str, ips: &[Ipv4Addr], now: Mono) -> Vec<Ipv4Addr> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return Vec::new();
        };
        ips.iter()
            .copied()
            .filter(|ip| match eni.ips.get_mut(ip) {
                Some(st) if usable(*st, now) => {
                    *st = IpState::Releasing;
                    self.releasing.insert(*ip, now.after(RELEASE_GRACE));
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// Marks the addresses of prefixes the planner will unassign so that no pod gets one meanwhile. Returns the
    /// prefixes whose addresses were all still free (only those go back).
    pub fn reserve_prefixes_for_release(&mut self, eni_id: &str, prefixes: &[Ipv4Net], now: Mono) -> Vec<Ipv4Net> {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for net in prefixes {
            let all_free = prefix_addresses(net).all(|ip| eni.ips.get(&ip).is_some_and(|s| usable(*s, now)));
            if all_free && eni.prefixes.contains(net) {
                for ip in prefix_addresses(net) {
                    eni.ips.insert(ip, IpState::Releasing);
                    self.releasing.insert(ip, now.after(RELEASE_GRACE));
                }
                out.push(*net);
            }
        }
        out
    }

    /// Marks an ENI for deletion when nothing is assigned or cooling on it; returns whether it was marked.
    pub fn reserve_eni_for_delete(&mut self, eni_id: &str, now: Mono) -> bool {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return false;
        };
        if eni.primary || eni.ips.values().any(|s| !usable(*s, now)) {
            return false;
        }
        eni.deleting = true;
        true
    }
}

fn usable(state: IpState, now: Mono) -> bool {
    match state {
        IpState::Free => true,
        IpState::Cooling { until } => until <= now,
        IpState::Assigned | IpState::Releasing | IpState::Pending => false,
    }
}

#[cfg(test)]
mod tests;

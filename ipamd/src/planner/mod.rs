//! The warm-pool decision: `plan(view, targets, limits) -> actions`. Pure, no I/O, so every rule of
//! WARM_ENI_TARGET / WARM_IP_TARGET / MINIMUM_IP_TARGET is unit- and property-tested here.
//!
//! Semantics, as aws-vpc-cni users know them:
//! - ENI mode (neither WARM_IP_TARGET nor MINIMUM_IP_TARGET set): every ENI is filled to capacity; a new ENI is
//!   attached while fewer than `WARM_ENI_TARGET × IPs-per-ENI` IPs are free; a non-primary ENI with nothing
//!   assigned or cooling is deleted when the free IPs left without it still meet that target.
//! - IP mode: total IPs wanted = max(assigned + WARM_IP_TARGET, MINIMUM_IP_TARGET). Growth fills existing ENIs
//!   first, then attaches new ones; surplus free IPs are given back, whole idle ENIs first (highest device
//!   number first), then single IPs from the highest ENIs so that low ENIs stay packed.
//! - Shrinking waits while a non-primary ENI holds only cooling IPs (it is about to become the one to give back).
//! - Never: more ENIs than `max_enis`, more IPs on an ENI than it holds, an assigned or cooling IP given back,
//!   the primary ENI deleted.
//!
//! May use: nothing else of ipamd.

use std::net::Ipv4Addr;

mod prefix;
pub use prefix::{PREFIX_IPS, PrefixView};

/// One ENI as the planner sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub device_number: u32,
    pub primary: bool,
    /// Secondary IPs usable right now.
    pub free: Vec<Ipv4Addr>,
    pub assigned: u32,
    /// Released IPs still in cooldown (or already chosen for release).
    pub cooling: u32,
    /// Prefix mode: the /28s delegated to this ENI (their addresses are counted in the fields above too).
    pub prefixes: Vec<PrefixView>,
    /// Prefix mode: EC2 had no free /28 for this ENI's subnet, so it grows by single IPs.
    pub fallback: bool,
}

impl EniView {
    pub fn total(&self) -> u32 {
        self.free.len() as u32 + self.assigned + self.cooling
    }
    fn idle(&self) -> bool {
        self.assigned == 0 && self.cooling == 0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub enis: Vec<EniView>,
}

impl PoolView {
    pub fn free(&self) -> u32 {
        self.enis.iter().map(|e| e.free.len() as u32).sum()
    }
    pub fn total(&self) -> u32 {
        self.enis.iter().map(EniView::total).sum()
    }
    pub fn assigned(&self) -> u32 {
        self.enis.iter().map(|e| e.assigned).sum()
    }
}

/// The warm-pool settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targets {
    pub warm_eni: u32,
    pub warm_ip: Option<u32>,
    pub minimum_ip: Option<u32>,
    /// Prefix mode (ENABLE_PREFIX_DELEGATION) with WARM_PREFIX_TARGET.
    pub warm_prefix: Option<u32>,
    /// Surge: pods waiting for an address because they asked faster than the pool refilled (0: none). The pool
    /// grows by them on top of its target in one step and shrinks no lower while they wait; it decays to 0 with
    /// the demand.
    pub surge: u32,
}

/// What the instance allows (after MAX_ENI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_enis: u32,
    /// Secondary IPs one ENI can hold (the instance type's IPv4 addresses per interface, minus the primary).
    pub ips_per_eni: u32,
    /// The instance type's vCPUs (prefix mode's max-pods ceiling depends on them).
    #[serde(default)]
    pub vcpus: u32,
}

impl Limits {
    /// EKS' max-pods formula ([`max_pods`]): ENIs × (IPs per ENI − 1) + 2 (host-network pods); in prefix mode
    /// each slot holds 16 and the result is capped at 110 or 250 by vCPU count.
    pub fn max_pods(&self, prefix_delegation: bool) -> u32 {
        let net = max_pods::InstanceNetwork {
            max_enis: self.max_enis,
            ipv4_per_eni: self.ips_per_eni + 1,
            vcpus: self.vcpus,
        };
        max_pods::max_pods(net, max_pods::Mode { prefix_delegation, ..max_pods::Mode::default() }).max_pods
    }
}

/// One change to make in EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateEni {
        ip_count: u32,
    },
    AssignIps {
        eni_id: String,
        count: u32,
    },
    UnassignIps {
        eni_id: String,
        ips: Vec<Ipv4Addr>,
    },
    DeleteEni {
        eni_id: String,
    },
    /// Prefix mode: a new ENI holding `prefix_count` /28s.
    CreateEniWithPrefixes {
        prefix_count: u32,
    },
    AssignPrefixes {
        eni_id: String,
        count: u32,
    },
    UnassignPrefixes {
        eni_id: String,
        prefixes: Vec<ipnet::Ipv4Net>,
    },
}

impl Action {
    /// Whether the action adds addresses to the pool.
    pub fn grows(&self) -> bool {
        matches!(
            self,
            Action::CreateEni { .. }
                | Action::AssignIps { .. }
                | Action::CreateEniWithPrefixes { .. }
                | Action::AssignPrefixes { .. }
        )
    }
}

pub fn plan(view: &PoolView, targets: Targets, limits: Limits) -> Vec<Action> {
    if let Some(warm_prefix) = targets.warm_prefix {
        prefix::plan_prefix_mode(view, targets, warm_prefix, limits)
    } else if targets.warm_ip.is_some() || targets.minimum_ip.is_some() {
        plan_ip_mode(view, targets, limits)
    } else {
        plan_eni_mode(view, targets.warm_eni, targets.surge, limits)
    }
}

fn plan_eni_mode(view: &PoolView, warm_eni: u32, surge: u32, limits: Limits) -> Vec<Action> {
    let cap = limits.ips_per_eni;
    let want_free = warm_eni.saturating_mul(cap) + surge;
    let mut actions = Vec::new();
    let mut free = view.free();
    let mut enis = view.enis.len() as u32;
    for e in by_device(view) {
        if e.total() < cap {
            let count = cap - e.total();
            actions.push(Action::AssignIps { eni_id: e.id.clone(), count });
            free += count;
        }
    }
    while free < want_free && enis < limits.max_enis && cap > 0 {
        actions.push(Action::CreateEni { ip_count: cap });
        free += cap;
        enis += 1;
    }
    if actions.is_empty() && !draining(view) {
        // Shrink only when nothing grows; highest device first.
        for e in by_device(view).into_iter().rev() {
            if !e.primary && e.idle() && free - e.free.len() as u32 >= want_free {
                free -= e.free.len() as u32;
                actions.push(Action::DeleteEni { eni_id: e.id.clone() });
            }
        }
    }
    actions
}

fn plan_ip_mode(view: &PoolView, targets: Targets, limits: Limits) -> Vec<Action> {
    let warm = targets.warm_ip.unwrap_or(0);
    let minimum = targets.minimum_ip.unwrap_or(0);
    let (free, total) = (view.free(), view.total());
    // Surge comes on top of WARM_IP_TARGET: the waiting pods take addresses, the target is still wanted after.
    let warm = warm + targets.surge;
    let short = warm.saturating_sub(free).max(minimum.saturating_sub(total));
    let over = free.saturating_sub(warm).min(total.saturating_sub(minimum));
    let mut actions = Vec::new();
    let cap = limits.ips_per_eni;
    if short > 0 {
        let mut need = short;
        for e in by_device(view) {
            let room = cap.saturating_sub(e.total());
            if room > 0 && need > 0 {
                let count = room.min(need);
                actions.push(Action::AssignIps { eni_id: e.id.clone(), count });
                need -= count;
            }
        }
        let mut enis = view.enis.len() as u32;
        while need > 0 && enis < limits.max_enis && cap > 0 {
            let ip_count = need.min(cap);
            actions.push(Action::CreateEni { ip_count });
            need -= ip_count;
            enis += 1;
        }
        return actions;
    }
    if draining(view) {
        return actions;
    }
    let mut over = over;
    let mut deleted = Vec::new();
    for e in by_device(view).into_iter().rev() {
        // An idle non-primary ENI goes whole when its IPs are all surplus (an empty one always goes).
        if !e.primary && e.idle() && e.free.len() as u32 <= over {
            over -= e.free.len() as u32;
            deleted.push(e.id.as_str());
            actions.push(Action::DeleteEni { eni_id: e.id.clone() });
        }
    }
    for e in by_device(view).into_iter().rev() {
        if over == 0 {
            break;
        }
        if deleted.contains(&e.id.as_str()) || e.free.is_empty() {
            continue;
        }
        let n = (e.free.len() as u32).min(over) as usize;
        // Give back the highest addresses; keeps the low ones stable for the pods to come.
        let ips: Vec<Ipv4Addr> = e.free[e.free.len() - n..].to_vec();
        over -= n as u32;
        actions.push(Action::UnassignIps { eni_id: e.id.clone(), ips });
    }
    actions
}

/// A non-primary ENI whose only IPs in use are cooling will soon be idle, and then the better one to give
/// back: shrinking waits for it rather than deleting a lower ENI or thinning the primary meanwhile.
pub(crate) fn draining(view: &PoolView) -> bool {
    view.enis.iter().any(|e| !e.primary && e.assigned == 0 && e.cooling > 0)
}

fn by_device(view: &PoolView) -> Vec<&EniView> {
    let mut v: Vec<&EniView> = view.enis.iter().collect();
    v.sort_by_key(|e| e.device_number);
    v
}

#[cfg(test)]
mod tests;

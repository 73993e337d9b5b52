//! Prefix mode (ENABLE_PREFIX_DELEGATION): the same pure `plan`, in units of /28 prefixes. Each secondary slot
//! of an ENI holds a whole /28 (16 pod addresses) instead of one; an ENI that EC2 refused a prefix for (its
//! subnet has no free aligned /28: InsufficientCidrBlocks) falls back to single /32 IPs, which take a slot each.
//!
//! Targets, as aws-vpc-cni users know them in prefix mode:
//! - WARM_IP_TARGET / MINIMUM_IP_TARGET, when set, count addresses as in IP mode; the shortfall is asked for in
//!   whole prefixes (so up to 15 more addresses than asked for are warm);
//! - otherwise WARM_PREFIX_TARGET whole free prefixes are kept (free: no address of it assigned or cooling).
//!
//! Shrinking gives back whole empty prefixes (after their addresses' cooldown: a cooling address keeps its
//! prefix), idle non-primary ENIs first, highest device first; single IPs of fallback ENIs go as in IP mode.

use ipnet::Ipv4Net;

use super::{Action, EniView, Limits, PoolView, Targets, by_device, draining};

/// Addresses in one delegated prefix.
pub const PREFIX_IPS: u32 = 16;

/// One delegated prefix as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixView {
    pub net: Ipv4Net,
    /// Its addresses usable now (free, or about to be: waiting for IMDS).
    pub free: u32,
}

impl PrefixView {
    pub fn empty(&self) -> bool {
        self.free == PREFIX_IPS
    }
}

impl EniView {
    /// Secondary slots in use: one per prefix, one per single IP.
    pub fn slots(&self) -> u32 {
        self.prefixes.len() as u32 + self.singles()
    }
    /// Addresses not inside a prefix (a fallback ENI's /32s).
    fn singles(&self) -> u32 {
        self.total().saturating_sub(self.prefixes.len() as u32 * PREFIX_IPS)
    }
    /// Free addresses outside prefixes, highest last.
    fn free_singles(&self) -> Vec<std::net::Ipv4Addr> {
        self.free.iter().copied().filter(|ip| !self.prefixes.iter().any(|p| p.net.contains(ip))).collect()
    }
    fn empty_prefixes(&self) -> u32 {
        self.prefixes.iter().filter(|p| p.empty()).count() as u32
    }
}

/// Addresses ready for pods that count toward WARM_PREFIX_TARGET: whole empty prefixes and free single IPs.
fn warm_ips(view: &PoolView) -> u32 {
    view.enis.iter().map(|e| e.empty_prefixes() * PREFIX_IPS + e.free_singles().len() as u32).sum()
}

pub(super) fn plan_prefix_mode(view: &PoolView, targets: Targets, warm_prefix: u32, limits: Limits) -> Vec<Action> {
    let ip_targets = targets.warm_ip.is_some() || targets.minimum_ip.is_some();
    let free = view.free();
    // Surge comes on top of the target: the waiting pods take addresses, the target is still wanted after.
    let (short, over) = if ip_targets {
        let warm = targets.warm_ip.unwrap_or(0) + targets.surge;
        let minimum = targets.minimum_ip.unwrap_or(0);
        let total = view.total();
        (
            warm.saturating_sub(free).max(minimum.saturating_sub(total)),
            free.saturating_sub(warm).min(total.saturating_sub(minimum)),
        )
    } else {
        let want = warm_prefix.saturating_mul(PREFIX_IPS);
        let have = warm_ips(view);
        (
            want.saturating_sub(have).max((want + targets.surge).saturating_sub(free)),
            have.saturating_sub(want).min(free.saturating_sub(want + targets.surge)),
        )
    };
    if short > 0 {
        return grow(view, short, limits);
    }
    if draining(view) {
        return Vec::new();
    }
    shrink(view, over)
}

fn grow(view: &PoolView, short: u32, limits: Limits) -> Vec<Action> {
    let cap = limits.ips_per_eni;
    let mut need = short;
    let mut actions = Vec::new();
    for e in by_device(view) {
        let room = cap.saturating_sub(e.slots());
        if room == 0 || need == 0 {
            continue;
        }
        if e.fallback {
            let count = room.min(need);
            actions.push(Action::AssignIps { eni_id: e.id.clone(), count });
            need -= count;
        } else {
            let count = room.min(need.div_ceil(PREFIX_IPS));
            actions.push(Action::AssignPrefixes { eni_id: e.id.clone(), count });
            need = need.saturating_sub(count * PREFIX_IPS);
        }
    }
    let mut enis = view.enis.len() as u32;
    while need > 0 && enis < limits.max_enis && cap > 0 {
        let prefix_count = cap.min(need.div_ceil(PREFIX_IPS));
        actions.push(Action::CreateEniWithPrefixes { prefix_count });
        need = need.saturating_sub(prefix_count * PREFIX_IPS);
        enis += 1;
    }
    actions
}

fn shrink(view: &PoolView, mut over: u32) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut deleted = Vec::new();
    for e in by_device(view).into_iter().rev() {
        let idle = e.assigned == 0 && e.cooling == 0;
        if !e.primary && idle && e.free.len() as u32 <= over {
            over -= e.free.len() as u32;
            deleted.push(e.id.as_str());
            actions.push(Action::DeleteEni { eni_id: e.id.clone() });
        }
    }
    let live = || by_device(view).into_iter().rev().filter(|e| !deleted.contains(&e.id.as_str()));
    for e in live() {
        let mut prefixes: Vec<Ipv4Net> = Vec::new();
        for p in e.prefixes.iter().rev().filter(|p| p.empty()) {
            if over < PREFIX_IPS {
                break;
            }
            over -= PREFIX_IPS;
            prefixes.push(p.net);
        }
        if !prefixes.is_empty() {
            actions.push(Action::UnassignPrefixes { eni_id: e.id.clone(), prefixes });
        }
    }
    for e in live() {
        let singles = e.free_singles();
        let n = (singles.len() as u32).min(over) as usize;
        if n > 0 {
            over -= n as u32;
            actions.push(Action::UnassignIps { eni_id: e.id.clone(), ips: singles[singles.len() - n..].to_vec() });
        }
    }
    actions
}

#[cfg(test)]
mod tests;

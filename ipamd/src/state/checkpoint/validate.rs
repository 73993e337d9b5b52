//! The checks a checkpoint passes before ipamd trusts it. Parsing alone would load a file that no ipamd
//! wrote: two pods on one IP (one of them would lose its traffic), an allocation on an IP of no ENI it knows,
//! overlapping prefixes or one address on two ENIs (the same address handed out twice), a key listed twice
//! (collecting into a map would silently keep one). Such a file is refused like a torn one: moved aside, and
//! the allocations rebuilt from the host's pod routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Entry, SavedEni};
use crate::state::datastore::AllocKey;

/// What is wrong with a checkpoint, in words for the log and the Event.
pub(super) fn problems(allocations: &[Entry], enis: &[SavedEni]) -> Vec<String> {
    let mut out = Vec::new();
    let mut keys: BTreeSet<&AllocKey> = BTreeSet::new();
    let mut holders: BTreeMap<Ipv4Addr, &AllocKey> = BTreeMap::new();
    for e in allocations {
        if !keys.insert(&e.key) {
            out.push(format!("allocation {} is listed twice", key_text(&e.key)));
        }
        if let Some(first) = holders.insert(e.allocation.ip, &e.key)
            && first != &e.key
        {
            out.push(format!(
                "{} is held by two allocations: {} and {}",
                e.allocation.ip,
                key_text(first),
                key_text(&e.key)
            ));
        }
    }
    let mut owner: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for eni in enis {
        for ip in eni.addresses() {
            if let Some(other) = owner.insert(ip, &eni.id)
                && other != eni.id
            {
                out.push(format!("{ip} is on two ENIs: {other} and {}", eni.id));
            }
        }
    }
    let prefixes: Vec<(&str, ipnet::Ipv4Net)> =
        enis.iter().flat_map(|e| e.prefixes.iter().map(move |p| (e.id.as_str(), *p))).collect();
    for (i, (a_eni, a)) in prefixes.iter().enumerate() {
        for (b_eni, b) in &prefixes[i + 1..] {
            if a.contains(b) || b.contains(a) {
                out.push(format!("prefixes {a} ({a_eni}) and {b} ({b_eni}) overlap"));
            }
        }
    }
    // An allocation names the ENI that held its IP when it was written; while its IP is on no ENI the pool
    // writes it with no ENI (see the datastore's observe). Checkpoints without ENIs (rebuilt ones, older
    // releases') have nothing to check against.
    if !enis.is_empty() {
        for e in allocations.iter().filter(|e| !e.allocation.eni_id.is_empty()) {
            if !owner.contains_key(&e.allocation.ip) {
                out.push(format!(
                    "allocation {} holds {} on {}, which no known ENI has",
                    key_text(&e.key),
                    e.allocation.ip,
                    e.allocation.eni_id
                ));
            }
        }
    }
    out
}

fn key_text(k: &AllocKey) -> String {
    format!("{}/{}/{}", k.network_name, k.container_id, k.if_name)
}

#[cfg(test)]
mod tests;

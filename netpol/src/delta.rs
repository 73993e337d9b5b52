//! Pod churn as element changes: the nft script that turns the table rendered from one [`Compiled`] into the
//! table rendered from the next, when only set and map elements differ.
//!
//! A pod starting, stopping, getting its address or being relabelled changes which addresses the peer and
//! named-port sets hold and which interfaces the verdict maps send where; the chains and rules depend on the
//! policies alone (see [`mod@crate::compile`]). When the chains, rules and port sets are the same, the change is
//! a handful of `delete element` / `add element` commands in one transaction, which costs a fraction of a
//! millisecond in the kernel however big the table is; otherwise the table is replaced ([`crate::render()`]).

use std::fmt::Write;

use crate::compile::{AddrRange, Compiled, Hook, NamedPortEntry};
use crate::model::Direction;
use crate::render::{MapEntries, TABLE, addr_range, map_element, map_entries, map_name};

/// The verdict-map entries a table holds, per direction: interface → (chain index, pod "ns/name").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    pub egress: MapEntries,
    pub ingress: MapEntries,
}

impl Maps {
    /// The entries [`crate::render()`] writes for `compiled` with the same `veth_of`.
    pub fn of(compiled: &Compiled, veth_of: &dyn Fn(&str) -> Option<String>) -> Self {
        let entries = |hook: &Hook| map_entries(hook, veth_of).0;
        Maps { egress: entries(&compiled.egress), ingress: entries(&compiled.ingress) }
    }

    fn get(&self, dir: Direction) -> &MapEntries {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// An element-only change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// One transaction (nft applies a whole script or none of it); empty when nothing changes.
    pub script: String,
    /// A flow allowed before may be denied now (conntrack must be told): elements were deleted or replaced, or a
    /// pod that already had its address got a map entry. Otherwise the change only allows more, or concerns
    /// pods that have no flows yet.
    pub narrows: bool,
}

/// The element changes from `old` (loaded with `old_maps`) to `new` (with `new_maps`); None when the chains,
/// rules or sets themselves differ, and the table must be replaced.
pub fn delta(old: &Compiled, old_maps: &Maps, new: &Compiled, new_maps: &Maps) -> Option<Delta> {
    let same_shape = old.ingress.chains == new.ingress.chains
        && old.egress.chains == new.egress.chains
        && old.port_sets == new.port_sets
        && old.named_sets.len() == new.named_sets.len()
        && old.peer_sets.len() == new.peer_sets.len()
        && old.peer_sets.iter().zip(&new.peer_sets).all(|(a, b)| a.of_pods == b.of_pods);
    if !same_shape {
        return None;
    }
    let mut out = Changes::default();
    // Most sets are untouched by a change of pods: compared as they are, and only the differences made text.
    for (i, (a, b)) in old.peer_sets.iter().zip(&new.peer_sets).enumerate().filter(|(_, (a, b))| a != b) {
        let (gone, came) = sorted_diff(&a.ranges, &b.ranges);
        let text = |v: Vec<AddrRange>| -> Vec<String> { v.into_iter().map(|(lo, hi)| addr_range(lo, hi)).collect() };
        out.push(&format!("p{i}"), &text(gone), &text(came));
    }
    for (i, (a, b)) in old.named_sets.iter().zip(&new.named_sets).enumerate().filter(|(_, (a, b))| a != b) {
        let (gone, came) = sorted_diff(a, b);
        let text = |v: Vec<NamedPortEntry>| -> Vec<String> {
            v.into_iter().map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.name())).collect()
        };
        out.push(&format!("n{i}"), &text(gone), &text(came));
    }
    let had_address = |pod: &str| old.pods.iter().any(|(k, ip)| k == pod && ip.is_some());
    for dir in [Direction::Egress, Direction::Ingress] {
        out.map(dir, old_maps.get(dir), new_maps.get(dir), &had_address);
    }
    Some(out.finish())
}

/// (in `a` only, in `b` only) of two sorted, duplicate-free lists.
fn sorted_diff<T: Ord + Copy>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), Some(y)) if x < y => {
                gone.push(*x);
                i += 1;
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                came.push(*y);
                j += 1;
            }
            (Some(x), None) => {
                gone.push(*x);
                i += 1;
            }
            (None, None) => break,
        }
    }
    (gone, came)
}

#[derive(Default)]
struct Changes {
    deletes: Vec<String>,
    adds: Vec<String>,
    /// A map entry added for a pod that may have flows.
    isolates: bool,
}

impl Changes {
    fn map(&mut self, dir: Direction, old: &MapEntries, new: &MapEntries, had_address: &dyn Fn(&str) -> bool) {
        // A changed entry is deleted and added again: a map element's verdict cannot be updated in place.
        let gone: Vec<String> =
            old.iter().filter(|(v, e)| new.get(*v) != Some(*e)).map(|(v, _)| format!("\"{v}\"")).collect();
        let added: Vec<(&String, &(usize, String))> = new.iter().filter(|(v, e)| old.get(*v) != Some(*e)).collect();
        self.isolates |= added.iter().any(|(_, (_, pod))| had_address(pod));
        let came: Vec<String> = added.iter().map(|(v, (c, _))| map_element(dir, v, *c)).collect();
        self.push(map_name(dir), &gone, &came);
    }

    fn push(&mut self, name: &str, gone: &[String], came: &[String]) {
        if !gone.is_empty() {
            self.deletes.push(format!("delete element inet {TABLE} {name} {{ {} }}", gone.join(", ")));
        }
        if !came.is_empty() {
            self.adds.push(format!("add element inet {TABLE} {name} {{ {} }}", came.join(", ")));
        }
    }

    /// Deletes first: a replaced element (an interval of an ipBlock never is, but a map entry is) must be gone
    /// before its successor is added, in the same transaction.
    fn finish(self) -> Delta {
        let mut script = String::new();
        for line in self.deletes.iter().chain(&self.adds) {
            let _ = writeln!(script, "{line}");
        }
        Delta { narrows: !self.deletes.is_empty() || self.isolates, script }
    }
}

#[cfg(test)]
mod tests;

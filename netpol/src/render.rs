//! Renders a [`Compiled`] shape as the nft script that (re)creates `table inet vpc-cni-netpol`.
//!
//! How a flow is judged, in the base chain on the forward hook:
//!
//! 1. `ct state established,related accept`: only a flow's first packet is judged.
//! 2. `iifname vmap @egress`: a packet coming out of a pod's host-side interface jumps to that pod's
//!    egress chain. A match there `return`s, so the packet goes on to step 3; no match: `drop`.
//! 3. `oifname vmap @ingress`: a packet going into a pod's interface jumps to its ingress chain, where
//!    a match `accept`s; no match: `drop`.
//! 4. Anything else (pods not isolated, interfaces that are not pods') is accepted.
//!
//! So a flow between two pods of this node passes both the source's egress and the destination's
//! ingress chain, and a flow with another node passes the one of its two ends that lives here.
//! Output is deterministic: the same `Compiled` and interfaces give byte-identical text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::compile::{ChainRule, Compiled, Hook, Ports};
use crate::model::Direction;

/// The table's name (family `inet`).
pub const TABLE: &str = "vpc-cni-netpol";

/// The script replacing the table with `compiled`; `veth_of` gives the host-side interface of a pod
/// ("ns/name") that lives on this node, None for the others (they get no map entry: their own node
/// enforces their policies).
pub fn render(compiled: &Compiled, veth_of: &dyn Fn(&str) -> Option<String>) -> String {
    let mut s = String::new();
    s.push_str(HEADER);
    // Creating the table first makes the delete succeed on the first load too; nft applies the whole
    // script as one transaction, so there is no moment without the table.
    let _ = writeln!(s, "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    for (i, set) in compiled.peer_sets.iter().enumerate() {
        let elements: Vec<String> = set.ranges.iter().map(|&(lo, hi)| addr_range(lo, hi)).collect();
        set_block(&mut s, &format!("p{i}"), "ipv4_addr", !set.of_pods, &elements);
    }
    for (i, set) in compiled.port_sets.iter().enumerate() {
        let elements: Vec<String> =
            set.iter().map(|&(proto, lo, hi)| format!("{} . {}", proto.name(), span(lo, hi))).collect();
        set_block(&mut s, &format!("t{i}"), "inet_proto . inet_service", true, &elements);
    }
    for (i, set) in compiled.named_sets.iter().enumerate() {
        let elements: Vec<String> =
            set.iter().map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.name())).collect();
        set_block(&mut s, &format!("n{i}"), "ipv4_addr . inet_proto . inet_service", false, &elements);
    }
    for dir in [Direction::Egress, Direction::Ingress] {
        for (i, chain) in compiled.hook(dir).chains.iter().enumerate() {
            let _ = writeln!(s, "\tchain {}{i} {{", prefix(dir));
            let _ = writeln!(s, "\t\t# selected by {}", comment_text(&chain.policies.join(", ")));
            for rule in &chain.rules {
                let _ = writeln!(s, "\t\t{}", rule_text(dir, rule));
            }
            s.push_str("\t\tdrop\n\t}\n");
        }
    }
    for dir in [Direction::Egress, Direction::Ingress] {
        vmap(&mut s, dir, compiled.hook(dir), veth_of);
    }
    s.push_str(BASE_CHAIN);
    s.push_str("}\n");
    s
}

const HEADER: &str = "\
# vpc-cni-netpol: Kubernetes NetworkPolicy for the pods of this node. Generated: every load replaces it.
#
# Pods' traffic crosses this host's forward hook: pod to pod on this node (interface to interface) and
# pod to or from anywhere else. The node's own traffic with its pods (kubelet probes, host-network pods)
# goes through output and input instead, and is exempt, as Kubernetes expects of traffic with a pod's node.
# Service addresses are translated before forward, so the rules see the backend pods' addresses.
";

const BASE_CHAIN: &str = "\
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname vmap @egress
\t\toifname vmap @ingress
\t}
";

fn prefix(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

fn set_block(s: &mut String, name: &str, kind: &str, interval: bool, elements: &[String]) {
    let _ = writeln!(s, "\tset {name} {{\n\t\ttype {kind}");
    if interval {
        s.push_str("\t\tflags interval\n");
    }
    // No `elements` line when empty: an empty set is valid and matches nothing, which is what it means.
    if !elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
    }
    s.push_str("\t}\n");
}

/// One rule: the other end's address in the peer set, then the ports; egress rules `return` (the
/// destination's ingress is still to be passed), ingress rules `accept`.
fn rule_text(dir: Direction, rule: &ChainRule) -> String {
    let (peer_field, verdict, label) = match dir {
        Direction::Ingress => ("saddr", "accept", "ingress"),
        Direction::Egress => ("daddr", "return", "egress"),
    };
    let mut parts = Vec::new();
    if let Some(set) = rule.peers {
        parts.push(format!("ip {peer_field} @p{set}"));
    }
    match rule.ports {
        Ports::Any => {}
        Ports::Numbers(set) => parts.push(format!("meta l4proto . th dport @t{set}")),
        Ports::Named(set) => parts.push(format!("ip daddr . meta l4proto . th dport @n{set}")),
    }
    parts.push(verdict.to_string());
    let origin = comment_text(&format!("{} {label}[{}]", rule.policy, rule.rule));
    parts.push(format!("comment \"{origin}\""));
    parts.join(" ")
}

/// Verdict-map entries: host interface → (chain index, pod "ns/name").
pub type MapEntries = BTreeMap<String, (usize, String)>;

/// The verdict-map entries of one direction: host interface → chain index, for this node's pods; and the pods
/// left out, with why (as comments in the script).
pub fn map_entries(hook: &Hook, veth_of: &dyn Fn(&str) -> Option<String>) -> (MapEntries, Vec<(String, String)>) {
    let mut entries = MapEntries::new();
    let mut left_out = Vec::new();
    for (pod, &chain) in &hook.chain_of {
        let Some(veth) = veth_of(pod) else { continue };
        let pod = comment_text(pod);
        if !valid_ifname(&veth) {
            left_out.push((pod, "its interface name is not usable".to_string()));
        } else if let std::collections::btree_map::Entry::Vacant(e) = entries.entry(veth.clone()) {
            e.insert((chain, pod));
        } else {
            left_out.push((pod, format!("its interface {veth} is another pod's too")));
        }
    }
    (entries, left_out)
}

/// The map's name for a direction.
pub(crate) fn map_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// A map element: `"veth" : jump in3`.
pub(crate) fn map_element(dir: Direction, veth: &str, chain: usize) -> String {
    format!("\"{veth}\" : jump {}{chain}", prefix(dir))
}

/// The interface → chain map of one direction, one pod a line (with its name as a comment).
fn vmap(s: &mut String, dir: Direction, hook: &Hook, veth_of: &dyn Fn(&str) -> Option<String>) {
    let _ = writeln!(s, "\tmap {} {{\n\t\ttype ifname : verdict", map_name(dir));
    let (entries, left_out) = map_entries(hook, veth_of);
    for (pod, why) in left_out {
        let _ = writeln!(s, "\t\t# {pod}: left out, {why}");
    }
    if !entries.is_empty() {
        s.push_str("\t\telements = {\n");
        let last = entries.len() - 1;
        for (i, (veth, (chain, pod))) in entries.iter().enumerate() {
            let comma = if i == last { "" } else { "," };
            let _ = writeln!(s, "\t\t\t{}{comma}\t# {pod}", map_element(dir, veth, *chain));
        }
        s.push_str("\t\t}\n");
    }
    s.push_str("\t}\n");
}

/// Linux interface names are at most 15 bytes; this also keeps anything nft would parse out of the quotes.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Text safe inside a quoted nft comment or after `#`: Kubernetes names already are, but this is the
/// last line of defence before a shell-like parser. nft limits comments to 128 bytes.
fn comment_text(text: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-/[], ".contains(c);
    text.chars().map(|c| if ok(c) { c } else { '_' }).take(127).collect()
}

fn span(lo: u16, hi: u16) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
}

/// A single address, a CIDR when the range is exactly one, else `first-last`.
pub(crate) fn addr_range(lo: Ipv4Addr, hi: Ipv4Addr) -> String {
    let (l, h) = (u32::from(lo), u32::from(hi));
    let size = u64::from(h - l) + 1;
    if size == 1 {
        lo.to_string()
    } else if size.is_power_of_two() && u64::from(l) % size == 0 {
        format!("{lo}/{}", 32 - size.trailing_zeros())
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
mod tests;

//! Compiles policies into the shape of the nftables table, and interprets that shape as the kernel will.
//!
//! The shape, per direction: every isolated pod jumps to one chain; pods selected by the same set of
//! policies share it, so the number of chains and rules depends on the policies alone, never on how
//! many pods there are. A chain is a list of rules, each one (peer set or any, port set or any);
//! everything that grows with the pods lives in set elements:
//!
//! * peer sets, one per distinct peer: for a pod peer (in its policy's namespace) the pods' addresses one by
//!   one, so that a pod coming or going is one element added or deleted (pod churn never rewrites ranges);
//!   for an ipBlock the addresses it covers as sorted disjoint IPv4 ranges (its cidr minus its excepts);
//! * port sets, one per distinct list of numeric ports: (protocol, first..=last) ranges;
//! * named-port sets, one per distinct list of (port name, protocol): (pod address, protocol, number)
//!   for every pod that has such a port. The receiving pod is always the packet's destination, so
//!   matching on (daddr, protocol, dport) resolves each name on the right pod even where the pods
//!   sharing a chain number the port differently.
//!
//! A rule whose ports mix numbers and names becomes two rules (an nft rule looks up one set per
//! field), and a rule with several peers one rule per peer: the rule list is a union either way.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::eval::{pod_peer_matches, selects};
use crate::model::{Cluster, Direction, Endpoint, Flow, Peer, PodInfo, Policy, PortRef, PortSpec, Proto};
use crate::ranges;

/// An inclusive range of addresses, `.0 <= .1`.
pub type AddrRange = (Ipv4Addr, Ipv4Addr);
/// An inclusive range of ports of one protocol: (proto, first, last).
pub type PortRange = (Proto, u16, u16);
/// A named port resolved on one pod: (pod address, proto, number).
pub type NamedPortEntry = (Ipv4Addr, Proto, u16);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Every pod of the cluster, in the cluster's order: ("ns/name", address). The datapath knows a
    /// pod by its interface (for the chains) and its address (for the sets); this resolves a flow's
    /// endpoints the same way.
    pub pods: Vec<(String, Option<Ipv4Addr>)>,
    pub ingress: Hook,
    pub egress: Hook,
    /// Referenced by `ChainRule::peers`. Empty matches nothing.
    pub peer_sets: Vec<PeerSet>,
    /// Referenced by `Ports::Numbers`; sorted by (proto, first), disjoint per protocol.
    pub port_sets: Vec<Vec<PortRange>>,
    /// Referenced by `Ports::Named`; sorted, no duplicates.
    pub named_sets: Vec<Vec<NamedPortEntry>>,
    /// What each peer set stands for: (the namespace a pod peer is read in, the peer); for [`Compiled::readdressed`].
    pub peer_defs: Vec<(String, Peer)>,
    /// What each named-port set stands for: its (port name, protocol) list.
    pub named_defs: Vec<Vec<(String, Proto)>>,
}

/// The addresses one peer covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// A pod peer's: `ranges` are single addresses (sorted, no duplicates), rendered as a plain set. Otherwise
    /// an ipBlock's: sorted, disjoint, non-adjacent ranges, rendered as an interval set.
    pub of_pods: bool,
    pub ranges: Vec<AddrRange>,
}

/// One direction: which chain each isolated pod jumps to (a pod absent is not isolated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hook {
    /// Pod "ns/name" → index into `chains`.
    pub chain_of: BTreeMap<String, usize>,
    pub chains: Vec<Chain>,
}

/// Allows what one of its rules matches, drops the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// The policies ("ns/name", sorted) whose rules these are: the set every pod of the chain is selected by.
    pub policies: Vec<String>,
    pub rules: Vec<ChainRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRule {
    /// The other end's address must be in this peer set; None: any address.
    pub peers: Option<usize>,
    pub ports: Ports,
    /// Where it comes from: policy "ns/name" and the rule's index in that direction.
    pub policy: String,
    pub rule: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    Any,
    /// (proto, dport) must be in this port set.
    Numbers(usize),
    /// (daddr, proto, dport) must be in this named-port set.
    Named(usize),
}

impl Compiled {
    pub fn hook(&self, dir: Direction) -> &Hook {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the table lets the first packet of `flow` through: the source pod's egress chain (if
    /// any) must match, then the destination pod's ingress chain (if any), as in the rendered script.
    /// A pod talking to itself never reaches the table.
    pub fn allows(&self, flow: &Flow) -> bool {
        let (src_index, src_ip) = self.resolve(&flow.src);
        let (dst_index, dst_ip) = self.resolve(&flow.dst);
        if src_index.is_some() && src_index == dst_index {
            return true;
        }
        let key = |index: Option<usize>| index.map(|i| self.pods[i].0.as_str());
        self.passes(&self.egress, key(src_index), dst_ip, dst_ip, flow)
            && self.passes(&self.ingress, key(dst_index), src_ip, dst_ip, flow)
    }

    /// (index into `pods`, address) of an endpoint; an unknown pod has neither.
    fn resolve(&self, endpoint: &Endpoint) -> (Option<usize>, Option<Ipv4Addr>) {
        let index = match endpoint {
            Endpoint::Pod(i) => Some(*i).filter(|i| *i < self.pods.len()),
            Endpoint::Named { namespace, name } => {
                let key = format!("{namespace}/{name}");
                self.pods.iter().position(|(k, _)| *k == key)
            }
            Endpoint::Addr(ip) => return (None, Some(*ip)),
        };
        (index, index.and_then(|i| self.pods[i].1))
    }

    /// `peer`: the other end's address (saddr for ingress, daddr for egress); `daddr`: the destination's.
    fn passes(
        &self,
        hook: &Hook,
        pod: Option<&str>,
        peer: Option<Ipv4Addr>,
        daddr: Option<Ipv4Addr>,
        flow: &Flow,
    ) -> bool {
        let Some(&chain) = pod.and_then(|k| hook.chain_of.get(k)) else { return true };
        hook.chains[chain].rules.iter().any(|rule| {
            let peer_ok = match rule.peers {
                None => true,
                Some(set) => {
                    peer.is_some_and(|ip| self.peer_sets[set].ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ip)))
                }
            };
            let port_ok = match rule.ports {
                Ports::Any => true,
                Ports::Numbers(set) => self.port_sets[set]
                    .iter()
                    .any(|(proto, lo, hi)| *proto == flow.proto && (*lo..=*hi).contains(&flow.port)),
                Ports::Named(set) => daddr.is_some_and(|d| self.named_sets[set].contains(&(d, flow.proto, flow.port))),
            };
            peer_ok && port_ok
        })
    }
}

/// The entries a pod gives a named-port set of `names`.
fn named_entries<'a>(pod: &'a PodInfo, names: &'a [(String, Proto)]) -> impl Iterator<Item = NamedPortEntry> + 'a {
    let ip = pod.ip.filter(|_| !pod.host_network);
    names.iter().filter_map(move |(name, proto)| {
        let &(p, number) = pod.named_ports.get(name).filter(|(p, _)| p == proto)?;
        Some((ip?, p, number))
    })
}

impl Compiled {
    /// The table for `cluster` when the only change since `self` was compiled is the address of the pod `key`
    /// (an ADD, or the API server reporting it): what [`compile`] would give, without going over every pod and
    /// policy again. Chains do not depend on addresses; only the sets holding that pod change. None when the pod
    /// is not in `cluster`.
    pub fn readdressed(&self, cluster: &Cluster, key: &str) -> Option<Compiled> {
        let index = cluster.pods.iter().position(|p| p.key() == key)?;
        let pod = &cluster.pods[index];
        let old = self.pods.iter().find(|(k, _)| k == key).and_then(|(_, ip)| *ip);
        let mut out = self.clone();
        for (k, ip) in out.pods.iter_mut() {
            if k == key {
                *ip = pod.ip;
            }
        }
        // Another pod may hold the old address too: it stays where that pod puts it.
        let others = |matches: &dyn Fn(&PodInfo) -> bool, ip: Ipv4Addr| {
            cluster.pods.iter().enumerate().any(|(i, p)| i != index && p.ip == Some(ip) && matches(p))
        };
        for (set, (namespace, peer)) in out.peer_sets.iter_mut().zip(&self.peer_defs) {
            if !set.of_pods || !pod_peer_matches(cluster, namespace, peer, pod) {
                continue;
            }
            let matches = |p: &PodInfo| pod_peer_matches(cluster, namespace, peer, p);
            if let Some(ip) = old.filter(|ip| !others(&matches, *ip)) {
                set.ranges.retain(|(lo, _)| *lo != ip);
            }
            if let Some(ip) = pod.ip
                && let Err(at) = set.ranges.binary_search(&(ip, ip))
            {
                set.ranges.insert(at, (ip, ip));
            }
        }
        for (set, names) in out.named_sets.iter_mut().zip(&self.named_defs) {
            let mine: Vec<NamedPortEntry> = named_entries(pod, names).collect();
            if let Some(ip) = old {
                // The pod's ports are what they were: its old entries are its entries at the old address.
                let before = PodInfo { ip: Some(ip), ..pod.clone() };
                for e in named_entries(&before, names) {
                    let also = |p: &PodInfo| named_entries(p, names).any(|x| x == e);
                    if !others(&also, ip) {
                        set.retain(|x| *x != e);
                    }
                }
            }
            for e in mine {
                if let Err(at) = set.binary_search(&e) {
                    set.insert(at, e);
                }
            }
        }
        Some(out)
    }
}

/// Compiles `policies` for `cluster`. The result depends on neither the order of `policies` nor that
/// of the pods (bar `Compiled::pods`), so the rendered script is the same for the same state.
pub fn compile(policies: &[Policy], cluster: &Cluster) -> Compiled {
    let mut sorted: Vec<&Policy> = policies.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut b = Builder {
        cluster,
        out: Compiled::default(),
        peers: BTreeMap::new(),
        ports: BTreeMap::new(),
        named: BTreeMap::new(),
    };
    b.out.pods = cluster.pods.iter().map(|p| (p.key(), p.ip)).collect();
    for dir in [Direction::Ingress, Direction::Egress] {
        // Pods grouped by the (sorted) set of policies isolating them; BTreeMap order numbers the chains.
        // In strict mode the pods no policy selects at all form one more group: the empty list (a chain with no
        // rule, that drops everything).
        let mut groups: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
        for pod in &cluster.pods {
            let ids: Vec<usize> =
                (0..sorted.len()).filter(|&i| sorted[i].covers(dir) && selects(sorted[i], pod)).collect();
            let strict_default = cluster.strict && !pod.host_network && !sorted.iter().any(|p| selects(p, pod));
            if !ids.is_empty() || strict_default {
                groups.entry(ids).or_default().push(pod.key());
            }
        }
        let mut hook = Hook::default();
        for (ids, pods) in groups {
            let policies: Vec<&Policy> = ids.iter().map(|&i| sorted[i]).collect();
            let mut chain = b.chain(dir, &policies);
            if ids.is_empty() {
                chain.policies = vec![crate::eval::STRICT_DEFAULT.to_string()];
            }
            hook.chain_of.extend(pods.into_iter().map(|key| (key, hook.chains.len())));
            hook.chains.push(chain);
        }
        match dir {
            Direction::Ingress => b.out.ingress = hook,
            Direction::Egress => b.out.egress = hook,
        }
    }
    b.out
}

struct Builder<'a> {
    cluster: &'a Cluster,
    out: Compiled,
    /// Peer set ids by definition, not content, so that their number does not depend on the pods. A
    /// pod peer without a namespace selector is keyed with its policy's namespace, its meaning's context.
    peers: BTreeMap<(Option<String>, Peer), usize>,
    ports: BTreeMap<Vec<PortRange>, usize>,
    named: BTreeMap<Vec<(String, Proto)>, usize>,
}

impl Builder<'_> {
    fn chain(&mut self, dir: Direction, policies: &[&Policy]) -> Chain {
        let mut rules = Vec::new();
        for policy in policies {
            for (index, rule) in policy.rules(dir).iter().enumerate() {
                let peers: Vec<Option<usize>> = match rule.peers.is_empty() {
                    true => vec![None],
                    false => rule.peers.iter().map(|p| Some(self.peer_set(&policy.namespace, p))).collect(),
                };
                let port_matches = self.port_matches(&rule.ports);
                for &peers in &peers {
                    for &ports in &port_matches {
                        rules.push(ChainRule { peers, ports, policy: policy.key(), rule: index });
                    }
                }
            }
        }
        Chain { policies: policies.iter().map(|p| p.key()).collect(), rules }
    }

    fn peer_set(&mut self, namespace: &str, peer: &Peer) -> usize {
        let key = match peer {
            Peer::Pods { namespaces: None, .. } => (Some(namespace.to_string()), peer.clone()),
            Peer::Pods { .. } => (None, peer.clone()),
            Peer::IpBlock { cidr, except } => {
                let mut except: Vec<_> = except.iter().map(|e| e.trunc()).collect();
                except.sort();
                except.dedup();
                (None, Peer::IpBlock { cidr: cidr.trunc(), except })
            }
        };
        if let Some(&id) = self.peers.get(&key) {
            return id;
        }
        let set = match &key.1 {
            Peer::Pods { .. } => {
                let pods = self.cluster.pods.iter().filter(|p| pod_peer_matches(self.cluster, namespace, peer, p));
                let mut ips: Vec<Ipv4Addr> = pods.filter_map(|p| p.ip).collect();
                ips.sort_unstable();
                ips.dedup();
                PeerSet { of_pods: true, ranges: ips.into_iter().map(|ip| (ip, ip)).collect() }
            }
            Peer::IpBlock { cidr, except } => {
                let span = |n: &ipnet::Ipv4Net| (u32::from(n.network()), u32::from(n.broadcast()));
                let intervals = ranges::subtract(span(cidr), &except.iter().map(span).collect::<Vec<_>>());
                let ranges = intervals.into_iter().map(|(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi))).collect();
                PeerSet { of_pods: false, ranges }
            }
        };
        let id = self.out.peer_sets.len();
        self.out.peer_sets.push(set);
        self.out.peer_defs.push((namespace.to_string(), peer.clone()));
        self.peers.insert(key, id);
        id
    }

    /// How a rule's ports are matched: any, or by one or both of a numeric and a named set.
    fn port_matches(&mut self, specs: &[PortSpec]) -> Vec<Ports> {
        if specs.is_empty() {
            return vec![Ports::Any];
        }
        let (named, numeric): (Vec<&PortSpec>, Vec<&PortSpec>) =
            specs.iter().partition(|s| matches!(s.port, Some(PortRef::Name(_))));
        let mut out = Vec::new();
        if !numeric.is_empty() {
            out.push(Ports::Numbers(self.port_set(&numeric)));
        }
        if !named.is_empty() {
            out.push(Ports::Named(self.named_set(&named)));
        }
        out
    }

    /// Kept even when empty (every range inverted): a rule with ports that match nothing matches nothing.
    fn port_set(&mut self, specs: &[&PortSpec]) -> usize {
        let mut by_proto: BTreeMap<Proto, Vec<(u32, u32)>> = BTreeMap::new();
        for spec in specs {
            let (lo, hi) = match spec.port {
                None => (0, u16::MAX),
                Some(PortRef::Number(first)) => (first, spec.end_port.unwrap_or(first)),
                Some(PortRef::Name(_)) => continue,
            };
            by_proto.entry(spec.proto).or_default().push((lo.into(), hi.into()));
        }
        let set: Vec<PortRange> = by_proto
            .into_iter()
            .flat_map(|(proto, v)| ranges::merge(v).into_iter().map(move |(lo, hi)| (proto, lo as u16, hi as u16)))
            .collect();
        if let Some(&id) = self.ports.get(&set) {
            return id;
        }
        let id = self.out.port_sets.len();
        self.out.port_sets.push(set.clone());
        self.ports.insert(set, id);
        id
    }

    fn named_set(&mut self, specs: &[&PortSpec]) -> usize {
        let mut names: Vec<(String, Proto)> = specs
            .iter()
            .filter_map(|s| match &s.port {
                Some(PortRef::Name(name)) => Some((name.clone(), s.proto)),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        if let Some(&id) = self.named.get(&names) {
            return id;
        }
        let mut entries: Vec<NamedPortEntry> =
            self.cluster.pods.iter().flat_map(|pod| named_entries(pod, &names)).collect();
        entries.sort();
        entries.dedup();
        let id = self.out.named_sets.len();
        self.out.named_sets.push(entries);
        self.out.named_defs.push(names.clone());
        self.named.insert(names, id);
        id
    }
}

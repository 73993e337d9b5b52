//! The reference semantics: whether Kubernetes NetworkPolicy allows one new flow, and why.
//!
//! This is the truth that `vpcctl policy explain` prints and that the compiled nftables shape is
//! tested against, so it follows the API documentation step by step and does nothing clever:
//!
//! * A flow needs the source pod's egress and the destination pod's ingress to allow it.
//! * A pod is isolated in a direction when a policy of its namespace that covers that direction
//!   selects it; an isolated side allows only what some rule of those policies matches. A side that is
//!   not a (non-host-network) pod of the cluster is never isolated. In strict mode a pod that no policy
//!   selects at all is isolated both ways and allows nothing.
//! * A rule matches when one of its peers matches the other end (no peers: any) and one of its ports
//!   matches (no ports: any). Named ports are resolved on the receiving pod, the flow's destination.

use std::net::Ipv4Addr;

use crate::model::{Cluster, Direction, Endpoint, Flow, Peer, PodInfo, Policy, PortRef, PortSpec};

/// What isolates a pod in strict mode when no policy selects it (in `Side::isolated_by`, where policy names go).
pub const STRICT_DEFAULT: &str = "strict mode: no policy selects the pod";

/// The verdict on a flow, with the reasons for each side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Judged on the source pod's policies.
    pub egress: Side,
    /// Judged on the destination pod's policies.
    pub ingress: Side,
    /// A pod talking to itself: that never leaves its network namespace, so no policy applies.
    pub loopback: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    /// The policies ("ns/name") that select the pod for this direction; none: not isolated.
    pub isolated_by: Vec<String>,
    /// The rules that match the flow: (policy "ns/name", index among its rules for this direction).
    pub allowed_by: Vec<(String, usize)>,
}

impl Side {
    pub fn isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }

    pub fn allows(&self) -> bool {
        !self.isolated() || !self.allowed_by.is_empty()
    }
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.loopback || (self.egress.allows() && self.ingress.allows())
    }
}

/// Judges one flow against every policy.
pub fn evaluate(policies: &[Policy], cluster: &Cluster, flow: &Flow) -> Decision {
    let src = Party::resolve(cluster, &flow.src);
    let dst = Party::resolve(cluster, &flow.dst);
    Decision {
        egress: judge(policies, cluster, Direction::Egress, &src, &dst, &dst, flow),
        ingress: judge(policies, cluster, Direction::Ingress, &dst, &src, &dst, flow),
        loopback: src.index.is_some() && src.index == dst.index,
    }
}

/// Whether `policy` selects `pod`, ignoring direction. Host-network pods are never selected: their
/// address is the node's, and the datapath cannot tell them from the node or from one another.
pub fn selects(policy: &Policy, pod: &PodInfo) -> bool {
    !pod.host_network && policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels)
}

/// Whether a pod peer (`podSelector`/`namespaceSelector`) of a policy in `policy_namespace` matches
/// `pod`. Never true of an ipBlock peer (matched by address, not by pod) nor of a host-network pod.
pub fn pod_peer_matches(cluster: &Cluster, policy_namespace: &str, peer: &Peer, pod: &PodInfo) -> bool {
    let Peer::Pods { namespaces, pods } = peer else { return false };
    if pod.host_network {
        return false;
    }
    let namespace_ok = match namespaces {
        None => pod.namespace == policy_namespace,
        Some(sel) => sel.matches(&cluster.namespace_labels(&pod.namespace)),
    };
    namespace_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
}

/// One end of a flow, resolved against the cluster.
struct Party<'a> {
    /// The pod's index, for a pod of the cluster (host-network ones included).
    index: Option<usize>,
    ip: Option<Ipv4Addr>,
    /// The pod, when policies can see it as one: not for addresses nor host-network pods.
    pod: Option<&'a PodInfo>,
}

impl<'a> Party<'a> {
    fn resolve(cluster: &'a Cluster, endpoint: &Endpoint) -> Self {
        let index = match endpoint {
            Endpoint::Pod(i) => Some(*i).filter(|i| *i < cluster.pods.len()),
            Endpoint::Named { namespace, name } => cluster.pod_index(namespace, name),
            Endpoint::Addr(ip) => return Party { index: None, ip: Some(*ip), pod: None },
        };
        match index.map(|i| (i, &cluster.pods[i])) {
            Some((i, pod)) => Party { index: Some(i), ip: pod.ip, pod: Some(pod).filter(|p| !p.host_network) },
            None => Party { index: None, ip: None, pod: None },
        }
    }
}

/// One side of the flow: `subject` is the pod whose policies judge, `peer` the other end, `receiver`
/// the destination (whose named ports count).
fn judge(
    policies: &[Policy],
    cluster: &Cluster,
    dir: Direction,
    subject: &Party,
    peer: &Party,
    receiver: &Party,
    flow: &Flow,
) -> Side {
    let mut side = Side::default();
    let Some(pod) = subject.pod else { return side };
    for policy in policies.iter().filter(|p| p.covers(dir) && selects(p, pod)) {
        side.isolated_by.push(policy.key());
        for (i, rule) in policy.rules(dir).iter().enumerate() {
            let peer_ok = rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(cluster, policy, p, peer));
            let port_ok = rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, receiver, flow));
            if peer_ok && port_ok {
                side.allowed_by.push((policy.key(), i));
            }
        }
    }
    if cluster.strict && side.isolated_by.is_empty() && !policies.iter().any(|p| selects(p, pod)) {
        side.isolated_by.push(STRICT_DEFAULT.to_string());
    }
    side
}

fn peer_matches(cluster: &Cluster, policy: &Policy, peer: &Peer, party: &Party) -> bool {
    match peer {
        Peer::Pods { .. } => party.pod.is_some_and(|pod| pod_peer_matches(cluster, &policy.namespace, peer, pod)),
        Peer::IpBlock { cidr, except } => {
            party.ip.is_some_and(|ip| cidr.trunc().contains(&ip) && !except.iter().any(|e| e.trunc().contains(&ip)))
        }
    }
}

fn port_matches(spec: &PortSpec, receiver: &Party, flow: &Flow) -> bool {
    if spec.proto != flow.proto {
        return false;
    }
    match &spec.port {
        None => true,
        Some(PortRef::Number(first)) => (*first..=spec.end_port.unwrap_or(*first)).contains(&flow.port),
        Some(PortRef::Name(name)) => {
            receiver.pod.is_some_and(|pod| pod.named_ports.get(name) == Some(&(spec.proto, flow.port)))
        }
    }
}

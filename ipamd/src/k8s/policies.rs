//! NetworkPolicy objects, Namespaces and Pods from the API server into the pure model of [`netpol`]: converted
//! once, when the watch delivers them.
//!
//! Bad input never opens a hole: whatever cannot be expressed narrows and is reported, never widens. A policy
//! whose podSelector cannot be read isolates its whole namespace in its directions with no allow; a peer or a
//! port that cannot be read is dropped, and a rule left with no peer or no port is dropped too, rather than read
//! as "every peer" or "every port" (what an empty list means). Each drop is a line of the policy's problems (a
//! Warning Event on it, and `vpcctl policy status`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as ApiSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netpol::{
    Direction, LabelSelector, Operator, Peer, PodInfo, Policy, PolicyTypes, PortRef, PortSpec, Proto, Requirement, Rule,
};

/// A policy as enforced, and what of it could not be expressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub policy: Policy,
    pub problems: Vec<String>,
    /// The object's uid, for Events about it.
    pub uid: String,
}

fn selector(s: &ApiSelector) -> Result<LabelSelector, String> {
    let mut out = LabelSelector { match_labels: s.match_labels.clone().unwrap_or_default(), ..Default::default() };
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(format!("operator '{other}' on key '{}' is not a selector operator", e.key)),
        };
        let wants_values = matches!(op, Operator::In | Operator::NotIn);
        if wants_values == values.is_empty() {
            return Err(format!("operator {} on key '{}' with values {values:?}", e.operator, e.key));
        }
        out.match_expressions.push(Requirement { key: e.key.clone(), op, values });
    }
    Ok(out)
}

fn peer(p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(b) = &p.ip_block {
        if p.namespace_selector.is_some() || p.pod_selector.is_some() {
            return Err("an ipBlock peer with a selector".into());
        }
        let cidr = ipv4_net(&b.cidr)?;
        let except = b.except.iter().flatten().map(|e| ipv4_net(e)).collect::<Result<Vec<_>, _>>()?;
        return Ok(Peer::IpBlock { cidr, except });
    }
    if p.namespace_selector.is_none() && p.pod_selector.is_none() {
        return Err("a peer with neither ipBlock nor a selector".into());
    }
    let namespaces = p.namespace_selector.as_ref().map(selector).transpose()?;
    let pods = p.pod_selector.as_ref().map(selector).transpose()?;
    Ok(Peer::Pods { namespaces, pods })
}

fn ipv4_net(text: &str) -> Result<Ipv4Net, String> {
    match text.trim().parse::<IpNet>() {
        Ok(IpNet::V4(n)) => Ok(n.trunc()),
        Ok(IpNet::V6(_)) => Err(format!("ipBlock {text}: IPv6 is not enforced (pods are IPv4)")),
        Err(e) => Err(format!("ipBlock '{text}': {e}")),
    }
}

fn port(p: &NetworkPolicyPort) -> Result<PortSpec, String> {
    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        "SCTP" => Proto::Sctp,
        other => return Err(format!("protocol '{other}'")),
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| format!("port {n} out of 1-65535"));
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(number(*n)?)),
        Some(IntOrString::String(name)) => Some(PortRef::Name(name.clone())),
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(e), Some(PortRef::Number(start))) if number(e)? >= *start => Some(number(e)?),
        (Some(e), _) => return Err(format!("endPort {e} without a lower numeric port")),
    };
    Ok(PortSpec { proto, port, end_port })
}

/// Each item of a rule's list read, or dropped and reported; `None` when items were given and none could be read
/// (the rule must go: an empty list would mean "all").
fn read_each<A, B>(
    items: Option<&Vec<A>>,
    read: fn(&A) -> Result<B, String>,
    rule: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<B>> {
    let items = items.map(Vec::as_slice).unwrap_or_default();
    let mut kept = Vec::new();
    for (j, item) in items.iter().enumerate() {
        match read(item) {
            Ok(b) => kept.push(b),
            Err(e) => problems.push(format!("{rule} {what} {j} dropped: {e}")),
        }
    }
    if !items.is_empty() && kept.is_empty() {
        problems.push(format!("{rule} dropped: none of its {what}s could be read"));
        return None;
    }
    Some(kept)
}

/// One direction's rules: each peer and port read or dropped, a rule left empty by drops dropped.
fn rules<'a>(
    dir: &str,
    list: impl Iterator<Item = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>)>,
    problems: &mut Vec<String>,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in list.enumerate() {
        let (Some(peers), Some(ports)) = (
            read_each(peers, peer, &format!("{dir}[{i}]"), "peer", problems),
            read_each(ports, port, &format!("{dir}[{i}]"), "port", problems),
        ) else {
            continue;
        };
        out.push(Rule { peers, ports });
    }
    out
}

/// Converts one NetworkPolicy (see the module's rule on what cannot be expressed).
pub fn policy(np: &NetworkPolicy) -> Converted {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = np.spec.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let declared: Option<Vec<Direction>> = spec.policy_types.as_ref().map(|types| {
        types
            .iter()
            .filter_map(|t| match t.as_str() {
                "Ingress" => Some(Direction::Ingress),
                "Egress" => Some(Direction::Egress),
                other => {
                    problems.push(format!("policyTypes '{other}' ignored"));
                    None
                }
            })
            .collect()
    });
    let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let types = PolicyTypes::defaulted(declared.as_deref(), has_egress);
    let ingress =
        rules("ingress", spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())), &mut problems);
    let egress =
        rules("egress", spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())), &mut problems);
    let pod_selector = spec.pod_selector.as_ref().map(selector).transpose();
    let policy = match pod_selector {
        Ok(sel) => Policy { namespace, name, pod_selector: sel.unwrap_or_default(), types, ingress, egress },
        Err(e) => {
            problems.push(format!("podSelector: {e}: every pod of the namespace is isolated, with no allow"));
            Policy {
                namespace,
                name,
                pod_selector: LabelSelector::default(),
                types,
                ingress: Vec::new(),
                egress: Vec::new(),
            }
        }
    };
    Converted { policy, problems, uid: np.metadata.uid.clone().unwrap_or_default() }
}

/// A Namespace's name and labels.
pub fn namespace(ns: &Namespace) -> (String, BTreeMap<String, String>) {
    (ns.metadata.name.clone().unwrap_or_default(), ns.metadata.labels.clone().unwrap_or_default())
}

/// What policy needs of a Pod: labels, its IPv4 address, hostNetwork, named container ports. Pods that are done
/// (Succeeded, Failed) hold no address any more.
pub fn pod(p: &Pod) -> PodInfo {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let done = status.and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    let ip = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<Ipv4Addr>().ok()).filter(|_| !done);
    let mut named_ports = BTreeMap::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for cp in c.ports.iter().flatten() {
            let (Some(name), Ok(number)) = (&cp.name, u16::try_from(cp.container_port)) else { continue };
            let proto = match cp.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => Proto::Udp,
                "SCTP" => Proto::Sctp,
                _ => Proto::Tcp,
            };
            named_ports.entry(name.clone()).or_insert((proto, number));
        }
    }
    PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        named_ports,
    }
}

#[cfg(test)]
mod tests;

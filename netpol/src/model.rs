//! The inputs: NetworkPolicies (networking.k8s.io/v1, IPv4 only) and the cluster they apply to.
//!
//! These mirror the API objects closely but already narrowed to what enforcement needs; converting
//! from the Kubernetes API types (and rejecting what this model cannot say, such as IPv6 ipBlocks) is
//! the caller's job. Where the API leaves a field to a default, the doc comment says what `None` means.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::selector::{LabelSelector, Labels};

/// The label every namespace carries, set to its name by API servers since Kubernetes 1.21.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The name nftables (and /etc/protocols) gives it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// Selects the pods of `namespace` that this policy applies to; empty = all of them.
    pub pod_selector: LabelSelector,
    pub types: PolicyTypes,
    /// Considered only when `types.ingress`; each rule allows what it matches.
    pub ingress: Vec<Rule>,
    /// Considered only when `types.egress`.
    pub egress: Vec<Rule>,
}

impl Policy {
    /// "namespace/name", the policy's name in explanations and in the nft script's comments.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy isolates the pods it selects in `dir`.
    pub fn covers(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.types.ingress,
            Direction::Egress => self.types.egress,
        }
    }

    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// `spec.policyTypes`, after the API's defaulting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

impl PolicyTypes {
    /// The API's default: a declared non-empty list is taken as is; an omitted (or empty, which the API
    /// server treats alike) list means Ingress, plus Egress when the policy has egress rules.
    pub fn defaulted(declared: Option<&[Direction]>, has_egress_rules: bool) -> Self {
        match declared {
            Some(list) if !list.is_empty() => {
                Self { ingress: list.contains(&Direction::Ingress), egress: list.contains(&Direction::Egress) }
            }
            _ => Self { ingress: true, egress: has_egress_rules },
        }
    }
}

/// One ingress (`from`) or egress (`to`) rule: it matches a flow when a peer and a port both match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Empty = every source (ingress) or destination (egress), inside the cluster or not.
    pub peers: Vec<Peer>,
    /// Empty = every port of every protocol.
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A `podSelector` and/or `namespaceSelector` peer: both must hold when both are given.
    Pods {
        /// None = the policy's own namespace; `Some(everything)` = every namespace.
        namespaces: Option<LabelSelector>,
        /// None = every pod of those namespaces.
        pods: Option<LabelSelector>,
    },
    /// An `ipBlock` peer: matched by address alone, pod addresses included.
    IpBlock {
        /// Host bits are ignored, as the API server does (a peer of 10.0.0.5/24 means 10.0.0.0/24).
        cidr: Ipv4Net,
        /// Ranges inside `cidr` that the peer does not cover.
        except: Vec<Ipv4Net>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    /// None = every port of `proto`.
    pub port: Option<PortRef>,
    /// With a numeric `port`: the range `port..=end_port` (empty if `end_port < port`, which the API
    /// rejects). Ignored otherwise, as the API allows it with numeric ports only.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    /// A container port's name, resolved on the receiving pod (and only with the same protocol).
    Name(String),
}

impl PortSpec {
    pub fn number(proto: Proto, port: u16) -> Self {
        Self { proto, port: Some(PortRef::Number(port)), end_port: None }
    }

    pub fn range(proto: Proto, port: u16, end_port: u16) -> Self {
        Self { proto, port: Some(PortRef::Number(port)), end_port: Some(end_port) }
    }

    pub fn named(proto: Proto, name: &str) -> Self {
        Self { proto, port: Some(PortRef::Name(name.to_string())), end_port: None }
    }

    pub fn all(proto: Proto) -> Self {
        Self { proto, port: None, end_port: None }
    }
}

/// A new flow (its first packet), as judged by [`crate::evaluate`] and [`crate::Compiled::allows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub proto: Proto,
    /// The destination port.
    pub port: u16,
}

/// One end of a flow. A pod that is not in the cluster is judged as an endpoint with no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Index into [`Cluster::pods`].
    Pod(usize),
    /// A pod by namespace and name.
    Named { namespace: String, name: String },
    /// An address that is no pod's (see [`Cluster::endpoint_for`]): a node, or outside the cluster.
    Addr(Ipv4Addr),
}

/// What the policies are judged against: namespaces with their labels and the pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespace name → labels. Read them through [`Cluster::namespace_labels`].
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodInfo>,
    /// aws-vpc-cni's strict mode: a pod that no policy selects (in either direction) is isolated both ways
    /// with nothing allowed. A pod some policy selects is judged as in standard mode, direction by direction
    /// (so a pod selected only by an egress policy still accepts any ingress, as aws-vpc-cni does).
    pub strict: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// None until the pod has an address; such a pod is matched by no peer set (there is nothing to match).
    pub ip: Option<Ipv4Addr>,
    /// A host-network pod has the node's address, shared with the node and its other host-network
    /// pods. Policies never select it, pod peers never match it and its named ports are never resolved:
    /// for policy it is only its address (which ipBlocks may match).
    pub host_network: bool,
    /// Container port name → (protocol, number).
    pub named_ports: BTreeMap<String, (Proto, u16)>,
}

impl PodInfo {
    /// "namespace/name", how the compiled table and the explanations name the pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Cluster {
    /// A namespace's labels, always including `kubernetes.io/metadata.name=<name>` (which API servers
    /// older than 1.21 do not set, but policies written for newer ones select by). A namespace not in
    /// `namespaces` (not yet seen by the caller) has that label alone.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
        labels
    }

    /// Records a namespace, adding the name label if missing.
    pub fn insert_namespace(&mut self, name: &str, mut labels: Labels) {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        self.namespaces.insert(name.to_string(), labels);
    }

    /// The index of the pod "namespace/name".
    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods.iter().position(|p| p.namespace == namespace && p.name == name)
    }

    /// How the datapath sees an address: the (non-host-network) pod that has it, else an outside address.
    pub fn endpoint_for(&self, ip: Ipv4Addr) -> Endpoint {
        match self.pods.iter().position(|p| !p.host_network && p.ip == Some(ip)) {
            Some(i) => Endpoint::Pod(i),
            None => Endpoint::Addr(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_types_default() {
        use Direction::*;
        let t = |ingress, egress| PolicyTypes { ingress, egress };
        assert_eq!(PolicyTypes::defaulted(None, false), t(true, false));
        assert_eq!(PolicyTypes::defaulted(None, true), t(true, true));
        assert_eq!(PolicyTypes::defaulted(Some(&[]), true), t(true, true), "an empty list is defaulted too");
        assert_eq!(PolicyTypes::defaulted(Some(&[Egress]), false), t(false, true));
        assert_eq!(PolicyTypes::defaulted(Some(&[Ingress]), true), t(true, false));
        assert_eq!(PolicyTypes::defaulted(Some(&[Egress, Ingress]), false), t(true, true));
    }

    #[test]
    fn namespace_name_label_is_synthesized() {
        let mut c = Cluster::default();
        c.namespaces.insert("old".into(), [("team".to_string(), "x".to_string())].into());
        c.insert_namespace("new", Labels::new());
        assert_eq!(c.namespace_labels("old").get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("old"));
        assert_eq!(c.namespace_labels("old").get("team").map(String::as_str), Some("x"));
        assert_eq!(c.namespaces["new"].get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("new"));
        assert_eq!(c.namespace_labels("unseen").len(), 1);
    }

    #[test]
    fn an_address_is_a_pod_when_a_pod_has_it() {
        let pod = |name: &str, ip: [u8; 4], host_network| PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            labels: Labels::new(),
            ip: Some(ip.into()),
            host_network,
            named_ports: BTreeMap::new(),
        };
        let c = Cluster {
            namespaces: BTreeMap::new(),
            pods: vec![pod("node", [10, 0, 0, 9], true), pod("a", [10, 0, 0, 1], false)],
            strict: false,
        };
        assert_eq!(c.endpoint_for([10, 0, 0, 1].into()), Endpoint::Pod(1));
        assert_eq!(
            c.endpoint_for([10, 0, 0, 9].into()),
            Endpoint::Addr([10, 0, 0, 9].into()),
            "host network: an address"
        );
        assert_eq!(c.pod_index("ns", "a"), Some(1));
    }
}

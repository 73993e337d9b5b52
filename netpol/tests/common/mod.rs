//! Test fixtures: terse constructors, and a `Case` whose every verdict is checked twice, by the
//! reference semantics and by the compiled table's interpreter, which must agree.
#![allow(dead_code)] // each test crate uses a different part

pub mod strategies;

use std::net::Ipv4Addr;

use netpol::*;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::labels(pairs.iter().copied())
}

pub fn pod(key: &str, ip: &str, pairs: &[(&str, &str)]) -> PodInfo {
    let (namespace, name) = key.split_once('/').unwrap();
    PodInfo {
        namespace: namespace.into(),
        name: name.into(),
        labels: labels(pairs),
        ip: Some(ip.parse().unwrap()),
        host_network: false,
        named_ports: Default::default(),
    }
}

pub fn with_port(mut pod: PodInfo, name: &str, proto: Proto, number: u16) -> PodInfo {
    pod.named_ports.insert(name.into(), (proto, number));
    pod
}

/// A policy "ns/name" selecting `selector`, isolating the given directions, with no rules yet.
pub fn policy(key: &str, selector: LabelSelector, ingress: bool, egress: bool) -> Policy {
    let (namespace, name) = key.split_once('/').unwrap();
    Policy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector: selector,
        types: PolicyTypes { ingress, egress },
        ingress: vec![],
        egress: vec![],
    }
}

pub fn rule(peers: Vec<Peer>, ports: Vec<PortSpec>) -> Rule {
    Rule { peers, ports }
}

pub fn pods_peer(namespaces: Option<LabelSelector>, pods: Option<LabelSelector>) -> Peer {
    Peer::Pods { namespaces, pods }
}

pub fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
}

/// "ns/name" names a pod, anything else is an address.
pub fn endpoint(s: &str) -> Endpoint {
    match s.split_once('/') {
        Some((namespace, name)) => Endpoint::Named { namespace: namespace.into(), name: name.into() },
        None => Endpoint::Addr(s.parse::<Ipv4Addr>().unwrap()),
    }
}

pub fn flow(src: &str, dst: &str, proto: Proto, port: u16) -> Flow {
    Flow { src: endpoint(src), dst: endpoint(dst), proto, port }
}

pub struct Case {
    pub cluster: Cluster,
    pub policies: Vec<Policy>,
}

impl Case {
    /// Namespaces prod {team: a}, dev {team: b}, ops {} and host; pods:
    ///
    /// | pod         | address   | labels     | named ports   |
    /// |-------------|-----------|------------|---------------|
    /// | prod/web    | 10.0.1.1  | app=web    | http tcp 8080 |
    /// | prod/db     | 10.0.1.2  | app=db     |               |
    /// | prod/web2   | 10.0.1.3  | app=web    | http tcp 9090 |
    /// | prod/client | 10.0.1.4  | app=client |               |
    /// | dev/web     | 10.0.2.1  | app=web    | http tcp 8080 |
    /// | dev/client  | 10.0.2.2  | app=client |               |
    /// | ops/dns     | 10.0.3.1  | app=dns    | dns udp 53    |
    /// | host/agent  | 10.0.0.10 | app=web    | http tcp 8080 (host network) |
    pub fn new() -> Self {
        let mut cluster = Cluster::default();
        cluster.insert_namespace("prod", labels(&[("team", "a")]));
        cluster.insert_namespace("dev", labels(&[("team", "b")]));
        cluster.insert_namespace("ops", labels(&[]));
        cluster.insert_namespace("host", labels(&[]));
        let mut agent = with_port(pod("host/agent", "10.0.0.10", &[("app", "web")]), "http", Proto::Tcp, 8080);
        agent.host_network = true;
        cluster.pods = vec![
            with_port(pod("prod/web", "10.0.1.1", &[("app", "web")]), "http", Proto::Tcp, 8080),
            pod("prod/db", "10.0.1.2", &[("app", "db")]),
            with_port(pod("prod/web2", "10.0.1.3", &[("app", "web")]), "http", Proto::Tcp, 9090),
            pod("prod/client", "10.0.1.4", &[("app", "client")]),
            with_port(pod("dev/web", "10.0.2.1", &[("app", "web")]), "http", Proto::Tcp, 8080),
            pod("dev/client", "10.0.2.2", &[("app", "client")]),
            with_port(pod("ops/dns", "10.0.3.1", &[("app", "dns")]), "dns", Proto::Udp, 53),
            agent,
        ];
        Case { cluster, policies: vec![] }
    }

    pub fn with(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    pub fn decide(&self, src: &str, dst: &str, proto: Proto, port: u16) -> Decision {
        evaluate(&self.policies, &self.cluster, &flow(src, dst, proto, port))
    }

    /// The verdict on a TCP flow, after checking that the compiled table agrees with the semantics.
    pub fn tcp(&self, src: &str, dst: &str, port: u16) -> bool {
        self.allowed(src, dst, Proto::Tcp, port)
    }

    pub fn allowed(&self, src: &str, dst: &str, proto: Proto, port: u16) -> bool {
        let truth = self.decide(src, dst, proto, port).allowed();
        let compiled = compile(&self.policies, &self.cluster).allows(&flow(src, dst, proto, port));
        assert_eq!(compiled, truth, "compiled table disagrees on {src} -> {dst} {proto:?}/{port}");
        truth
    }
}

pub trait PolicyExt {
    fn with_ingress(self, rule: Rule) -> Self;
    fn with_egress(self, rule: Rule) -> Self;
}

impl PolicyExt for Policy {
    fn with_ingress(mut self, rule: Rule) -> Self {
        self.ingress.push(rule);
        self
    }

    fn with_egress(mut self, rule: Rule) -> Self {
        self.egress.push(rule);
        self
    }
}

//! proptest strategies: small random clusters (namespaces n0..n2, pods with labels, named ports, sometimes
//! host-network) and policies using every selector operator, ipBlocks with excepts and every kind of port.

use std::net::Ipv4Addr;

use netpol::*;
use proptest::prelude::*;

pub const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
pub const OUTSIDE: [&str; 3] = ["192.168.1.7", "8.8.8.8", "10.0.0.200"];
pub const PORTS: [u16; 7] = [53, 70, 80, 81, 5353, 8080, 8081];

pub fn label_set(keys: &'static [&'static str]) -> impl Strategy<Value = Labels> {
    let values = prop::sample::select(vec!["x", "y"]);
    prop::collection::vec((prop::sample::select(keys), values), 0..=2)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// Every operator, over keys and values that pod and namespace labels use (and a name label).
pub fn selector() -> impl Strategy<Value = LabelSelector> {
    let keys = vec!["a", "b", "kubernetes.io/metadata.name"];
    let values = vec!["x", "y", "n0", "n1"];
    let op = prop::sample::select(vec![Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist]);
    let requirement =
        (prop::sample::select(keys.clone()), op, prop::collection::vec(prop::sample::select(values.clone()), 0..=2))
            .prop_map(|(key, op, values)| Requirement {
                key: key.into(),
                op,
                values: values.into_iter().map(String::from).collect(),
            });
    let pair = (prop::sample::select(keys), prop::sample::select(values));
    let any = (prop::collection::vec(pair, 0..=1), prop::collection::vec(requirement, 0..=2)).prop_map(
        |(labels, match_expressions)| LabelSelector {
            match_labels: labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions,
        },
    );
    // Weighted towards selectors that match something, so that rules often decide.
    let simple = (prop::sample::select(vec!["a", "b"]), prop::sample::select(vec!["x", "y"]))
        .prop_map(|(k, v)| LabelSelector::labels([(k, v)]));
    prop_oneof![1 => Just(LabelSelector::everything()), 2 => simple, 2 => any]
}

pub fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap()
}

pub fn peer() -> impl Strategy<Value = Peer> {
    let pods = (prop::option::of(selector()), prop::option::of(selector()))
        .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods });
    let cidr = prop::sample::select(vec!["10.0.0.0/28", "10.0.0.5/29", "0.0.0.0/0", "10.0.0.8/30", "192.168.1.0/24"]);
    let except = prop::collection::vec(
        prop::sample::select(vec!["10.0.0.1/32", "10.0.0.4/30", "10.0.0.3/31", "192.168.1.7/32", "10.0.0.12/30"]),
        0..=2,
    );
    let block =
        (cidr, except).prop_map(|(c, e)| Peer::IpBlock { cidr: net(c), except: e.into_iter().map(net).collect() });
    prop_oneof![pods, block]
}

pub fn port_spec() -> impl Strategy<Value = PortSpec> {
    let proto = prop::sample::select(vec![Proto::Tcp, Proto::Udp]);
    let number = (
        prop::sample::select(vec![53u16, 80, 8080]),
        prop::option::of(prop::sample::select(vec![53u16, 70, 81, 8081])),
    )
        .prop_map(|(n, end)| (Some(PortRef::Number(n)), end));
    let name =
        prop::sample::select(vec!["http", "http", "dns", "nope"]).prop_map(|n| (Some(PortRef::Name(n.into())), None));
    let port = prop_oneof![1 => Just((None, None)), 2 => number, 2 => name];
    (proto, port).prop_map(|(proto, (port, end_port))| PortSpec { proto, port, end_port })
}

pub fn rule() -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer(), 0..=2), prop::collection::vec(port_spec(), 0..=2))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn policies() -> impl Strategy<Value = Vec<Policy>> {
    let types = prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(ingress, egress)| Some(PolicyTypes { ingress, egress })),
        Just(None),
    ];
    let policy =
        (0..3usize, selector(), types, prop::collection::vec(rule(), 0..=2), prop::collection::vec(rule(), 0..=2));
    prop::collection::vec(policy, 1..=4).prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, (ns, pod_selector, types, ingress, egress))| Policy {
                namespace: NAMESPACES[ns].into(),
                name: format!("p{i}"),
                pod_selector,
                types: types.unwrap_or_else(|| PolicyTypes::defaulted(None, !egress.is_empty())),
                ingress,
                egress,
            })
            .collect()
    })
}

pub fn cluster() -> impl Strategy<Value = Cluster> {
    let http = prop::option::of((
        prop::sample::select(vec![Proto::Tcp, Proto::Udp]),
        prop::sample::select(vec![80u16, 8080, 8081]),
    ));
    let dns = prop::option::of(prop::sample::select(vec![53u16, 5353]));
    let pod = (0..3usize, label_set(&["a", "b"]), prop::bool::weighted(0.125), http, dns);
    let shape = (2..=3usize, prop::collection::vec(label_set(&["a", "b"]), 3), prop::collection::vec(pod, 1..=8));
    (shape, prop::bool::weighted(0.25)).prop_map(|((n, ns_labels, pods), strict)| {
        let mut cluster = Cluster { strict, ..Cluster::default() };
        for (name, labels) in NAMESPACES.iter().zip(ns_labels).take(n) {
            cluster.insert_namespace(name, labels);
        }
        cluster.pods = pods
            .into_iter()
            .enumerate()
            .map(|(i, (ns, labels, host_network, http, dns))| PodInfo {
                namespace: NAMESPACES[ns % n].into(),
                name: format!("pod{i}"),
                labels,
                ip: Some(Ipv4Addr::new(10, 0, 0, i as u8 + 1)),
                host_network,
                named_ports: http
                    .map(|h| ("http".to_string(), h))
                    .into_iter()
                    .chain(dns.map(|d| ("dns".to_string(), (Proto::Udp, d))))
                    .collect(),
            })
            .collect();
        cluster
    })
}

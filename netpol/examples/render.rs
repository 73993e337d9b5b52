//! Prints the nft script for a small sample cluster, to check by hand with the real nft in a
//! throwaway network namespace:
//!
//! ```sh
//! cargo run --example render -- sample > /tmp/np.nft   # or: empty
//! ip netns add npcheck && ip netns exec npcheck nft -c -f /tmp/np.nft; ip netns del npcheck
//! ```
//!
//! `flows` prints instead the reference verdict on every TCP flow between the sample's pods and two
//! outside addresses (`src dst port allowed`), to compare with connections through the loaded table.

use netpol::*;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "sample".into());
    let (policies, cluster) = match which.as_str() {
        "empty" => (vec![], Cluster::default()),
        _ => sample(),
    };
    if which == "flows" {
        return print_flows(&policies, &cluster);
    }
    let compiled = compile(&policies, &cluster);
    // Every pod lives on this node; the interface name is made from the pod's index.
    let veth_of = |key: &str| compiled.pods.iter().position(|(k, _)| k == key).map(|i| format!("eni{i:04x}"));
    print!("{}", render(&compiled, &veth_of));
}

fn sample() -> (Vec<Policy>, Cluster) {
    let l = |pairs: &[(&str, &str)]| -> Labels { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
    let mut cluster = Cluster::default();
    cluster.insert_namespace("prod", l(&[("team", "a")]));
    cluster.insert_namespace("ops", l(&[]));
    let pod = |key: &str, ip: [u8; 4], labels: Labels, port: Option<(&str, Proto, u16)>| {
        let (namespace, name) = key.split_once('/').unwrap();
        PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            labels,
            ip: Some(ip.into()),
            host_network: false,
            named_ports: port.map(|(n, p, v)| (n.to_string(), (p, v))).into_iter().collect(),
        }
    };
    cluster.pods = vec![
        pod("prod/web-1", [10, 0, 1, 1], l(&[("app", "web")]), Some(("http", Proto::Tcp, 8080))),
        pod("prod/web-2", [10, 0, 1, 2], l(&[("app", "web")]), Some(("http", Proto::Tcp, 9090))),
        pod("prod/db", [10, 0, 1, 3], l(&[("app", "db")]), None),
        pod("ops/dns", [10, 0, 3, 1], l(&[("app", "dns")]), Some(("dns", Proto::Udp, 53))),
    ];
    let everything = LabelSelector::everything();
    let web = Policy {
        namespace: "prod".into(),
        name: "web".into(),
        pod_selector: LabelSelector::labels([("app", "web")]),
        types: PolicyTypes::defaulted(None, true),
        ingress: vec![Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: Some(everything.clone()),
                    pods: Some(LabelSelector::labels([("app", "dns")])),
                },
                Peer::IpBlock { cidr: "0.0.0.0/0".parse().unwrap(), except: vec!["10.0.0.0/8".parse().unwrap()] },
            ],
            ports: vec![PortSpec::named(Proto::Tcp, "http"), PortSpec::range(Proto::Tcp, 8443, 8444)],
        }],
        egress: vec![
            Rule {
                peers: vec![Peer::Pods { namespaces: None, pods: Some(LabelSelector::labels([("app", "db")])) }],
                ports: vec![PortSpec::number(Proto::Tcp, 5432)],
            },
            Rule { peers: vec![], ports: vec![PortSpec::number(Proto::Udp, 53), PortSpec::number(Proto::Tcp, 53)] },
        ],
    };
    let deny = Policy {
        namespace: "prod".into(),
        name: "default-deny".into(),
        pod_selector: everything,
        types: PolicyTypes::defaulted(Some(&[Direction::Ingress, Direction::Egress]), false),
        ingress: vec![],
        egress: vec![],
    };
    // Lets web reach db through both isolated sides: egress returns, ingress accepts.
    let db = Policy {
        namespace: "prod".into(),
        name: "db".into(),
        pod_selector: LabelSelector::labels([("app", "db")]),
        types: PolicyTypes::defaulted(None, false),
        ingress: vec![Rule {
            peers: vec![Peer::Pods { namespaces: None, pods: Some(LabelSelector::labels([("app", "web")])) }],
            ports: vec![PortSpec::number(Proto::Tcp, 5432)],
        }],
        egress: vec![],
    };
    (vec![web, deny, db], cluster)
}

fn print_flows(policies: &[Policy], cluster: &Cluster) {
    let mut ends: Vec<(String, Endpoint)> =
        cluster.pods.iter().enumerate().map(|(i, p)| (p.key(), Endpoint::Pod(i))).collect();
    for ip in ["11.1.1.1", "10.9.9.9"] {
        ends.push((ip.to_string(), Endpoint::Addr(ip.parse().unwrap())));
    }
    for (src_name, src) in &ends {
        for (dst_name, dst) in &ends {
            if src_name == dst_name || (matches!(src, Endpoint::Addr(_)) && matches!(dst, Endpoint::Addr(_))) {
                continue;
            }
            for port in [5432, 8080, 9090, 8443] {
                let flow = Flow { src: src.clone(), dst: dst.clone(), proto: Proto::Tcp, port };
                println!("{src_name} {dst_name} {port} {}", evaluate(policies, cluster, &flow).allowed());
            }
        }
    }
}

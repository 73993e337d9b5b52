use std::collections::BTreeMap;

use super::*;
use crate::compile::compile;
use crate::model::{Cluster, Peer, PodInfo, Policy, PolicyTypes, PortSpec, Proto, Rule};
use crate::selector::LabelSelector;

fn pod(name: &str, app: &str, ip: [u8; 4]) -> PodInfo {
    PodInfo {
        namespace: "ns".into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ip: Some(ip.into()),
        host_network: false,
        named_ports: BTreeMap::new(),
    }
}

/// ns/a accepts TCP 80 from ns/b, and may send only to 10.1.0.0/16.
fn small() -> Compiled {
    let mut cluster = Cluster::default();
    cluster.insert_namespace("ns", BTreeMap::new());
    cluster.pods = vec![pod("a", "a", [10, 0, 0, 1]), pod("b", "b", [10, 0, 0, 2])];
    let policy = Policy {
        namespace: "ns".into(),
        name: "allow".into(),
        pod_selector: LabelSelector::labels([("app", "a")]),
        types: PolicyTypes { ingress: true, egress: true },
        ingress: vec![Rule {
            peers: vec![Peer::Pods { namespaces: None, pods: Some(LabelSelector::labels([("app", "b")])) }],
            ports: vec![PortSpec::number(Proto::Tcp, 80)],
        }],
        egress: vec![Rule {
            peers: vec![Peer::IpBlock { cidr: "10.1.2.3/16".parse().unwrap(), except: vec![] }],
            ports: vec![],
        }],
    };
    compile(&[policy], &cluster)
}

fn veths(key: &str) -> Option<String> {
    match key {
        "ns/a" => Some("enia".into()),
        "ns/b" => Some("enib".into()),
        _ => None,
    }
}

#[test]
fn small_case_text() {
    let text = render(&small(), &veths);
    let body = text.split_once("table inet vpc-cni-netpol {}\n").unwrap().1;
    let expected = "\
delete table inet vpc-cni-netpol
table inet vpc-cni-netpol {
\tset p0 {
\t\ttype ipv4_addr
\t\telements = { 10.0.0.2 }
\t}
\tset p1 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.1.0.0/16 }
\t}
\tset t0 {
\t\ttype inet_proto . inet_service
\t\tflags interval
\t\telements = { tcp . 80 }
\t}
\tchain eg0 {
\t\t# selected by ns/allow
\t\tip daddr @p1 return comment \"ns/allow egress[0]\"
\t\tdrop
\t}
\tchain in0 {
\t\t# selected by ns/allow
\t\tip saddr @p0 meta l4proto . th dport @t0 accept comment \"ns/allow ingress[0]\"
\t\tdrop
\t}
\tmap egress {
\t\ttype ifname : verdict
\t\telements = {
\t\t\t\"enia\" : jump eg0\t# ns/a
\t\t}
\t}
\tmap ingress {
\t\ttype ifname : verdict
\t\telements = {
\t\t\t\"enia\" : jump in0\t# ns/a
\t\t}
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname vmap @egress
\t\toifname vmap @ingress
\t}
}
";
    assert_eq!(body, expected);
    assert!(text.starts_with("# vpc-cni-netpol:"));
}

#[test]
fn deterministic() {
    assert_eq!(render(&small(), &veths), render(&small(), &veths));
}

#[test]
fn empty_table_still_has_the_hook_and_empty_maps() {
    let text = render(&Compiled::default(), &|_| None);
    assert!(text.contains("\tmap egress {\n\t\ttype ifname : verdict\n\t}\n"));
    assert!(text.contains("\tmap ingress {\n\t\ttype ifname : verdict\n\t}\n"));
    assert!(text.contains("type filter hook forward priority filter; policy accept;"));
    assert!(!text.contains("chain in") && !text.contains("chain eg") && !text.contains("elements"));
}

#[test]
fn pods_elsewhere_get_no_map_entry() {
    let text = render(&small(), &|key| (key == "ns/b").then(|| "enib".to_string()));
    assert!(!text.contains("jump"), "ns/b is not isolated, ns/a lives elsewhere");
}

#[test]
fn unusable_or_shared_interfaces_are_left_out() {
    let mut compiled = small();
    compiled.ingress.chain_of.insert("ns/b".into(), 0);
    let text = render(&compiled, &|key| Some(if key == "ns/a" { "bad\"name".into() } else { "eni-b".into() }));
    assert!(text.contains("# ns/a: left out, its interface name is not usable"));
    assert!(text.contains("\"eni-b\" : jump in0\t# ns/b"));
    assert!(!text.contains("bad"));
    let text = render(&compiled, &|_| Some("same".into()));
    assert!(text.contains("\"same\" : jump in0\t# ns/a"));
    assert!(text.contains("# ns/b: left out, its interface same is another pod's too"));
    let text = render(&compiled, &|_| Some("sixteen-chars-xx".into()));
    assert!(!text.contains("sixteen"));
}

#[test]
fn named_port_sets_match_destination_address_protocol_and_port() {
    let mut compiled = small();
    compiled.named_sets.push(vec![("10.0.0.1".parse().unwrap(), Proto::Tcp, 8080)]);
    compiled.ingress.chains[0].rules[0].ports = Ports::Named(0);
    let text = render(&compiled, &veths);
    assert!(text.contains(
        "\tset n0 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { 10.0.0.1 . tcp . 8080 }\n\t}\n"
    ));
    assert!(text.contains("ip saddr @p0 ip daddr . meta l4proto . th dport @n0 accept"));
}

#[test]
fn address_ranges_print_as_addresses_cidrs_or_spans() {
    let r = |a: &str, b: &str| addr_range(a.parse().unwrap(), b.parse().unwrap());
    assert_eq!(r("10.0.0.1", "10.0.0.1"), "10.0.0.1");
    assert_eq!(r("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
    assert_eq!(r("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
    assert_eq!(r("10.0.0.1", "10.0.0.2"), "10.0.0.1-10.0.0.2");
    assert_eq!(r("10.0.0.128", "10.0.1.127"), "10.0.0.128-10.0.1.127");
}

#[test]
fn comments_cannot_break_out_of_their_quotes() {
    assert_eq!(comment_text("ns/a\" accept\n"), "ns/a_ accept_");
    assert_eq!(comment_text(&"x".repeat(300)).len(), 127);
}

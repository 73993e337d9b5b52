//! Port semantics: numbers, ranges (endPort), protocols and named ports; checked on both the
//! reference semantics and the compiled table (see `common::Case::allowed`).

mod common;

use common::*;
use netpol::{LabelSelector, PortSpec, Proto};

#[test]
fn named_ports_are_resolved_on_each_receiving_pod() {
    // prod/web names 8080 "http", prod/web2 names 9090 so: one policy, one chain, different numbers.
    let p = policy("prod/p", sel(&[("app", "web")]), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::named(Proto::Tcp, "http")]));
    let case = Case::new().with(p);
    assert!(case.tcp("prod/client", "prod/web", 8080));
    assert!(!case.tcp("prod/client", "prod/web", 9090));
    assert!(case.tcp("prod/client", "prod/web2", 9090));
    assert!(!case.tcp("prod/client", "prod/web2", 8080));
    assert!(!case.allowed("prod/client", "prod/web", Proto::Udp, 8080), "the name is for TCP");
    let compiled = netpol::compile(&case.policies, &case.cluster);
    assert_eq!(compiled.ingress.chain_of["prod/web"], compiled.ingress.chain_of["prod/web2"]);
}

#[test]
fn a_named_port_needs_the_same_protocol() {
    let p = policy("ops/p", LabelSelector::everything(), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::named(Proto::Tcp, "dns")]));
    let case = Case::new().with(p);
    assert!(!case.tcp("prod/web", "ops/dns", 53), "ops/dns names a UDP port dns");
    assert!(!case.allowed("prod/web", "ops/dns", Proto::Udp, 53), "the policy asks for TCP");
}

#[test]
fn egress_named_ports_are_resolved_on_the_destination() {
    let p = policy("dev/p", sel(&[("app", "client")]), false, true)
        .with_egress(rule(vec![], vec![PortSpec::named(Proto::Tcp, "http")]));
    let case = Case::new().with(p);
    assert!(case.tcp("dev/client", "prod/web", 8080));
    assert!(case.tcp("dev/client", "prod/web2", 9090));
    assert!(!case.tcp("dev/client", "prod/web2", 8080));
    assert!(!case.tcp("dev/client", "prod/db", 8080), "prod/db has no such port");
    assert!(!case.tcp("dev/client", "8.8.8.8", 8080), "an outside address has no named ports");
    assert!(!case.tcp("dev/client", "host/agent", 8080), "nor has a host-network pod");
}

#[test]
fn port_ranges_with_end_port() {
    let p = policy("prod/p", LabelSelector::everything(), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::range(Proto::Tcp, 8000, 8100), PortSpec::number(Proto::Udp, 8200)]));
    let case = Case::new().with(p);
    for (port, ok) in [(7999, false), (8000, true), (8050, true), (8100, true), (8101, false), (8200, false)] {
        assert_eq!(case.tcp("dev/web", "prod/db", port), ok, "tcp {port}");
    }
    assert!(!case.allowed("dev/web", "prod/db", Proto::Udp, 8050));
    assert!(case.allowed("dev/web", "prod/db", Proto::Udp, 8200));
}

#[test]
fn an_inverted_range_matches_nothing() {
    let p = policy("prod/p", LabelSelector::everything(), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::range(Proto::Tcp, 90, 80)]));
    let case = Case::new().with(p);
    for port in [79, 80, 85, 90, 91] {
        assert!(!case.tcp("dev/web", "prod/db", port));
    }
}

#[test]
fn a_protocol_without_a_port_means_all_its_ports() {
    let p = policy("prod/p", LabelSelector::everything(), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::all(Proto::Udp)]));
    let case = Case::new().with(p);
    for port in [0, 53, 65535] {
        assert!(case.allowed("dev/web", "prod/db", Proto::Udp, port));
        assert!(!case.tcp("dev/web", "prod/db", port));
    }
    assert!(!case.allowed("dev/web", "prod/db", Proto::Sctp, 53));
}

#[test]
fn mixed_numbered_and_named_ports_in_one_rule() {
    let p = policy("prod/p", sel(&[("app", "web")]), true, false).with_ingress(rule(
        vec![pods_peer(None, Some(sel(&[("app", "client")])))],
        vec![PortSpec::number(Proto::Tcp, 443), PortSpec::named(Proto::Tcp, "http")],
    ));
    let case = Case::new().with(p);
    assert!(case.tcp("prod/client", "prod/web", 443));
    assert!(case.tcp("prod/client", "prod/web", 8080));
    assert!(case.tcp("prod/client", "prod/web2", 9090));
    assert!(!case.tcp("prod/client", "prod/web2", 8080));
    assert!(!case.tcp("prod/db", "prod/web", 443), "the peer still applies to both");
    let compiled = netpol::compile(&case.policies, &case.cluster);
    assert_eq!(compiled.ingress.chains[0].rules.len(), 2, "one nft rule per kind of port set");
}

#[test]
fn egress_default_deny_with_dns_allowed() {
    let deny = policy("prod/deny", LabelSelector::everything(), false, true);
    let dns = policy("prod/dns", LabelSelector::everything(), false, true).with_egress(rule(
        vec![pods_peer(Some(sel(&[("kubernetes.io/metadata.name", "ops")])), Some(sel(&[("app", "dns")])))],
        vec![PortSpec::number(Proto::Udp, 53), PortSpec::number(Proto::Tcp, 53)],
    ));
    let case = Case::new().with(deny).with(dns);
    assert!(case.allowed("prod/web", "ops/dns", Proto::Udp, 53));
    assert!(case.tcp("prod/web", "ops/dns", 53));
    assert!(!case.allowed("prod/web", "ops/dns", Proto::Udp, 5353));
    assert!(!case.allowed("prod/web", "8.8.8.8", Proto::Udp, 53), "only the cluster's DNS");
    assert!(!case.tcp("prod/web", "dev/web", 80));
    assert!(case.allowed("dev/web", "8.8.8.8", Proto::Udp, 53), "dev is not isolated");
}

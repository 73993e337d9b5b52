//! The API's defaults, and bad input narrowed and reported, never widened.

use serde_json::json;

use super::*;

fn np(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "p"}, "spec": spec,
    }))
    .unwrap()
}

#[test]
fn the_apis_defaults() {
    // No policyTypes, no egress rules: Ingress only; a port without protocol is TCP; an empty rule allows all.
    let c = policy(&np(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}, {}]})));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert!(c.policy.types.ingress && !c.policy.types.egress);
    assert_eq!(c.policy.ingress[0].ports, [PortSpec::number(Proto::Tcp, 80)]);
    assert_eq!(c.policy.ingress[1], Rule::default(), "an empty rule: every peer, every port");
    // Egress rules make it Egress too.
    let c = policy(&np(json!({"podSelector": {"matchLabels": {"app": "a"}}, "egress": [{}]})));
    assert!(c.policy.types.ingress && c.policy.types.egress);
    assert!(c.policy.pod_selector.matches(&BTreeMap::from([("app".into(), "a".into())])));
    // Declared Egress only: a default-deny egress.
    let c = policy(&np(json!({"podSelector": {}, "policyTypes": ["Egress"]})));
    assert!(!c.policy.types.ingress && c.policy.types.egress && c.policy.egress.is_empty());
}

#[test]
fn what_cannot_be_read_narrows_and_is_reported() {
    let c = policy(&np(json!({
        "podSelector": {},
        "policyTypes": ["Ingress", "Sideways"],
        "ingress": [
            // One bad peer of two: the good one stays.
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "ten"}}]},
            // Every peer bad: the rule goes (not "from everywhere").
            {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
            // Every port bad: the rule goes (not "every port").
            {"ports": [{"protocol": "ICMP", "port": 1}, {"port": 70000}]},
            // endPort without a numeric port, and one below its port.
            {"ports": [{"port": "http", "endPort": 90}, {"port": 90, "endPort": 80}, {"port": 81}]},
            // A selector with an operator the API does not have.
            {"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}}]},
        ],
    })));
    assert_eq!(c.policy.ingress.len(), 2, "{:#?}", c.policy.ingress);
    assert_eq!(c.policy.ingress[0].peers.len(), 1);
    assert_eq!(c.policy.ingress[1].ports, [PortSpec::number(Proto::Tcp, 81)]);
    for want in ["Sideways", "ten", "IPv6", "ICMP", "70000", "endPort 90", "endPort 80", "Near"] {
        assert!(c.problems.iter().any(|p| p.contains(want)), "{want} not reported: {:?}", c.problems);
    }
    // Isolation always applies.
    assert!(c.policy.types.ingress);
}

#[test]
fn an_unreadable_pod_selector_isolates_the_whole_namespace_with_no_allow() {
    let c = policy(&np(json!({
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
        "ingress": [{}],
    })));
    assert_eq!(c.policy.pod_selector, LabelSelector::default(), "every pod of the namespace");
    assert!(c.policy.ingress.is_empty(), "and no allow");
    assert!(c.problems[0].contains("podSelector"), "{:?}", c.problems);
}

#[test]
fn a_pod_gives_labels_address_and_named_ports() {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "a", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"containerPort": 9090}]}]},
        "status": {"phase": "Running", "podIP": "10.0.1.7"},
    }))
    .unwrap();
    let info = pod(&p);
    assert_eq!(info.ip, Some("10.0.1.7".parse().unwrap()));
    assert_eq!(info.named_ports["http"], (Proto::Tcp, 8080));
    assert_eq!(info.named_ports["dns"], (Proto::Udp, 53));
    assert_eq!(info.named_ports.len(), 2);
    let mut done = p.clone();
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert_eq!(pod(&done).ip, None, "a finished pod's address goes to the next one");
}

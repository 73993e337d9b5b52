//! NetworkPolicy semantics, case by case; every verdict is checked on both the reference semantics
//! and the compiled table (see `common::Case::allowed`).

mod common;

use common::*;
use netpol::{LabelSelector, Operator, PortSpec, Proto};

const EVERYONE: [&str; 7] = ["prod/web", "prod/db", "prod/client", "dev/web", "dev/client", "ops/dns", "8.8.8.8"];

#[test]
fn no_policy_allows_everything() {
    let case = Case::new();
    for src in EVERYONE {
        for dst in EVERYONE {
            assert!(case.tcp(src, dst, 80), "{src} -> {dst}");
        }
    }
}

#[test]
fn default_deny_ingress_isolates_the_namespace_pods_for_ingress_only() {
    let case = Case::new().with(policy("prod/deny", LabelSelector::everything(), true, false));
    for src in EVERYONE {
        assert!(!case.tcp(src, "prod/db", 80) || src == "prod/db", "{src} -> prod/db");
        assert!(case.tcp(src, "dev/web", 80), "other namespaces are not selected");
    }
    assert!(case.tcp("prod/db", "8.8.8.8", 443), "egress is not isolated");
    let d = case.decide("dev/web", "prod/db", Proto::Tcp, 80);
    assert_eq!(d.ingress.isolated_by, vec!["prod/deny".to_string()]);
    assert!(d.ingress.allowed_by.is_empty() && !d.egress.isolated());
}

#[test]
fn default_deny_egress() {
    let case = Case::new().with(policy("prod/deny", LabelSelector::everything(), false, true));
    assert!(!case.tcp("prod/web", "prod/db", 80));
    assert!(!case.tcp("prod/web", "8.8.8.8", 443));
    assert!(!case.allowed("prod/web", "ops/dns", Proto::Udp, 53));
    assert!(case.tcp("dev/web", "prod/web", 80), "ingress is not isolated");
    assert!(case.tcp("8.8.8.8", "prod/web", 80));
}

#[test]
fn a_pod_may_always_reach_itself() {
    let case = Case::new().with(policy("prod/deny", LabelSelector::everything(), true, true));
    assert!(case.tcp("prod/web", "prod/web", 80));
    assert!(case.decide("prod/web", "prod/web", Proto::Tcp, 80).loopback);
    assert!(!case.tcp("prod/web", "prod/web2", 80));
}

#[test]
fn pod_selector_alone_means_the_policy_namespace() {
    let allow = policy("prod/web", sel(&[("app", "web")]), true, false)
        .with_ingress(rule(vec![pods_peer(None, Some(sel(&[("app", "client")])))], vec![]));
    let case = Case::new().with(allow);
    assert!(case.tcp("prod/client", "prod/web", 80));
    assert!(!case.tcp("dev/client", "prod/web", 80), "same labels, other namespace");
    assert!(!case.tcp("prod/db", "prod/web", 80));
    assert!(case.tcp("prod/db", "prod/client", 80), "prod/client is not selected");
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let one_peer = pods_peer(Some(sel(&[("team", "b")])), Some(sel(&[("app", "client")])));
    let case = Case::new()
        .with(policy("prod/p", sel(&[("app", "web")]), true, false).with_ingress(rule(vec![one_peer], vec![])));
    assert!(case.tcp("dev/client", "prod/web", 80));
    assert!(!case.tcp("dev/web", "prod/web", 80), "right namespace, wrong pod");
    assert!(!case.tcp("prod/client", "prod/web", 80), "right pod, wrong namespace");
}

#[test]
fn namespace_and_pod_selector_in_two_peers_are_ored() {
    let peers = vec![pods_peer(Some(sel(&[("team", "b")])), None), pods_peer(None, Some(sel(&[("app", "client")])))];
    let case =
        Case::new().with(policy("prod/p", sel(&[("app", "web")]), true, false).with_ingress(rule(peers, vec![])));
    assert!(case.tcp("dev/client", "prod/web", 80));
    assert!(case.tcp("dev/web", "prod/web", 80), "every pod of the selected namespace");
    assert!(case.tcp("prod/client", "prod/web", 80), "the pod selector, in the policy's namespace");
    assert!(!case.tcp("ops/dns", "prod/web", 80));
    assert!(!case.tcp("8.8.8.8", "prod/web", 80), "pod peers never match outside addresses");
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let any_client = pods_peer(Some(LabelSelector::everything()), Some(sel(&[("app", "client")])));
    let case = Case::new()
        .with(policy("prod/p", sel(&[("app", "db")]), true, false).with_ingress(rule(vec![any_client], vec![])));
    assert!(case.tcp("prod/client", "prod/db", 5432));
    assert!(case.tcp("dev/client", "prod/db", 5432));
    assert!(!case.tcp("dev/web", "prod/db", 5432));

    let any_pod = pods_peer(Some(LabelSelector::everything()), None);
    let case = Case::new()
        .with(policy("prod/p", sel(&[("app", "db")]), true, false).with_ingress(rule(vec![any_pod], vec![])));
    for src in ["prod/web", "dev/web", "ops/dns"] {
        assert!(case.tcp(src, "prod/db", 5432), "{src}");
    }
    assert!(!case.tcp("8.8.8.8", "prod/db", 5432), "every pod, but no outside address");
    assert!(!case.tcp("host/agent", "prod/db", 5432), "nor a host-network pod");
}

#[test]
fn namespace_selected_by_its_name_label() {
    let ops = pods_peer(Some(sel(&[("kubernetes.io/metadata.name", "ops")])), None);
    let case = Case::new()
        .with(policy("prod/p", LabelSelector::everything(), true, false).with_ingress(rule(vec![ops], vec![])));
    assert!(case.tcp("ops/dns", "prod/db", 80));
    assert!(!case.tcp("dev/web", "prod/db", 80));
}

#[test]
fn selector_operators_in_peers() {
    let not_client = LabelSelector::everything().with("app", Operator::NotIn, &["client", "dns"]);
    let peer = pods_peer(Some(LabelSelector::everything().with("team", Operator::Exists, &[])), Some(not_client));
    let case =
        Case::new().with(policy("prod/p", sel(&[("app", "db")]), true, false).with_ingress(rule(vec![peer], vec![])));
    assert!(case.tcp("prod/web", "prod/db", 80));
    assert!(case.tcp("dev/web", "prod/db", 80));
    assert!(!case.tcp("dev/client", "prod/db", 80));
    assert!(!case.tcp("ops/dns", "prod/db", 80), "ops has no team label");
}

#[test]
fn ip_block_with_except_and_host_bits() {
    // 10.0.77.5/16 means 10.0.0.0/16; dev/client's address is carved out.
    let peer = block("10.0.77.5/16", &["10.0.2.2/32", "10.0.3.0/24"]);
    let case =
        Case::new().with(policy("prod/p", sel(&[("app", "db")]), true, false).with_ingress(rule(vec![peer], vec![])));
    assert!(case.tcp("dev/web", "prod/db", 80), "ipBlocks match pod addresses too");
    assert!(case.tcp("prod/web", "prod/db", 80));
    assert!(!case.tcp("dev/client", "prod/db", 80), "excepted");
    assert!(!case.tcp("ops/dns", "prod/db", 80), "excepted");
    assert!(case.tcp("10.0.255.255", "prod/db", 80));
    assert!(case.tcp("host/agent", "prod/db", 80), "a host-network pod is its address");
    assert!(!case.tcp("10.1.0.0", "prod/db", 80));
    assert!(!case.tcp("8.8.8.8", "prod/db", 80));
    let compiled = netpol::compile(&case.policies, &case.cluster);
    let ranges: Vec<String> = compiled.peer_sets[0].ranges.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect();
    assert_eq!(ranges, ["10.0.0.0-10.0.2.1", "10.0.2.3-10.0.2.255", "10.0.4.0-10.0.255.255"]);
}

#[test]
fn ip_block_egress_to_the_internet_but_not_the_cluster() {
    let peer = block("0.0.0.0/0", &["10.0.0.0/8"]);
    let case = Case::new()
        .with(policy("prod/p", LabelSelector::everything(), false, true).with_egress(rule(vec![peer], vec![])));
    assert!(case.tcp("prod/web", "8.8.8.8", 443));
    assert!(!case.tcp("prod/web", "dev/web", 443));
    assert!(!case.tcp("prod/web", "10.200.0.1", 443));
}

#[test]
fn host_network_pods_are_never_isolated() {
    let case = Case::new().with(policy("host/deny", LabelSelector::everything(), true, true)).with(policy(
        "prod/deny",
        LabelSelector::everything(),
        true,
        false,
    ));
    assert!(case.tcp("host/agent", "8.8.8.8", 443));
    assert!(case.tcp("dev/web", "host/agent", 80));
    let d = case.decide("host/agent", "prod/web", Proto::Tcp, 80);
    assert!(!d.egress.isolated() && d.ingress.isolated());
    assert!(!case.tcp("host/agent", "prod/web", 80), "the receiving pod's ingress still applies");
    assert!(!netpol::compile(&case.policies, &case.cluster).egress.chain_of.contains_key("host/agent"));
}

#[test]
fn policy_types_decide_which_rules_count() {
    // Declared Egress only: the ingress rules (allowing nothing in particular) are ignored, and ingress
    // is not isolated.
    let mut p = policy("prod/p", LabelSelector::everything(), false, true)
        .with_ingress(rule(vec![block("8.8.8.8/32", &[])], vec![]))
        .with_egress(rule(vec![block("8.8.8.8/32", &[])], vec![]));
    let case = Case::new().with(p.clone());
    assert!(case.tcp("dev/web", "prod/web", 80));
    assert!(case.tcp("prod/web", "8.8.8.8", 80));
    assert!(!case.tcp("prod/web", "dev/web", 80));
    // policyTypes omitted, egress rules present: both directions.
    p.types = netpol::PolicyTypes::defaulted(None, !p.egress.is_empty());
    let case = Case::new().with(p);
    assert!(!case.tcp("dev/web", "prod/web", 80));
    assert!(case.tcp("8.8.8.8", "prod/web", 80));
}

#[test]
fn both_ends_must_allow() {
    let out = policy("prod/out", sel(&[("app", "web")]), false, true)
        .with_egress(rule(vec![pods_peer(Some(sel(&[("team", "b")])), None)], vec![]));
    let into = policy("dev/in", sel(&[("app", "web")]), true, false)
        .with_ingress(rule(vec![pods_peer(Some(LabelSelector::everything()), Some(sel(&[("app", "dns")])))], vec![]));
    let case = Case::new().with(out).with(into);
    assert!(!case.tcp("prod/web", "dev/web", 80), "egress allows, ingress does not");
    assert!(case.tcp("prod/web", "dev/client", 80), "egress allows, dev/client not isolated");
    assert!(case.tcp("ops/dns", "dev/web", 80));
    assert!(!case.tcp("prod/web", "ops/dns", 80), "egress does not allow");
    let d = case.decide("prod/web", "dev/web", Proto::Tcp, 80);
    assert_eq!(d.egress.allowed_by, vec![("prod/out".to_string(), 0)]);
    assert!(d.ingress.isolated() && d.ingress.allowed_by.is_empty());
}

#[test]
fn a_union_of_policies() {
    let a = policy("prod/a", sel(&[("app", "web")]), true, false).with_ingress(rule(
        vec![pods_peer(Some(sel(&[("team", "b")])), Some(sel(&[("app", "client")])))],
        vec![PortSpec::number(Proto::Tcp, 80)],
    ));
    let b = policy("prod/b", LabelSelector::everything(), true, false).with_ingress(rule(
        vec![pods_peer(None, Some(sel(&[("app", "client")])))],
        vec![PortSpec::number(Proto::Tcp, 443)],
    ));
    let case = Case::new().with(a).with(b);
    assert!(case.tcp("dev/client", "prod/web", 80));
    assert!(!case.tcp("dev/client", "prod/web", 443));
    assert!(case.tcp("prod/client", "prod/web", 443));
    assert!(!case.tcp("prod/client", "prod/web", 80));
    assert!(!case.tcp("dev/client", "prod/db", 80), "prod/db is selected by b only");
    assert!(case.tcp("prod/client", "prod/db", 443));
    let d = case.decide("prod/client", "prod/web", Proto::Tcp, 443);
    assert_eq!(d.ingress.isolated_by, ["prod/a", "prod/b"]);
    assert_eq!(d.ingress.allowed_by, [("prod/b".to_string(), 0)]);
    // Pods selected by {a, b} share one chain, pods selected by {b} alone another.
    let compiled = netpol::compile(&case.policies, &case.cluster);
    let chain = |pod: &str| compiled.ingress.chain_of[pod];
    assert_eq!(compiled.ingress.chains.len(), 2);
    assert_eq!(chain("prod/web"), chain("prod/web2"));
    assert_eq!(chain("prod/db"), chain("prod/client"));
    assert_ne!(chain("prod/web"), chain("prod/db"));
    assert_eq!(compiled.ingress.chains[chain("prod/web")].policies, ["prod/a", "prod/b"]);
}

#[test]
fn a_rule_with_no_peers_matches_every_source() {
    let p = policy("prod/p", LabelSelector::everything(), true, false)
        .with_ingress(rule(vec![], vec![PortSpec::number(Proto::Tcp, 80)]));
    let case = Case::new().with(p);
    for src in ["dev/web", "8.8.8.8", "host/agent", "prod/db"] {
        assert!(case.tcp(src, "prod/web", 80), "{src}");
        assert!(!case.tcp(src, "prod/web", 81), "{src}");
    }
}

#[test]
fn the_same_pod_peer_in_two_namespaces_means_two_sets_of_pods() {
    let clients = || rule(vec![pods_peer(None, Some(sel(&[("app", "client")])))], vec![]);
    let case = Case::new()
        .with(policy("prod/p", sel(&[("app", "web")]), true, false).with_ingress(clients()))
        .with(policy("dev/p", sel(&[("app", "web")]), true, false).with_ingress(clients()));
    assert!(case.tcp("prod/client", "prod/web", 80));
    assert!(!case.tcp("dev/client", "prod/web", 80));
    assert!(case.tcp("dev/client", "dev/web", 80));
    assert!(!case.tcp("prod/client", "dev/web", 80));
    assert_eq!(netpol::compile(&case.policies, &case.cluster).peer_sets.len(), 2);
}

#[test]
fn strict_mode_isolates_pods_no_policy_selects() {
    let mut case = Case::new();
    case.cluster.strict = true;
    assert!(!case.tcp("prod/web", "dev/web", 80), "no policy at all: everything denied");
    assert!(!case.tcp("prod/web", "8.8.8.8", 443));
    assert!(case.tcp("host/agent", "10.0.0.99", 80), "host-network pods are never isolated");
    let why = case.decide("prod/web", "dev/web", Proto::Tcp, 80);
    assert_eq!(why.egress.isolated_by, [netpol::eval::STRICT_DEFAULT]);
    // An egress-only policy selecting prod/web: its ingress is judged as in standard mode (open), as aws-vpc-cni
    // does; its egress by the policy. dev/web, selected by nothing, stays closed both ways.
    let case = case.with(policy("prod/out", sel(&[("app", "web")]), false, true).with_egress(rule(vec![], vec![])));
    assert!(case.tcp("prod/web", "8.8.8.8", 443), "its egress policy allows all");
    assert!(case.tcp("prod/web2", "prod/web", 80), "prod/web2 is selected too; prod/web's ingress is open");
    assert!(!case.tcp("prod/web", "dev/web", 80), "dev/web accepts nothing");
    assert!(!case.tcp("dev/web", "8.8.8.8", 443), "dev/web sends nothing");
}

use std::collections::BTreeMap;

use super::*;
use crate::compile::compile;
use crate::model::{Cluster, Peer, PodInfo, Policy, PolicyTypes, Rule};
use crate::selector::LabelSelector;

fn pod(name: &str, app: &str, ip: Option<[u8; 4]>) -> PodInfo {
    PodInfo {
        namespace: "ns".into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ip: ip.map(Into::into),
        host_network: false,
        named_ports: BTreeMap::new(),
    }
}

/// Pods labelled app=db accept only from app=web.
fn web_to_db() -> Policy {
    Policy {
        namespace: "ns".into(),
        name: "db".into(),
        pod_selector: LabelSelector::labels([("app", "db")]),
        types: PolicyTypes { ingress: true, egress: false },
        ingress: vec![Rule {
            peers: vec![Peer::Pods { namespaces: None, pods: Some(LabelSelector::labels([("app", "web")])) }],
            ports: vec![],
        }],
        egress: vec![],
    }
}

fn cluster(pods: Vec<PodInfo>) -> Cluster {
    let mut c = Cluster::default();
    c.insert_namespace("ns", BTreeMap::new());
    c.pods = pods;
    c
}

/// Every pod is on this node, its interface named after it.
fn local(key: &str) -> Option<String> {
    key.strip_prefix("ns/").map(|n| format!("eni{n}"))
}

fn step(policies: &[Policy], before: Vec<PodInfo>, after: Vec<PodInfo>) -> Option<Delta> {
    let (a, b) = (compile(policies, &cluster(before)), compile(policies, &cluster(after)));
    delta(&a, &Maps::of(&a, &local), &b, &Maps::of(&b, &local))
}

#[test]
fn a_new_pod_is_elements_added_and_narrows_nothing() {
    let p = [web_to_db()];
    let before = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("web1", "web", Some([10, 0, 0, 2]))];
    let mut after = before.clone();
    after.push(pod("web2", "web", Some([10, 0, 0, 3])));
    after.push(pod("db2", "db", Some([10, 0, 0, 4])));
    let d = step(&p, before, after).expect("no new chain: elements only");
    assert_eq!(
        d.script,
        "add element inet vpc-cni-netpol p0 { 10.0.0.3 }\nadd element inet vpc-cni-netpol ingress { \"enidb2\" : jump in0 }\n"
    );
    assert!(!d.narrows, "a new pod has no flows to cut, and more peers only allow more");
}

#[test]
fn the_address_an_add_brings_is_one_element() {
    let p = [web_to_db()];
    let before = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("web1", "web", None)];
    let after = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("web1", "web", Some([10, 0, 0, 2]))];
    let d = step(&p, before, after).unwrap();
    assert_eq!(d.script, "add element inet vpc-cni-netpol p0 { 10.0.0.2 }\n");
}

#[test]
fn a_pod_gone_is_elements_deleted_and_narrows() {
    let p = [web_to_db()];
    let before = vec![
        pod("db1", "db", Some([10, 0, 0, 1])),
        pod("db2", "db", Some([10, 0, 0, 4])),
        pod("web1", "web", Some([10, 0, 0, 2])),
    ];
    let d = step(&p, before.clone(), before[..2].to_vec()).unwrap();
    assert_eq!(d.script, "delete element inet vpc-cni-netpol p0 { 10.0.0.2 }\n");
    assert!(d.narrows);
    let d = step(&p, before.clone(), vec![before[0].clone(), before[2].clone()]).unwrap();
    assert_eq!(d.script, "delete element inet vpc-cni-netpol ingress { \"enidb2\" }\n");
}

#[test]
fn a_running_pod_relabelled_into_a_policy_narrows() {
    let p = [web_to_db()];
    let before = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("x", "other", Some([10, 0, 0, 5]))];
    let after = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("x", "db", Some([10, 0, 0, 5]))];
    let d = step(&p, before, after).unwrap();
    assert_eq!(d.script, "add element inet vpc-cni-netpol ingress { \"enix\" : jump in0 }\n");
    assert!(d.narrows, "its open flows from anyone but web must be cut");
}

#[test]
fn nothing_changed_is_an_empty_script() {
    let p = [web_to_db()];
    let pods = vec![pod("db1", "db", Some([10, 0, 0, 1]))];
    assert_eq!(step(&p, pods.clone(), pods), Some(Delta::default()));
}

#[test]
fn a_policy_change_or_a_new_chain_replaces_the_table() {
    let pods = vec![pod("db1", "db", Some([10, 0, 0, 1])), pod("web1", "web", Some([10, 0, 0, 2]))];
    let c = cluster(pods.clone());
    let (a, b) = (compile(&[], &c), compile(&[web_to_db()], &c));
    assert_eq!(delta(&a, &Maps::of(&a, &local), &b, &Maps::of(&b, &local)), None);
    // The first web pod while a second policy selects web pods: the chain for pods that policy selects is new.
    let mut other = web_to_db();
    other.name = "web".into();
    other.pod_selector = LabelSelector::labels([("app", "web")]);
    let before = compile(&[web_to_db(), other.clone()], &cluster(vec![pods[0].clone()]));
    let after = compile(&[web_to_db(), other], &c);
    assert_eq!(delta(&before, &Maps::of(&before, &local), &after, &Maps::of(&after, &local)), None);
}

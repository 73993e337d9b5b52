//! Property tests on random small clusters and policies: the compiled table agrees with the reference
//! semantics on every flow, and compilation behaves as its design says (allow rules only add, policies
//! that select nobody change nothing, more pods mean more set elements and nothing else).

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::strategies::*;
use netpol::*;
use proptest::prelude::*;

/// Every flow between the pods and a few outside addresses, on every port the generators use.
fn flows(cluster: &Cluster) -> Vec<Flow> {
    let ends: Vec<Endpoint> = (0..cluster.pods.len())
        .map(Endpoint::Pod)
        .chain(OUTSIDE.iter().map(|a| Endpoint::Addr(a.parse().unwrap())))
        .collect();
    let mut out = Vec::new();
    for src in &ends {
        for dst in &ends {
            for proto in [Proto::Tcp, Proto::Udp] {
                for port in PORTS {
                    out.push(Flow { src: src.clone(), dst: dst.clone(), proto, port });
                }
            }
        }
    }
    out
}

fn verdicts(policies: &[Policy], cluster: &Cluster) -> Vec<bool> {
    flows(cluster).iter().map(|f| evaluate(policies, cluster, f).allowed()).collect()
}

/// One interface per pod, named from its key's rank so that it does not depend on the pods' order.
fn render_all(compiled: &Compiled) -> String {
    let keys: BTreeMap<String, usize> = {
        let mut keys: Vec<String> = compiled.pods.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()
    };
    render(compiled, &|key| keys.get(key).map(|i| format!("eni{i}")))
}

fn covered(small: &[(Ipv4Addr, Ipv4Addr)], big: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    small.iter().all(|(lo, hi)| big.iter().any(|(blo, bhi)| blo <= lo && hi <= bhi))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compiled_table_agrees_with_the_semantics(cluster in cluster(), policies in policies()) {
        let compiled = compile(&policies, &cluster);
        for flow in flows(&cluster) {
            let decision = evaluate(&policies, &cluster, &flow);
            prop_assert_eq!(compiled.allows(&flow), decision.allowed(), "{:?}: {:?}", flow, decision);
        }
    }

    #[test]
    fn adding_an_allow_rule_never_removes_a_flow(
        cluster in cluster(), mut policies in policies(), which in any::<prop::sample::Index>(), ingress in any::<bool>(), extra in rule(),
    ) {
        prop_assume!(!policies.is_empty());
        let before = verdicts(&policies, &cluster);
        let i = which.index(policies.len());
        let p = &mut policies[i];
        if ingress { p.ingress.push(extra) } else { p.egress.push(extra) }
        let after = verdicts(&policies, &cluster);
        let compiled = compile(&policies, &cluster);
        for ((flow, was), is) in flows(&cluster).iter().zip(before).zip(after) {
            prop_assert!(!was || is, "{:?} no longer allowed", flow);
            prop_assert_eq!(compiled.allows(flow), is);
        }
    }

    #[test]
    fn a_policy_selecting_no_pod_changes_nothing(
        cluster in cluster(), policies in policies(), mut extra in policies(), in_empty_namespace in any::<bool>(),
    ) {
        prop_assume!(!extra.is_empty());
        let mut nobody = extra.swap_remove(0);
        nobody.name = "nobody".into();
        if in_empty_namespace {
            nobody.namespace = "empty".into();
        } else {
            nobody.pod_selector = nobody.pod_selector.with("nobody-has-this", Operator::Exists, &[]);
        }
        let mut more = policies.clone();
        more.insert(0, nobody);
        let (a, b) = (compile(&policies, &cluster), compile(&more, &cluster));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(render_all(&a), render_all(&b));
        prop_assert_eq!(verdicts(&policies, &cluster), verdicts(&more, &cluster));
    }

    #[test]
    fn doubling_the_pods_adds_set_elements_only(cluster in cluster(), policies in policies()) {
        let mut doubled = cluster.clone();
        for (i, pod) in cluster.pods.iter().enumerate() {
            let twin = PodInfo { name: format!("{}-twin", pod.name), ip: Some(Ipv4Addr::new(10, 0, 1, i as u8 + 1)), ..pod.clone() };
            doubled.pods.push(twin);
        }
        let (a, b) = (compile(&policies, &cluster), compile(&policies, &doubled));
        for dir in [Direction::Ingress, Direction::Egress] {
            let (ha, hb) = (a.hook(dir), b.hook(dir));
            prop_assert_eq!(&ha.chains, &hb.chains, "no chain nor rule added");
            for pod in &cluster.pods {
                let twin = format!("{}/{}-twin", pod.namespace, pod.name);
                prop_assert_eq!(ha.chain_of.get(&pod.key()), hb.chain_of.get(&pod.key()));
                prop_assert_eq!(hb.chain_of.get(&pod.key()), hb.chain_of.get(&twin));
            }
        }
        prop_assert_eq!(a.peer_sets.len(), b.peer_sets.len());
        prop_assert_eq!(&a.port_sets, &b.port_sets);
        prop_assert_eq!(a.named_sets.len(), b.named_sets.len());
        for (sa, sb) in a.peer_sets.iter().zip(&b.peer_sets) {
            prop_assert!(covered(&sa.ranges, &sb.ranges), "{:?} lost elements in {:?}", sa, sb);
        }
        for (sa, sb) in a.named_sets.iter().zip(&b.named_sets) {
            prop_assert!(sa.iter().all(|e| sb.contains(e)), "{:?} lost elements in {:?}", sa, sb);
        }
    }

    #[test]
    fn the_script_does_not_depend_on_input_order(cluster in cluster(), policies in policies()) {
        let mut reversed = cluster.clone();
        reversed.pods.reverse();
        let reversed_policies: Vec<Policy> = policies.iter().rev().cloned().collect();
        let a = render_all(&compile(&policies, &cluster));
        prop_assert_eq!(&a, &render_all(&compile(&reversed_policies, &reversed)));
        prop_assert_eq!(&a, &render_all(&compile(&policies, &cluster)));
    }
}

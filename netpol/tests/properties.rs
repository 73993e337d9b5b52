//! Property tests on random small clusters and policies: the compiled table agrees with the reference
//! semantics on every flow, and compilation behaves as its design says (allow rules only add, policies
//! that select nobody change nothing, more pods mean more set elements and nothing else).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use netpol::*;
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const OUTSIDE: [&str; 3] = ["192.168.1.7", "8.8.8.8", "10.0.0.200"];
const PORTS: [u16; 7] = [53, 70, 80, 81, 5353, 8080, 8081];

fn label_set(keys: &'static [&'static str]) -> impl Strategy<Value = Labels> {
    let values = prop::sample::select(vec!["x", "y"]);
    prop::collection::vec((prop::sample::select(keys), values), 0..=2)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// Every operator, over keys and values that pod and namespace labels use (and a name label).
fn selector() -> impl Strategy<Value = LabelSelector> {
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

fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap()
}

fn peer() -> impl Strategy<Value = Peer> {
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

fn port_spec() -> impl Strategy<Value = PortSpec> {
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

fn rule() -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer(), 0..=2), prop::collection::vec(port_spec(), 0..=2))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
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

fn cluster() -> impl Strategy<Value = Cluster> {
    let http = prop::option::of((
        prop::sample::select(vec![Proto::Tcp, Proto::Udp]),
        prop::sample::select(vec![80u16, 8080, 8081]),
    ));
    let dns = prop::option::of(prop::sample::select(vec![53u16, 5353]));
    let pod = (0..3usize, label_set(&["a", "b"]), prop::bool::weighted(0.125), http, dns);
    (2..=3usize, prop::collection::vec(label_set(&["a", "b"]), 3), prop::collection::vec(pod, 1..=8)).prop_map(
        |(n, ns_labels, pods)| {
            let mut cluster = Cluster::default();
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
        },
    )
}

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
            prop_assert!(covered(sa, sb), "{:?} lost elements in {:?}", sa, sb);
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

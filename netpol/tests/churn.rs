//! Property tests of pod churn as element changes ([`netpol::delta`]): for random clusters and policies and a
//! random change of pods (one arrives, leaves, is relabelled, gets or changes its address), the element
//! changes, applied to what the old table held, give exactly what the new table holds; and a change of pods
//! alone never needs the table replaced unless it needs a chain that was not there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use common::strategies::*;
use netpol::*;
use proptest::prelude::*;

/// What a table holds, element by element: set or map name → element texts as the scripts write them.
type Elements = BTreeMap<String, BTreeSet<String>>;

/// The elements `render` would load (a plain re-reading of its output, independent of `delta`'s code).
fn elements(script: &str) -> Elements {
    let mut out = Elements::new();
    let mut current: Option<String> = None;
    let mut in_map_elements = false;
    for line in script.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("set ").or_else(|| line.strip_prefix("map ")) {
            let name = rest.trim_end_matches(" {").to_string();
            out.insert(name.clone(), BTreeSet::new());
            current = Some(name);
        } else if let Some(list) = line.strip_prefix("elements = { ").and_then(|l| l.strip_suffix(" }")) {
            let set = out.get_mut(current.as_ref().unwrap()).unwrap();
            set.extend(list.split(", ").map(String::from));
        } else if line == "elements = {" {
            in_map_elements = true;
        } else if in_map_elements && line == "}" {
            in_map_elements = false;
        } else if in_map_elements {
            let element = line.split('\t').next().unwrap().trim_end_matches(',');
            out.get_mut(current.as_ref().unwrap()).unwrap().insert(element.to_string());
        }
    }
    out
}

/// Applies `delete element` / `add element` lines as the kernel would, refusing what it would refuse.
fn apply(mut state: Elements, script: &str) -> Result<Elements, String> {
    for line in script.lines() {
        let (add, rest) = match (
            line.strip_prefix("add element inet vpc-cni-netpol "),
            line.strip_prefix("delete element inet vpc-cni-netpol "),
        ) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => return Err(format!("not an element command: {line}")),
        };
        let (name, list) = rest.split_once(" { ").ok_or(line)?;
        let list = list.strip_suffix(" }").ok_or(line)?;
        let set = state.get_mut(name).ok_or_else(|| format!("no set {name}"))?;
        for e in list.split(", ") {
            if add {
                let key = e.split(" : ").next().unwrap();
                if set.iter().any(|have| have.split(" : ").next().unwrap() == key) {
                    return Err(format!("{e} already in {name}"));
                }
                set.insert(e.to_string());
            } else {
                let before = set.len();
                set.retain(|have| have.split(" : ").next().unwrap() != e);
                if set.len() == before {
                    return Err(format!("{e} not in {name}"));
                }
            }
        }
    }
    Ok(state)
}

#[derive(Clone, Debug)]
enum Churn {
    Arrive { ns: usize, labels: Labels, ip: Option<u8> },
    Leave(usize),
    Relabel(usize, Labels),
    Address(usize, Option<u8>),
}

fn churn() -> impl Strategy<Value = Vec<Churn>> {
    let ip = prop::option::of(100u8..110);
    let one = prop_oneof![
        1 => (0..3usize, label_set(&["a", "b"]), ip.clone()).prop_map(|(ns, labels, ip)| Churn::Arrive { ns, labels, ip }),
        1 => (0..8usize).prop_map(Churn::Leave),
        3 => (0..8usize, label_set(&["a", "b"])).prop_map(|(i, l)| Churn::Relabel(i, l)),
        1 => (0..8usize, ip).prop_map(|(i, ip)| Churn::Address(i, ip)),
    ];
    prop::collection::vec(one, 1..=3)
}

fn changed(cluster: &Cluster, changes: &[Churn]) -> Cluster {
    let mut c = cluster.clone();
    let namespaces: Vec<String> = c.pods.iter().map(|p| p.namespace.clone()).collect();
    for (n, change) in changes.iter().enumerate() {
        let len = c.pods.len();
        match change.clone() {
            Churn::Arrive { ns, labels, ip } => c.pods.push(PodInfo {
                namespace: namespaces.get(ns).cloned().unwrap_or_else(|| "n0".into()),
                name: format!("new{n}"),
                labels,
                ip: ip.map(|i| Ipv4Addr::new(10, 0, 0, i)),
                host_network: false,
                named_ports: BTreeMap::new(),
            }),
            Churn::Leave(i) if len > 0 => {
                c.pods.remove(i % len);
            }
            Churn::Relabel(i, labels) if len > 0 => c.pods[i % len].labels = labels,
            Churn::Address(i, ip) if len > 0 => c.pods[i % len].ip = ip.map(|i| Ipv4Addr::new(10, 0, 0, i)),
            _ => {}
        }
    }
    c
}

/// Pods in n0 and n1 live on this node, with an interface named after them; n2's live elsewhere.
fn local(key: &str) -> Option<String> {
    let (ns, name) = key.split_once('/')?;
    (ns != "n2").then(|| format!("e{ns}{name}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn element_changes_turn_the_old_table_into_the_new(
        cluster in cluster(), policies in policies(), changes in churn()
    ) {
        let after = changed(&cluster, &changes);
        let (a, b) = (compile(&policies, &cluster), compile(&policies, &after));
        let Some(d) = delta(&a, &Maps::of(&a, &local), &b, &Maps::of(&b, &local)) else {
            let chains = |c: &Compiled| (c.ingress.chains.clone(), c.egress.chains.clone());
            prop_assert_ne!(chains(&a), chains(&b), "replaced although no chain changed");
            return Ok(());
        };
        let (old, new) = (render(&a, &local), render(&b, &local));
        let got = apply(elements(&old), &d.script);
        prop_assert_eq!(got, Ok(elements(&new)), "script:\n{}", d.script);
        if !d.narrows {
            // Nothing narrowed, so the conntrack cut may be skipped: every flow between pods of this node that were
            // there before with the same address and was allowed still is.
            let same = |k: &String| {
                let ip = |c: &Cluster| c.pods.iter().find(|p| &p.key() == k).map(|p| p.ip);
                local(k).is_some() && ip(&cluster) == ip(&after) && ip(&cluster).flatten().is_some()
            };
            let end = |k: &String| {
                let (ns, name) = k.split_once('/').unwrap();
                Endpoint::Named { namespace: ns.into(), name: name.into() }
            };
            let keys: Vec<String> = cluster.pods.iter().map(PodInfo::key).filter(same).collect();
            for s in &keys {
                for t in &keys {
                    let flow = Flow { src: end(s), dst: end(t), proto: Proto::Tcp, port: 80 };
                    if a.allows(&flow) {
                        prop_assert!(b.allows(&flow), "{} → {} denied without narrowing:\n{}", s, t, d.script);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// An address change alone (what an ADD brings) recompiled incrementally gives what a full compile gives,
    /// including when the old or new address is another pod's too.
    #[test]
    fn a_readdressed_pod_compiles_as_the_whole_cluster_does(
        cluster in cluster(), policies in policies(), which in 0..8usize, ip in prop::option::of(1u8..12),
        twin in prop::option::of(0..8usize)
    ) {
        let mut cluster = cluster;
        let i = which % cluster.pods.len();
        // Sometimes another pod holds the same address already (a pod gone whose object lingers).
        if let Some(j) = twin.map(|j| j % cluster.pods.len()).filter(|j| *j != i) {
            cluster.pods[j].ip = cluster.pods[i].ip;
        }
        let before = compile(&policies, &cluster);
        let mut after = cluster.clone();
        after.pods[i].ip = ip.map(|n| Ipv4Addr::new(10, 0, 0, n));
        let key = after.pods[i].key();
        prop_assert_eq!(before.readdressed(&after, &key), Some(compile(&policies, &after)));
    }
}

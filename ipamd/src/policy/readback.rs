//! Drift: what `nft -j list table inet vpc-cni-netpol` shows against the table ipamd last loaded. Pod address sets
//! and the verdict maps (what pod churn changes) are compared element by element; interval sets by element
//! count; chains by name and rule count. Anything found is a reason to replace the table.

use std::collections::{BTreeMap, BTreeSet};

use netpol::{Compiled, Maps};
use serde_json::Value;

/// The differences found, one line each (empty: none).
pub fn drift(listing: &str, compiled: &Compiled, maps: &Maps) -> Vec<String> {
    let json: Value = match serde_json::from_str(listing) {
        Ok(v) => v,
        Err(e) => return vec![format!("the listing is not JSON: {e}")],
    };
    let mut sets: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut vmaps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        let elems = |o: &Value| o["elem"].as_array().cloned().unwrap_or_default();
        if let Some(set) = item.get("set") {
            sets.insert(set["name"].as_str().unwrap_or_default().to_string(), elems(set));
        } else if let Some(map) = item.get("map") {
            let entries = elems(map)
                .iter()
                .map(|e| (e[0].as_str().unwrap_or_default().to_string(), e[1]["jump"]["target"].to_string()))
                .collect();
            vmaps.insert(map["name"].as_str().unwrap_or_default().to_string(), entries);
        } else if let Some(chain) = item.get("chain") {
            rules.entry(chain["name"].as_str().unwrap_or_default().to_string()).or_insert(0);
        } else if let Some(rule) = item.get("rule") {
            *rules.entry(rule["chain"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
    }
    let mut out = Vec::new();
    let mut want_sets = BTreeSet::new();
    let mut count = |name: String, want: usize, sets: &BTreeMap<String, Vec<Value>>| {
        match sets.get(&name).map(Vec::len) {
            None => out.push(format!("set {name} is missing")),
            Some(n) if n != want => out.push(format!("set {name} holds {n} elements, not {want}")),
            Some(_) => {}
        }
        want_sets.insert(name);
    };
    for (i, set) in compiled.peer_sets.iter().enumerate() {
        count(format!("p{i}"), set.ranges.len(), &sets);
    }
    for (i, set) in compiled.port_sets.iter().enumerate() {
        count(format!("t{i}"), set.len(), &sets);
    }
    for (i, set) in compiled.named_sets.iter().enumerate() {
        count(format!("n{i}"), set.len(), &sets);
    }
    for (i, set) in compiled.peer_sets.iter().enumerate().filter(|(_, s)| s.of_pods) {
        let want: BTreeSet<String> = set.ranges.iter().map(|(ip, _)| ip.to_string()).collect();
        let have: BTreeSet<String> =
            sets.get(&format!("p{i}")).into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
        if have.len() == want.len() && have != want {
            out.push(format!("set p{i} holds other addresses than loaded"));
        }
    }
    out.extend(sets.keys().filter(|k| !want_sets.contains(*k)).map(|k| format!("set {k} was not loaded")));
    for (name, want, prefix) in [("egress", &maps.egress, "eg"), ("ingress", &maps.ingress, "in")] {
        let want: BTreeMap<String, String> =
            want.iter().map(|(veth, (chain, _))| (veth.clone(), format!("\"{prefix}{chain}\""))).collect();
        match vmaps.get(name) {
            None => out.push(format!("map {name} is missing")),
            Some(have) if *have != want => {
                let differ = have.keys().chain(want.keys()).filter(|k| have.get(*k) != want.get(*k)).count();
                out.push(format!("map {name}: {differ} interface(s) differ from what was loaded"));
            }
            Some(_) => {}
        }
    }
    let mut want_rules: BTreeMap<String, usize> = BTreeMap::from([("forward".to_string(), 3)]);
    for (hook, prefix) in [(&compiled.egress, "eg"), (&compiled.ingress, "in")] {
        for (i, chain) in hook.chains.iter().enumerate() {
            want_rules.insert(format!("{prefix}{i}"), chain.rules.len() + 1);
        }
    }
    if rules != want_rules {
        let differ: BTreeSet<&String> =
            rules.keys().chain(want_rules.keys()).filter(|k| rules.get(*k) != want_rules.get(*k)).collect();
        out.push(format!("chains differ from what was loaded: {differ:?}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as `nft -j` lists it, for a compiled case; then the same listing with one change each.
    #[test]
    fn each_kind_of_drift_is_found() {
        let mut cluster = netpol::Cluster::default();
        cluster.insert_namespace("ns", Default::default());
        let pod = |name: &str, app: &str, ip: [u8; 4]| netpol::PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: Some(ip.into()),
            host_network: false,
            named_ports: Default::default(),
        };
        cluster.pods = vec![pod("a", "db", [10, 0, 0, 1]), pod("b", "web", [10, 0, 0, 2])];
        let policy = netpol::Policy {
            namespace: "ns".into(),
            name: "db".into(),
            pod_selector: netpol::LabelSelector::labels([("app", "db")]),
            types: netpol::PolicyTypes { ingress: true, egress: false },
            ingress: vec![netpol::Rule {
                peers: vec![netpol::Peer::Pods {
                    namespaces: None,
                    pods: Some(netpol::LabelSelector::labels([("app", "web")])),
                }],
                ports: vec![],
            }],
            egress: vec![],
        };
        let compiled = netpol::compile(&[policy], &cluster);
        let maps = Maps::of(&compiled, &|k: &str| Some(format!("eni{}", &k[3..])));
        let listing = |p0: &str, ingress: &str, in0_rules: usize| {
            let mut items = vec![
                serde_json::json!({"table": {"family": "inet", "name": "vpc-cni-netpol"}}),
                serde_json::json!({"set": {"name": "p0", "elem": serde_json::from_str::<Value>(p0).unwrap()}}),
                serde_json::json!({"map": {"name": "egress"}}),
                serde_json::json!({"map": {"name": "ingress", "elem": serde_json::from_str::<Value>(ingress).unwrap()}}),
                serde_json::json!({"chain": {"name": "in0"}}),
                serde_json::json!({"chain": {"name": "forward"}}),
            ];
            items.extend((0..in0_rules).map(|_| serde_json::json!({"rule": {"chain": "in0"}})));
            items.extend((0..3).map(|_| serde_json::json!({"rule": {"chain": "forward"}})));
            serde_json::json!({ "nftables": items }).to_string()
        };
        let good_map = r#"[["enia", {"jump": {"target": "in0"}}]]"#;
        assert_eq!(drift(&listing(r#"["10.0.0.2"]"#, good_map, 2), &compiled, &maps), Vec::<String>::new());
        let found = |l: String| drift(&l, &compiled, &maps).join("; ");
        assert!(found(listing("[]", good_map, 2)).contains("p0 holds 0 elements, not 1"));
        assert!(found(listing(r#"["10.0.0.9"]"#, good_map, 2)).contains("other addresses"));
        assert!(found(listing(r#"["10.0.0.2"]"#, "[]", 2)).contains("map ingress: 1 interface"));
        let wrong_chain = r#"[["enia", {"jump": {"target": "in7"}}]]"#;
        assert!(found(listing(r#"["10.0.0.2"]"#, wrong_chain, 2)).contains("map ingress"));
        assert!(found(listing(r#"["10.0.0.2"]"#, good_map, 1)).contains("chains differ"));
        assert!(found("{}".into()).contains("set p0 is missing"));
        assert!(found("not json".into()).contains("not JSON"));
    }
}

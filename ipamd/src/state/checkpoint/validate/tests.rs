//! A checkpoint ipamd could have written loads and round-trips; one with any of the inconsistencies no ipamd
//! writes is refused (damaged: moved aside by the daemon), with a message naming the problem, never loaded.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::{Checkpoint, Store};
use crate::state::datastore::{AllocKey, Allocation, ObservedEni};

/// A valid state: ENI `i` holds 10.0.i.10.. as secondary IPs and 10.0.(100+i).16×j/28 prefixes; allocations
/// take distinct addresses of those, each under its own key.
fn valid_state() -> impl Strategy<Value = Checkpoint> {
    (1usize..4, prop::collection::vec((1u8..6, 0u8..3), 3), prop::collection::vec(any::<prop::sample::Index>(), 0..8))
        .prop_map(|(n, shapes, picks)| {
            let mut cp = Checkpoint::default();
            for (i, (ips, prefixes)) in shapes.into_iter().take(n).enumerate() {
                let i = i as u8;
                cp.enis.push(ObservedEni {
                    id: format!("eni-{i}"),
                    mac: format!("02:00:00:00:00:0{i}"),
                    device_number: u32::from(i),
                    subnet_id: "subnet-1".into(),
                    subnet_cidr: "10.0.0.0/16".parse().unwrap(),
                    primary_ip: Ipv4Addr::new(10, 0, i, 4),
                    secondary_ips: (0..ips).map(|k| Ipv4Addr::new(10, 0, i, 10 + k)).collect(),
                    unconfirmed: Vec::new(),
                    ready: true,
                    prefixes: (0..prefixes)
                        .map(|j| format!("10.0.{}.{}/28", 100 + i, 16 * j).parse().unwrap())
                        .collect(),
                    fallback: false,
                });
            }
            let mut addresses: Vec<(Ipv4Addr, String)> =
                cp.enis.iter().flat_map(|e| e.addresses().map(|a| (a, e.id.clone())).collect::<Vec<_>>()).collect();
            for (n, pick) in picks.into_iter().enumerate() {
                if addresses.is_empty() {
                    break;
                }
                let (ip, eni_id) = addresses.remove(pick.index(addresses.len()));
                cp.allocations.insert(
                    AllocKey { network_name: "aws-cni".into(), container_id: format!("c{n}"), if_name: "eth0".into() },
                    Allocation {
                        ip,
                        eni_id,
                        pod_namespace: "default".into(),
                        pod_name: format!("p{n}"),
                        pod_uid: String::new(),
                        allocated_unix: 7,
                    },
                );
            }
            cp
        })
}

/// One inconsistency of the kinds no ipamd writes, applied to the file's JSON; returns the words the refusal
/// must contain.
fn corrupt(v: &mut Value, how: u8) -> &'static str {
    let allocs = v["allocations"].as_array_mut().unwrap();
    let first = allocs[0].clone();
    match how {
        // The same key listed twice (a map would silently keep one).
        0 => {
            allocs.push(first);
            "listed twice"
        }
        // A second pod on the first pod's IP.
        1 => {
            let mut other = first;
            other["container_id"] = json!("intruder");
            allocs.push(other);
            "held by two allocations"
        }
        // An allocation on an address no ENI has.
        2 => {
            allocs[0]["ip"] = json!("192.168.77.7");
            "no known ENI has"
        }
        // ENI 0's first prefix (or a new one) also delegated to another ENI: every address of it twice.
        3 => {
            let enis = v["enis"].as_array_mut().unwrap();
            enis.push(json!({"id": "eni-x", "mac": "02:00:00:00:00:99", "device_number": 9,
                "subnet_id": "subnet-1", "subnet_cidr": "10.0.0.0/16", "primary_ip": "10.0.99.4",
                "secondary_ips": [], "prefixes": ["10.0.100.0/28"]}));
            let e0 = &mut enis[0];
            if e0["prefixes"].as_array().is_none_or(|p| p.is_empty()) {
                e0["prefixes"] = json!(["10.0.100.0/28"]);
            }
            "overlap"
        }
        // One secondary IP on two ENIs.
        _ => {
            let ip = first["ip"].clone();
            let enis = v["enis"].as_array_mut().unwrap();
            enis.push(json!({"id": "eni-y", "mac": "02:00:00:00:00:98", "device_number": 8,
                "subnet_id": "subnet-1", "subnet_cidr": "10.0.0.0/16", "primary_ip": "10.0.98.4",
                "secondary_ips": [ip]}));
            "on two ENIs"
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_states_round_trip(cp in valid_state()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&cp).unwrap();
        prop_assert_eq!(store.load().unwrap(), cp);
    }

    #[test]
    fn corrupted_states_are_refused_never_loaded(cp in valid_state(), how in 0u8..5) {
        prop_assume!(!cp.allocations.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&cp).unwrap();
        let mut v: Value = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        let words = corrupt(&mut v, how);
        std::fs::write(store.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        match store.load() {
            Ok(loaded) => prop_assert!(false, "loaded a corrupted checkpoint ({words}): {loaded:?}"),
            Err(e) => {
                prop_assert!(e.damaged(), "{e}");
                prop_assert!(e.to_string().contains(words) && e.to_string().contains("ipam.json"), "{e}");
            }
        }
    }
}

#[test]
fn an_allocation_whose_ip_left_every_eni_loads_when_written_with_no_eni() {
    // The datastore writes such an allocation with no ENI (EC2 took the address back outside ipamd): legal.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut cp = Checkpoint::default();
    cp.enis.push(ObservedEni {
        id: "eni-0".into(),
        mac: "02:00:00:00:00:01".into(),
        device_number: 0,
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.0.0/16".parse().unwrap(),
        primary_ip: "10.0.0.4".parse().unwrap(),
        secondary_ips: vec!["10.0.0.10".parse().unwrap()],
        unconfirmed: Vec::new(),
        ready: true,
        prefixes: Vec::new(),
        fallback: false,
    });
    cp.allocations.insert(
        AllocKey { network_name: "aws-cni".into(), container_id: "gone".into(), if_name: "eth0".into() },
        Allocation {
            ip: "10.0.0.77".parse().unwrap(),
            eni_id: String::new(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: String::new(),
            allocated_unix: 7,
        },
    );
    store.save(&cp).unwrap();
    assert_eq!(store.load().unwrap(), cp);
}

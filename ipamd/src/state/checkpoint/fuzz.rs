//! The checkpoint loader at fuzzing scale: 10 000 files — random bytes and mutated valid checkpoints — load or
//! fail with an error naming the file; none panics. A corrupt file must never crash-loop ipamd.

use proptest::prelude::*;
use serde_json::Value;
use test_support::json_value;

use super::*;

const PATHS: &[&str] = &[
    "version",
    "allocations",
    "cooling",
    "node",
    "limits",
    "enis",
    "allocations/0/ip",
    "allocations/0/container_id",
    "allocations/0/allocated_unix",
    "enis/0/subnet_cidr",
    "enis/0/secondary_ips",
    "node/vpc_cidrs",
    "limits/max_enis",
];

fn valid() -> Value {
    serde_json::json!({
        "version": 1,
        "allocations": [{"network_name": "aws-cni", "container_id": "abc", "if_name": "eth0", "ip": "10.0.1.9",
            "eni_id": "eni-1", "pod_namespace": "default", "pod_name": "web", "allocated_unix": 7}],
        "cooling": {"10.0.1.10": 99},
        "limits": {"max_enis": 3, "ips_per_eni": 9},
        "enis": [{"id": "eni-1", "mac": "02:00:00:00:00:01", "device_number": 0, "subnet_id": "subnet-1",
            "subnet_cidr": "10.0.1.0/24", "primary_ip": "10.0.1.4", "secondary_ips": ["10.0.1.9", "10.0.1.10"]}]
    })
}

fn set(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        cur = match p.parse::<usize>() {
            Ok(i) => match cur.get_mut(i) {
                Some(c) => c,
                None => return,
            },
            Err(_) => &mut cur[*p],
        };
    }
    let last = parts[parts.len() - 1];
    if cur.is_object() || cur.is_null() {
        cur[last] = new;
    }
}

fn file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        prop::collection::vec((prop::sample::select(PATHS), json_value()), 0..4).prop_map(|edits| {
            let mut v = valid();
            for (p, val) in edits {
                set(&mut v, p, val);
            }
            serde_json::to_vec(&v).unwrap()
        }),
        // Truncated valid files: a torn write (which the atomic rename prevents) or a disk error.
        (0usize..400).prop_map(|n| {
            let bytes = serde_json::to_vec(&valid()).unwrap();
            bytes[..n.min(bytes.len())].to_vec()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_file_loads_or_is_refused_with_its_path(bytes in file()) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), &bytes).unwrap();
        match store.load() {
            Ok(cp) => {
                // What loads saves and loads back the same.
                store.save(&cp).unwrap();
                prop_assert_eq!(store.load().unwrap(), cp);
            }
            Err(e) => prop_assert!(e.to_string().contains("ipam.json"), "{}", e),
        }
    }
}

//! Property tests at fuzzing scale (cargo-fuzz needs a nightly toolchain): 100 000 generated CNI requests —
//! random bytes, mutated valid configurations, hostile environments — through the whole parse path. None may
//! panic; every refusal must be a CNI error JSON with a spec or documented code, a message and the version.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use test_support::json_value;

use super::{Request, parse_request};

const CODES: &[u64] = &[1, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102];

fn assert_cni_error(v: &Value) {
    assert!(v["code"].as_u64().is_some_and(|c| CODES.contains(&c)), "code in {v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "msg in {v}");
    assert!(v["cniVersion"].as_str().is_some_and(|s| !s.is_empty()), "cniVersion in {v}");
}

/// A JSON value of a few levels, any kind.
const FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "mtu",
    "podMtu",
    "vethPrefix",
    "socket",
    "timeoutMs",
    "logFile",
    "logLevel",
    "prevResult",
    "cni.dev/valid-attachments",
    "runtimeConfig",
    "capabilities",
];

/// A valid configuration with some fields replaced by anything.
fn mutated_conf() -> impl Strategy<Value = Vec<u8>> {
    let base: Value = serde_json::json!({
        "cniVersion": "1.0.0", "name": "aws-cni", "type": "vpc-cni", "mtu": 9001,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.1.9/32"}]}
    });
    prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..5).prop_map(move |edits| {
        let mut v = base.clone();
        for (k, val) in edits {
            v[k] = val;
        }
        serde_json::to_vec(&v).unwrap()
    })
}

fn stdin() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        mutated_conf(),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

const VARS: &[&str] = &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    let value = prop_oneof![
        prop::sample::select(vec!["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "eth0", "/var/run/netns/x"])
            .prop_map(String::from),
        ".{0,80}",
        "(IgnoreUnknown=1;)?(K8S_POD_[A-Z_]{1,12}=[^;]{0,20};?){0,5}",
    ];
    prop::collection::btree_map(prop::sample::select(VARS).prop_map(String::from), value, 0..7)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_request_parses_or_gets_a_cni_error(stdin in stdin(), env in env()) {
        let get = |k: &str| env.get(k).cloned();
        match parse_request(&get, &stdin) {
            Ok(Request::Version(v)) => prop_assert!(v["supportedVersions"].is_array()),
            Ok(Request::Act { conf, env, .. }) => {
                // What a parsed request leads to must not panic either.
                let _ = conf.prev_pod_ip();
                let _ = conf.socket();
                if let Some(env) = env {
                    let (ns, name) = super::pod_identity(&env);
                    let veth = crate::cni::host_veth_name(conf.veth_prefix(), &ns, &name);
                    prop_assert!(veth.len() <= 15, "{veth}");
                }
            }
            Err(e) => assert_cni_error(&e),
        }
    }
}

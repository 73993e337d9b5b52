//! The table against aws-vpc-cni's README list and against ipamd's own settings, and the start check.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::config::Config;

/// The README's variables (tests/fixtures/aws-node/readme-variables.txt).
fn readme() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/aws-node/readme-variables.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn declared_envs() -> BTreeSet<String> {
    use clap::CommandFactory;
    Config::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| m.get(k).cloned()
}

/// Every variable aws-vpc-cni documents has exactly one fate here, and "honoured" means ipamd declares it.
#[test]
fn every_aws_variable_has_one_fate_and_honoured_ones_are_settings() {
    let names: Vec<&str> = AWS_VARIABLES.iter().map(|v| v.name).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a variable listed twice");
    let list = readme();
    assert_eq!(list.len(), 50, "the README's list");
    let missing: Vec<&String> = list.iter().filter(|n| !unique.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "aws-vpc-cni variables with no fate: {missing:?}");
    let declared = declared_envs();
    for v in AWS_VARIABLES {
        let is_setting = declared.contains(v.name);
        match v.fate {
            Fate::Honoured => assert!(is_setting, "{} is called honoured but ipamd has no such setting", v.name),
            _ => assert!(!is_setting, "{} is a setting of ipamd's but its fate says {:?}", v.name, v.fate),
        }
        assert!(fate_of(v.name).is_some());
    }
}

/// Whatever asks for a missing feature is refused with the variable, the value and what is missing; the values
/// that mean "off" and unset variables pass.
#[test]
fn a_variable_asking_for_what_is_not_built_is_refused_by_name() {
    for (name, value, says) in [
        ("ENABLE_IPv6", "true", "IPv6 pods"),
        ("ENABLE_IPv4", "false", "IPv6 pods"),
        ("ENABLE_POD_ENI", "TRUE", "security groups for pods"),
        ("ENABLE_MULTI_NIC", "true", "network cards"),
        ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679", "HTTP introspection"),
    ] {
        let err = check(env(&[(name, value)])).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{name}: '{value}' asks for")), "{err}");
        assert!(err.contains(says) && err.contains("accepted:"), "{err}");
    }
    let off =
        [("ENABLE_IPv6", "false"), ("ENABLE_IPv4", "true"), ("ENABLE_POD_ENI", "False"), ("ENABLE_MULTI_NIC", "")];
    assert_eq!(check(env(&off)).unwrap(), AwsNotes::default());
    assert_eq!(check(env(&[])).unwrap(), AwsNotes::default());
}

/// Every refusable variable is refused for a value outside its "off" list, whatever the table says of it.
#[test]
fn each_not_built_variable_refuses_a_value_that_asks_for_it() {
    for v in AWS_VARIABLES {
        if let Fate::NotBuilt { off, .. } = v.fate {
            let asking = if off == FALSE { "true" } else { "something-else" };
            let err = check(env(&[(v.name, asking)])).expect_err(v.name).to_string();
            assert!(err.contains(v.name) && err.contains(asking), "{err}");
            for o in off {
                assert!(check(env(&[(v.name, o)])).is_ok(), "{}={o} is accepted", v.name);
            }
        }
    }
}

/// A no-op that is set is said, naming why it has no effect.
#[test]
fn a_no_op_that_is_set_is_said() {
    let notes = check(env(&[("ENABLE_NFTABLES", "true"), ("AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "false")])).unwrap();
    assert_eq!(notes.0.len(), 2, "{notes:?}");
    assert!(notes.0.iter().all(|n| n.contains("has no effect")), "{notes:?}");
}

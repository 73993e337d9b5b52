//! docs/iam-policy.json lists exactly the EC2 actions ipamd can call: every operation of the EC2 boundary
//! (each `AwsEc2` method names its action in a `const OP`, which is also what the rate limiter and the metrics
//! count), plus `ec2:CreateTags`, which EC2 requires for the tags that CreateNetworkInterface sets through
//! TagSpecifications. Adding an EC2 call without updating the policy fails here; so does a policy that grants
//! more than the code uses.

use std::collections::BTreeSet;
use std::path::Path;

fn code_actions() -> BTreeSet<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cloud/ec2/aws.rs"))
        .expect("src/cloud/ec2/aws.rs");
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("const OP: &str = \""))
        .filter_map(|rest| rest.strip_suffix("\";"))
        .map(|op| format!("ec2:{op}"))
        .collect()
}

fn policy_actions() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/iam-policy.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("docs/iam-policy.json")).unwrap();
    let mut out = BTreeSet::new();
    for st in doc["Statement"].as_array().expect("Statement list") {
        assert_eq!(st["Effect"], "Allow", "{st}");
        match &st["Action"] {
            serde_json::Value::String(a) => {
                out.insert(a.clone());
            }
            serde_json::Value::Array(v) => out.extend(v.iter().filter_map(|a| a.as_str().map(String::from))),
            other => panic!("Action {other}"),
        }
    }
    out
}

#[test]
fn the_policy_grants_exactly_the_ec2_actions_the_code_calls() {
    let mut want = code_actions();
    assert!(want.len() >= 10, "the EC2 boundary's operations were not found: {want:?}");
    want.insert("ec2:CreateTags".into());
    let have = policy_actions();
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(missing.is_empty(), "called by ipamd but not in docs/iam-policy.json: {missing:?}");
    assert!(extra.is_empty(), "in docs/iam-policy.json but never called: {extra:?}");
    // AmazonEKS_CNI_Policy has 13 actions (CreateTags included); ours needs no more.
    assert!(have.len() <= 13, "{have:?}");
}

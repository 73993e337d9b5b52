//! docs/iam-policy.json lists exactly the EC2 actions ipamd can call: every operation of the EC2 boundary
//! (each `AwsEc2` method names its action in a `const OP`, which is also what the rate limiter and the metrics
//! count), plus `ec2:CreateTags`, which EC2 requires for the tags that CreateNetworkInterface sets through
//! TagSpecifications. Adding an EC2 call without updating the policy fails here; so does a policy that grants
//! more than the code uses.
//!
//! docs/iam-policy-least-privilege.json grants the same actions, but changes only ENIs (and nodes) carrying the
//! cluster tag ipamd sets at create; see [`the_least_privilege_policy_changes_only_this_clusters_enis`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// What docs/install.md tells the operator to replace with the value of CLUSTER_NAME.
const CLUSTER: &str = "CLUSTER_NAME";

/// The resource types EC2 authorizes for each changing call as ipamd makes it (Service Authorization Reference,
/// Amazon EC2: the required types, plus the optional ones ipamd's requests bring in: the security groups of
/// CreateNetworkInterface, the instance of the attachment ModifyNetworkInterfaceAttribute changes).
const RESOURCES: &[(&str, &[&str])] = &[
    ("ec2:AssignPrivateIpAddresses", &["network-interface"]),
    ("ec2:AttachNetworkInterface", &["instance", "network-interface"]),
    ("ec2:CreateNetworkInterface", &["network-interface", "security-group", "subnet"]),
    ("ec2:CreateTags", &["network-interface"]),
    ("ec2:DeleteNetworkInterface", &["network-interface"]),
    ("ec2:DetachNetworkInterface", &["instance", "network-interface"]),
    ("ec2:ModifyNetworkInterfaceAttribute", &["instance", "network-interface"]),
    ("ec2:UnassignPrivateIpAddresses", &["network-interface"]),
];

/// The values of the string constants declared as `<decl>"<value>";` on a line of `file` (under ipamd/).
fn consts(file: &str, decl: &str) -> Vec<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect(file);
    src.lines()
        .filter_map(|l| l.trim().strip_prefix(decl)?.strip_prefix('"')?.strip_suffix("\";").map(String::from))
        .collect()
}

fn code_actions() -> BTreeSet<String> {
    consts("src/cloud/ec2/aws.rs", "const OP: &str = ").into_iter().map(|op| format!("ec2:{op}")).collect()
}

/// The tag key that carries CLUSTER_NAME on every ENI ipamd creates, as the code spells it.
fn cluster_tag() -> String {
    let found = consts("src/reconcile/mod.rs", "pub const TAG_CLUSTER: &str = ");
    assert_eq!(found.len(), 1, "TAG_CLUSTER in src/reconcile/mod.rs: {found:?}");
    found[0].clone()
}

fn statements(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(file);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect(file)).unwrap();
    let list = doc["Statement"].as_array().expect("Statement list").clone();
    for st in &list {
        assert_eq!(st["Effect"], "Allow", "{st}");
    }
    list
}

/// An Action or a Resource: one string or a list of them.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list.iter().map(|s| s.as_str().expect("a string").to_string()).collect(),
        other => panic!("neither a string nor a list: {other}"),
    }
}

/// `network-interface` of `arn:aws:ec2:*:*:network-interface/*`; anything but an EC2 ARN (`*` included) fails.
fn resource_type(arn: &str) -> &str {
    assert!(arn.starts_with("arn:aws:ec2:"), "a changing action on {arn:?}, not on EC2 resources of one type");
    arn.split(':').nth(5).and_then(|r| r.split('/').next()).expect(arn)
}

fn string_equals<'a>(st: &'a Value, key: &str) -> Option<&'a str> {
    st["Condition"]["StringEquals"][key].as_str()
}

fn assert_grants_exactly_what_the_code_calls(file: &str) {
    let mut want = code_actions();
    assert!(want.len() >= 10, "the EC2 boundary's operations were not found: {want:?}");
    want.insert("ec2:CreateTags".into());
    let have: BTreeSet<String> = statements(file).iter().flat_map(|st| strings(&st["Action"])).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(missing.is_empty(), "called by ipamd but not in docs/{file}: {missing:?}");
    assert!(extra.is_empty(), "in docs/{file} but never called: {extra:?}");
    // AmazonEKS_CNI_Policy has 13 actions (CreateTags included); ours needs no more.
    assert!(have.len() <= 13, "{have:?}");
}

#[test]
fn the_policy_grants_exactly_the_ec2_actions_the_code_calls() {
    assert_grants_exactly_what_the_code_calls("iam-policy.json");
}

/// docs/iam-policy-least-privilege.json, statement by statement (a mutation of the file that each check catches
/// in brackets):
/// 1. it grants exactly the actions the code calls, as docs/iam-policy.json does [drop DetachNetworkInterface];
/// 2. Describe actions sit in Describe-only statements on Resource `*` without a Condition, since EC2 has no
///    resource-level permissions for them [a Condition on the read statement; DescribeSubnets moved into the
///    ENI statement];
/// 3. no changing action is granted on Resource `*` or on anything but EC2 ARNs of one type [Resource `*` in
///    the ENI statement];
/// 4. every statement with a changing action has a Condition [the subnet statement's ec2:Vpc removed];
/// 5. on ENIs and instances, every changing action requires `StringEquals` on the cluster tag with the value
///    CLUSTER_NAME, the key spelled as `TAG_CLUSTER` in src/reconcile/mod.rs: `aws:ResourceTag` (or
///    `ec2:ResourceTag`) for what exists [TAG_CLUSTER renamed in the code; `StringLike` `*`; `StringEqualsIfExists`],
///    `aws:RequestTag` for CreateNetworkInterface, whose ENI does not exist yet [ResourceTag in the create
///    statement], and `ec2:CreateAction` = CreateNetworkInterface for CreateTags, which would otherwise let ipamd
///    put the cluster tag on any ENI and then change it [the CreateAction key removed];
/// 6. subnets and security groups are granted for CreateNetworkInterface only (the ENI is made in them, they do
///    not change), under an `ec2:Vpc` condition [ModifyNetworkInterfaceAttribute added to that statement];
/// 7. each changing action is granted on exactly the resource types EC2 checks for it ([`RESOURCES`]), so the
///    policy still lets ipamd work and grants no type beyond [the instance statement deleted; instance/* added to
///    the ENI statement].
#[test]
fn the_least_privilege_policy_changes_only_this_clusters_enis() {
    const FILE: &str = "iam-policy-least-privilege.json";
    assert_grants_exactly_what_the_code_calls(FILE);
    let tag = cluster_tag();
    let (request_tag, resource_tags) =
        (format!("aws:RequestTag/{tag}"), [format!("aws:ResourceTag/{tag}"), format!("ec2:ResourceTag/{tag}")]);
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for st in statements(FILE) {
        let actions = strings(&st["Action"]);
        if actions.iter().all(|a| a.starts_with("ec2:Describe")) {
            assert!(strings(&st["Resource"]) == ["*"] && st.get("Condition").is_none(), "{st}");
            continue;
        }
        assert!(!actions.iter().any(|a| a.starts_with("ec2:Describe")), "Describe among changing actions: {st}");
        let resources = strings(&st["Resource"]);
        let types: BTreeSet<&str> = resources.iter().map(|r| resource_type(r)).collect();
        assert!(st["Condition"].as_object().is_some_and(|c| !c.is_empty()), "changing without a Condition: {st}");
        for action in &actions {
            if types.contains("network-interface") || types.contains("instance") {
                match action.as_str() {
                    "ec2:CreateTags" => {
                        assert_eq!(string_equals(&st, "ec2:CreateAction"), Some("CreateNetworkInterface"), "{st}")
                    }
                    "ec2:CreateNetworkInterface" => assert_eq!(string_equals(&st, &request_tag), Some(CLUSTER), "{st}"),
                    _ => assert!(resource_tags.iter().any(|k| string_equals(&st, k) == Some(CLUSTER)), "{st}"),
                }
            }
            if types.contains("subnet") || types.contains("security-group") {
                assert_eq!(action, "ec2:CreateNetworkInterface", "subnets and security groups are only used: {st}");
                assert!(st["Condition"]["ArnLike"]["ec2:Vpc"].is_string(), "{st}");
            }
            granted.entry(action.clone()).or_default().extend(types.iter().map(|t| t.to_string()));
        }
    }
    let want: BTreeMap<String, BTreeSet<String>> =
        RESOURCES.iter().map(|(a, types)| (a.to_string(), types.iter().map(|t| t.to_string()).collect())).collect();
    assert_eq!(granted, want, "changing actions and the resource types they are granted on");
}

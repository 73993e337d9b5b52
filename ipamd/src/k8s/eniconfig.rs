//! ENIConfig (`crd.k8s.amazonaws.com/v1alpha1`, cluster-scoped): the subnet and security groups of a node's pod
//! ENIs under custom networking, and the pure rules around it — which ENIConfig a node uses (aws-vpc-cni's
//! order) and whether one is well-formed. The spec is kept untyped on the wire so one malformed object shows
//! up as a reason in status instead of breaking the watch (clusters may still run aws-vpc-cni's schema-less
//! CRD).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Label that wins over every other way of naming the ENIConfig (set by external tooling).
pub const EXTERNAL_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";
/// The ENIConfig a node uses when nothing names one.
pub const DEFAULT_NAME: &str = "default";
/// At most this many security groups per ENI (EC2's limit).
pub const MAX_SECURITY_GROUPS: usize = 5;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EniConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl kube::Resource for EniConfig {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "ENIConfig".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "crd.k8s.amazonaws.com".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "eniconfigs".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A well-formed ENIConfig spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfigSpec {
    pub subnet: String,
    /// Empty: the node's primary ENI security groups (as aws-vpc-cni does).
    pub security_groups: Vec<String>,
}

/// `prefix-` followed by 8 to 17 lowercase hex digits, as EC2 ids are.
fn is_ec2_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|h| {
        (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks a spec as the CRD schema in deploy/ does.
pub fn parse_spec(spec: &serde_json::Value) -> Result<EniConfigSpec, String> {
    let subnet = match spec.get("subnet") {
        None | Some(serde_json::Value::Null) => return Err("spec.subnet is missing".into()),
        Some(serde_json::Value::String(s)) if is_ec2_id(s, "subnet-") => s.clone(),
        Some(other) => return Err(format!("spec.subnet {other} is not a subnet id (subnet-…)")),
    };
    let security_groups = match spec.get("securityGroups") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(sg) if is_ec2_id(sg, "sg-") => out.push(sg.to_string()),
                    _ => return Err(format!("spec.securityGroups: {item} is not a security group id (sg-…)")),
                }
            }
            if out.len() > MAX_SECURITY_GROUPS {
                return Err(format!("spec.securityGroups has {} entries; at most {MAX_SECURITY_GROUPS}", out.len()));
            }
            out
        }
        Some(other) => return Err(format!("spec.securityGroups {other} is not a list")),
    };
    Ok(EniConfigSpec { subnet, security_groups })
}

/// Watch conversion: name → spec or the reason it is unusable.
pub fn facts(c: &EniConfig) -> (String, Result<EniConfigSpec, String>) {
    (c.metadata.name.clone().unwrap_or_default(), parse_spec(&c.spec))
}

/// The ENIConfig a node uses and where that name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub name: String,
    /// e.g. "label topology.kubernetes.io/zone", "annotation k8s.amazonaws.com/eniConfig", "default".
    pub source: String,
}

/// aws-vpc-cni's order: label [`EXTERNAL_LABEL`], then the annotation ENI_CONFIG_ANNOTATION_DEF, then the label
/// ENI_CONFIG_LABEL_DEF, else [`DEFAULT_NAME`]. Empty values do not count.
pub fn select(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    label_def: &str,
    annotation_def: &str,
) -> Selection {
    let found = |map: &BTreeMap<String, String>, key: &str| map.get(key).filter(|v| !v.trim().is_empty()).cloned();
    if let Some(name) = found(labels, EXTERNAL_LABEL) {
        return Selection { name, source: format!("label {EXTERNAL_LABEL}") };
    }
    if let Some(name) = found(annotations, annotation_def) {
        return Selection { name, source: format!("annotation {annotation_def}") };
    }
    if let Some(name) = found(labels, label_def) {
        return Selection { name, source: format!("label {label_def}") };
    }
    Selection { name: DEFAULT_NAME.into(), source: "default (nothing on the Node names one)".into() }
}

/// The selected ENIConfig's spec, or why it cannot be used.
pub fn resolve(
    selection: &Selection,
    configs: &BTreeMap<String, Result<EniConfigSpec, String>>,
) -> Result<EniConfigSpec, String> {
    let Selection { name, source } = selection;
    match configs.get(name) {
        None => Err(format!("ENIConfig '{name}' (from {source}) does not exist")),
        Some(Err(reason)) => Err(format!("ENIConfig '{name}' (from {source}) is malformed: {reason}")),
        Some(Ok(spec)) => Ok(spec.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_DEF: &str = "topology.kubernetes.io/zone";
    const ANNOTATION_DEF: &str = "k8s.amazonaws.com/eniConfig";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selection_follows_aws_vpc_cni_order() {
        let labels = map(&[(EXTERNAL_LABEL, "ext"), (LABEL_DEF, "us-east-1a")]);
        let annotations = map(&[(ANNOTATION_DEF, "annotated")]);
        let s = select(&labels, &annotations, LABEL_DEF, ANNOTATION_DEF);
        assert_eq!((s.name.as_str(), s.source.as_str()), ("ext", "label vpc.amazonaws.com/externalEniConfig"));
        let labels = map(&[(LABEL_DEF, "us-east-1a")]);
        let s = select(&labels, &annotations, LABEL_DEF, ANNOTATION_DEF);
        assert_eq!((s.name.as_str(), s.source.as_str()), ("annotated", "annotation k8s.amazonaws.com/eniConfig"));
        let s = select(&labels, &BTreeMap::new(), LABEL_DEF, ANNOTATION_DEF);
        assert_eq!((s.name.as_str(), s.source.as_str()), ("us-east-1a", "label topology.kubernetes.io/zone"));
        let s = select(&map(&[(LABEL_DEF, " ")]), &BTreeMap::new(), LABEL_DEF, ANNOTATION_DEF);
        assert_eq!(s.name, "default", "a blank value names nothing");
    }

    #[test]
    fn specs_are_checked_like_the_crd_schema() {
        let ok = serde_json::json!({"subnet": "subnet-0123456789abcdef0", "securityGroups": ["sg-0123456789abcdef0"]});
        assert_eq!(parse_spec(&ok).unwrap().security_groups, ["sg-0123456789abcdef0"]);
        let cases = [
            (serde_json::json!({}), "spec.subnet is missing"),
            (serde_json::json!({"subnet": "sn-1"}), "not a subnet id"),
            (
                serde_json::json!({"subnet": "subnet-0123456789abcdef0", "securityGroups": ["default"]}),
                "not a security group id",
            ),
            (serde_json::json!({"subnet": "subnet-0123456789abcdef0", "securityGroups": "sg-01234567"}), "not a list"),
            (
                serde_json::json!({"subnet": "subnet-0123456789abcdef0",
                    "securityGroups": ["sg-00000001", "sg-00000002", "sg-00000003", "sg-00000004", "sg-00000005", "sg-00000006"]}),
                "at most 5",
            ),
        ];
        for (spec, want) in cases {
            let err = parse_spec(&spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn resolution_names_the_missing_or_malformed_config() {
        let sel = Selection { name: "a".into(), source: "label x".into() };
        let mut configs = BTreeMap::new();
        assert!(resolve(&sel, &configs).unwrap_err().contains("'a' (from label x) does not exist"));
        configs.insert("a".into(), Err("spec.subnet is missing".into()));
        assert!(resolve(&sel, &configs).unwrap_err().contains("malformed: spec.subnet is missing"));
        let spec = EniConfigSpec { subnet: "subnet-01234567".into(), security_groups: vec![] };
        configs.insert("a".into(), Ok(spec.clone()));
        assert_eq!(resolve(&sel, &configs), Ok(spec));
    }
}

//! aws-vpc-cni's environment variables (every one its README documents, and AWS_VPC_K8S_CNI_CONNMARK) and the
//! fate of each here, in one table: honoured with aws' meaning (a setting of [`super::Config`] under the same
//! name), refused at start when its value asks for something not built yet (the message names the variable,
//! the value and what is missing), or accepted and ignored where aws-vpc-cni itself ignores it (said in the
//! log). No aws-node variable is dropped without a word: clap would ignore any variable it does not declare.
//!
//! The check runs on the environment as a function, so tests need not touch the process's.

use super::ConfigError;

/// What ipamd does with one of aws-vpc-cni's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A setting of ipamd's under the same name, with aws-vpc-cni's meaning.
    Honoured,
    /// Refused at start when set to anything but one of `off` (matched without case; an empty value counts as
    /// unset): what it asks for is not built yet, `missing` says what.
    NotBuilt { off: &'static [&'static str], missing: &'static str },
    /// Accepted and ignored, `why` said once in the log when it is set.
    NoOp { why: &'static str },
}

/// One variable of aws-vpc-cni's and its fate here.
#[derive(Debug, Clone, Copy)]
pub struct AwsVar {
    pub name: &'static str,
    pub fate: Fate,
}

const FALSE: &[&str] = &["false", "0", "f"];
const TRUE: &[&str] = &["true", "1", "t"];

const fn honoured(name: &'static str) -> AwsVar {
    AwsVar { name, fate: Fate::Honoured }
}

const fn not_built(name: &'static str, off: &'static [&'static str], missing: &'static str) -> AwsVar {
    AwsVar { name, fate: Fate::NotBuilt { off, missing } }
}

const fn no_op(name: &'static str, why: &'static str) -> AwsVar {
    AwsVar { name, fate: Fate::NoOp { why } }
}

/// Every variable of aws-vpc-cni's, in its README's order, then those it reads without documenting them.
pub const AWS_VARIABLES: &[AwsVar] = &[
    honoured("AWS_MANAGE_ENIS_NON_SCHEDULABLE"),
    honoured("AWS_VPC_CNI_NODE_PORT_SUPPORT"),
    honoured("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG"),
    honoured("ENI_CONFIG_ANNOTATION_DEF"),
    honoured("ENI_CONFIG_LABEL_DEF"),
    honoured("HOST_CNI_BIN_PATH"),
    honoured("HOST_CNI_CONFDIR_PATH"),
    honoured("AWS_VPC_ENI_MTU"),
    honoured("AWS_VPC_K8S_CNI_EXTERNALSNAT"),
    honoured("AWS_VPC_K8S_CNI_RANDOMIZESNAT"),
    honoured("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS"),
    honoured("POD_MTU"),
    honoured("WARM_ENI_TARGET"),
    honoured("WARM_IP_TARGET"),
    honoured("MINIMUM_IP_TARGET"),
    honoured("MAX_ENI"),
    honoured("AWS_VPC_K8S_CNI_LOGLEVEL"),
    honoured("AWS_VPC_K8S_CNI_LOG_FILE"),
    honoured("AWS_VPC_K8S_PLUGIN_LOG_FILE"),
    honoured("AWS_VPC_K8S_PLUGIN_LOG_LEVEL"),
    not_built(
        "INTROSPECTION_BIND_ADDRESS",
        &[],
        "the HTTP introspection endpoint; `vpcctl` shows the same over ipamd's socket (DISABLE_INTROSPECTION \
         turns that off)",
    ),
    honoured("DISABLE_INTROSPECTION"),
    honoured("DISABLE_METRICS"),
    honoured("AWS_VPC_K8S_CNI_VETHPREFIX"),
    honoured("ADDITIONAL_ENI_TAGS"),
    no_op(
        "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER",
        "aws-vpc-cni no longer reads it either; ipamd always sets the primary interface's rp_filter to 2 (loose)",
    ),
    honoured("CLUSTER_NAME"),
    honoured("CLUSTER_ENDPOINT"),
    not_built("ENABLE_POD_ENI", FALSE, "security groups for pods (branch ENIs)"),
    no_op(
        "POD_SECURITY_GROUP_ENFORCING_MODE",
        "it only matters with ENABLE_POD_ENI=true, as in aws-vpc-cni (which ipamd refuses)",
    ),
    honoured("DISABLE_TCP_EARLY_DEMUX"),
    honoured("ENABLE_SUBNET_DISCOVERY"),
    honoured("ENABLE_PREFIX_DELEGATION"),
    honoured("WARM_PREFIX_TARGET"),
    honoured("DISABLE_NETWORK_RESOURCE_PROVISIONING"),
    honoured("ENABLE_BANDWIDTH_PLUGIN"),
    honoured("ANNOTATE_POD_IP"),
    not_built("ENABLE_IPv4", TRUE, "IPv6 pods (ipamd serves IPv4 only)"),
    not_built("ENABLE_IPv6", FALSE, "IPv6 pods"),
    no_op("ENABLE_NFTABLES", "aws-vpc-cni no longer reads it either; ipamd always programs SNAT with nftables"),
    honoured("AWS_EXTERNAL_SERVICE_CIDRS"),
    honoured("AWS_EC2_ENDPOINT"),
    honoured("DISABLE_LEAKED_ENI_CLEANUP"),
    not_built("ENABLE_V6_EGRESS", FALSE, "IPv6 egress for IPv4 pods"),
    no_op("ENABLE_V4_EGRESS", "aws-vpc-cni reads it only with ENABLE_IPv6=true (which ipamd refuses)"),
    honoured("IP_COOLDOWN_PERIOD"),
    not_built("DISABLE_POD_V6", FALSE, "turning IPv6 off inside pods (the tuning plugin's sysctls)"),
    honoured("NETWORK_POLICY_ENFORCING_MODE"),
    honoured("ENABLE_IMDS_ONLY_MODE"),
    not_built("ENABLE_MULTI_NIC", FALSE, "pods on network cards other than the first"),
    // Read by aws-vpc-cni, not in its README.
    honoured("AWS_VPC_K8S_CNI_CONNMARK"),
];

/// What the check found worth a log line (no-ops that are set).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AwsNotes(pub Vec<String>);

/// Checks the aws-vpc-cni variables `env` holds against [`AWS_VARIABLES`]: the first one set to what is not
/// built is an error naming it, its value and what is missing.
pub fn check(env: impl Fn(&str) -> Option<String>) -> Result<AwsNotes, ConfigError> {
    let mut notes = AwsNotes::default();
    for v in AWS_VARIABLES {
        let Some(value) = env(v.name).filter(|s| !s.trim().is_empty()) else { continue };
        match v.fate {
            Fate::Honoured => {}
            Fate::NoOp { why } => notes.0.push(format!("{}={value} has no effect: {why}", v.name)),
            Fate::NotBuilt { off, missing } => {
                if !off.iter().any(|o| o.eq_ignore_ascii_case(value.trim())) {
                    let accepted = match off {
                        [] => "unset".to_string(),
                        _ => format!("{}, or unset", off.join(", ")),
                    };
                    return Err(ConfigError::Unsupported {
                        var: v.name,
                        message: format!(
                            "'{value}' asks for {missing}, which vpc-cni does not do yet; accepted: {accepted}"
                        ),
                    });
                }
            }
        }
    }
    Ok(notes)
}

/// The fate of `name` as `vpcctl config` shows it, if it is one of aws-vpc-cni's.
pub fn fate_of(name: &str) -> Option<String> {
    let v = AWS_VARIABLES.iter().find(|v| v.name == name)?;
    Some(match v.fate {
        Fate::Honoured => "aws-vpc-cni's, honoured".into(),
        Fate::NotBuilt { off: [], missing } => format!("aws-vpc-cni's, refused when set: {missing} not built"),
        Fate::NotBuilt { off, missing } => {
            format!("aws-vpc-cni's, only {} accepted: {missing} not built", off.join("/"))
        }
        Fate::NoOp { why } => format!("aws-vpc-cni's, no effect: {why}"),
    })
}

#[cfg(test)]
mod tests;

//! The values settings take, each with its parser: the error names what is accepted (clap adds the variable).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::Ipv4Net;

/// SNAT source-port selection, as aws-vpc-cni's `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RandomizeSnat {
    None,
    Hashrandom,
    Prng,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// NETWORK_POLICY_ENFORCING_MODE, aws-vpc-cni's name and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// A pod is open until a policy selects it.
    #[default]
    Standard,
    /// A pod no policy selects is denied both ways; a pod is never started before its policies are known.
    Strict,
}

pub(super) fn parse_policy_mode(s: &str) -> Result<PolicyMode, String> {
    match s.trim() {
        "standard" => Ok(PolicyMode::Standard),
        "strict" => Ok(PolicyMode::Strict),
        other => Err(format!("'{other}' is not an enforcing mode; accepted: standard or strict")),
    }
}

/// Each value type shows as the text an operator would write for it (what `vpcctl config` prints).
macro_rules! serialize_as_text {
    ($t:ty, |$v:ident| $text:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $v = self;
                s.serialize_str(&$text)
            }
        }
    };
}

serialize_as_text!(CidrList, |v| v.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
serialize_as_text!(Tags, |v| serde_json::to_string(&v.0).unwrap_or_default());
serialize_as_text!(UidList, |v| v.0.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
serialize_as_text!(Mark, |v| format!("{:#x}", v.0));
serialize_as_text!(BindAddr, |v| v.0.map_or_else(|| "off".to_string(), |a| a.to_string()));

/// Parsed `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`: the CIDRs, and the entries skipped (not IPv4 CIDRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Ipv4Net>, pub Vec<String>);

/// Parsed `ADDITIONAL_ENI_TAGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(pub BTreeMap<String, String>);

/// Parsed `AWS_VPC_K8S_CNI_CONNMARK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(pub u32);

/// Parsed `IPAMD_ALLOWED_UIDS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList(pub Vec<u32>);

/// Parsed `METRICS_BIND_ADDR`: `None` is `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr(pub Option<SocketAddr>);

/// AWS_VPC_K8S_CNI_LOG_FILE: where the log goes besides stderr.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum LogFile {
    Stderr,
    Stdout,
    Path(std::path::PathBuf),
}

impl From<LogFile> for String {
    fn from(f: LogFile) -> String {
        match f {
            LogFile::Stderr => "stderr".into(),
            LogFile::Stdout => "stdout".into(),
            LogFile::Path(p) => p.display().to_string(),
        }
    }
}

pub(super) fn parse_log_file(s: &str) -> Result<LogFile, String> {
    match s.trim() {
        "" | "stderr" => Ok(LogFile::Stderr),
        "stdout" => Ok(LogFile::Stdout),
        p if p.starts_with('/') && !p.ends_with('/') => Ok(LogFile::Path(p.into())),
        _ => Err(format!("'{s}' is not accepted; accepted: stderr, stdout or an absolute file path")),
    }
}

/// Go's strconv.ParseBool spellings, which aws-vpc-cni users already write.
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("'{other}' is not a boolean; accepted: true or false")),
    }
}

/// aws-vpc-cni's rule: at most 4 characters and none of the kernel's own interface prefixes; ours also keeps
/// the name to letters and digits, as the plugin requires.
pub(super) fn parse_veth_prefix(s: &str) -> Result<String, String> {
    let p = s.trim();
    if p.is_empty()
        || p.len() > 4
        || !p.chars().all(|c| c.is_ascii_alphanumeric())
        || ["eth", "lo", "vlan"].contains(&p)
    {
        return Err(format!("'{s}' is not accepted; accepted: 1 to 4 letters or digits, not eth, lo or vlan"));
    }
    Ok(p.to_string())
}

pub(super) fn parse_plugin_log_level(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    match l.as_str() {
        "debug" | "info" | "warn" | "error" => Ok(l),
        _ => Err(format!("'{s}' is not accepted; accepted: debug, info, warn or error")),
    }
}

pub(super) fn parse_count(s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| format!("'{s}' is not a whole number; accepted: 0 or more"))
}

pub(super) fn parse_positive(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: a whole number of 1 or more")),
    }
}

pub(super) fn parse_seconds(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("'{s}' is not a number of seconds; accepted: 0 or more"))
}

pub(super) fn parse_positive_seconds(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: a whole number of seconds, 1 or more")),
    }
}

pub(super) fn parse_mtu(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (576..=9001).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: an MTU from 576 to 9001")),
    }
}

/// Bounds of EC2_API_QPS: at the low end one call per 1000 s (the token bucket's wait must be a time it can
/// sleep), at the high end far above any account's EC2 budget.
pub(super) const QPS_RANGE: std::ops::RangeInclusive<f64> = 0.001..=100_000.0;

pub(super) fn parse_qps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if QPS_RANGE.contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not accepted; accepted: requests per second from {} to {}",
            QPS_RANGE.start(),
            QPS_RANGE.end()
        )),
    }
}

pub(super) fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    let mut out = CidrList::default();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // As aws-vpc-cni: an entry that is not an IPv4 CIDR is skipped (and said at start), the rest kept.
        match p.parse::<Ipv4Net>() {
            Ok(n) => out.0.push(n.trunc()),
            Err(_) => out.1.push(p.to_string()),
        }
    }
    Ok(out)
}

/// A mark as aws-vpc-cni reads it (Go's ParseInt with base 0): decimal, `0x` hex, `0o` or leading-0 octal, `0b`.
pub(super) fn parse_mark(s: &str) -> Result<Mark, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let parsed = if let Some(h) = lower.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else if let Some(b) = lower.strip_prefix("0b") {
        u64::from_str_radix(b, 2)
    } else if let Some(o) = lower.strip_prefix("0o") {
        u64::from_str_radix(o, 8)
    } else if lower.len() > 1 && lower.starts_with('0') {
        u64::from_str_radix(&lower[1..], 8)
    } else {
        lower.parse::<u64>()
    };
    match parsed {
        Ok(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(Mark(n as u32)),
        _ => Err(format!("'{s}' is not accepted; accepted: a mark from 1 to 0xffffffff, e.g. 0x80 or 128")),
    }
}

pub(super) fn parse_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = t.strip_prefix("https://").or_else(|| t.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(t.to_string()),
        _ => Err(format!("'{s}' is not accepted; accepted: an http:// or https:// URL")),
    }
}

pub(super) fn parse_max_eni(s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| format!("'{s}' is not a whole number; accepted: 1 or more, or 0 or less for no cap"))
}

pub(super) fn parse_tags(s: &str) -> Result<Tags, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Tags::default());
    }
    let map: BTreeMap<String, String> = serde_json::from_str(s)
        .map_err(|e| format!("not a JSON object of string values ({e}); accepted: e.g. {{\"team\":\"net\"}}"))?;
    if let Some(k) = map.keys().find(|k| k.starts_with("k8s.amazonaws.com") || k.starts_with("aws:")) {
        return Err(format!("tag key '{k}' is reserved; accepted: keys not starting with aws: or k8s.amazonaws.com"));
    }
    Ok(Tags(map))
}

pub(super) fn parse_uids(s: &str) -> Result<UidList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().map_err(|_| format!("'{p}' is not a uid; accepted: a comma list of numeric uids")))
        .collect::<Result<Vec<_>, _>>()
        .map(UidList)
}

pub(super) fn parse_bind(s: &str) -> Result<BindAddr, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(BindAddr(None));
    }
    s.parse::<SocketAddr>()
        .map(|a| BindAddr(Some(a)))
        .map_err(|_| format!("'{s}' is not accepted; accepted: host:port such as 0.0.0.0:61678, or off"))
}

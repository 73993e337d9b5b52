//! The CNI protocol (spec 1.1.0, also 0.3.0–1.0.0): environment, network configuration on stdin, CNI_ARGS,
//! errors with the spec's codes, and results encoded for the version the runtime asked for.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/vpc-cni/ipamd.sock";
pub const DEFAULT_LOG_FILE: &str = "/var/log/vpc-cni/plugin.log";

/// Spec error codes (1–99) and ours (≥ 100, documented in docs/troubleshooting.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// ipamd answered with an error that retrying will not fix.
    Ipamd = 100,
    /// A netlink step of the datapath failed (everything done before it was undone).
    Datapath = 101,
    /// CHECK found the pod's networking not as ADD left it.
    CheckFailed = 102,
    /// ADD: the host veth name is another pod's (the two names hash the same); it was left alone.
    VethTaken = 103,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({ "cniVersion": cni_version, "code": self.code as u32, "msg": self.msg, "details": self.details })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The CNI_* environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

pub fn command(get: &impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        other => Err(CniError::new(
            Code::InvalidEnv,
            "invalid CNI_COMMAND",
            format!("got {other:?}; accepted: ADD, DEL, CHECK, VERSION, STATUS, GC"),
        )),
    }
}

/// Reads the per-attachment variables ADD, DEL and CHECK need (DEL tolerates a missing netns).
pub fn env(cmd: Command, get: &impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let need = |k: &str| {
        get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CniError::new(Code::InvalidEnv, format!("{k} is required"), "missing"))
    };
    let container_id = need("CNI_CONTAINERID")?;
    let ifname = need("CNI_IFNAME")?;
    if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
        return Err(CniError::new(
            Code::InvalidEnv,
            "invalid CNI_IFNAME",
            format!("'{ifname}' is not a Linux interface name"),
        ));
    }
    let netns = match cmd {
        Command::Add | Command::Check => Some(PathBuf::from(need("CNI_NETNS")?)),
        _ => get("CNI_NETNS").filter(|v| !v.is_empty()).map(PathBuf::from),
    };
    let args = parse_args(get("CNI_ARGS").as_deref().unwrap_or(""))?;
    Ok(Env { container_id, netns, ifname, args })
}

/// `K=V;K=V` as the runtime passes CNI_ARGS (IgnoreUnknown is accepted and everything unknown ignored).
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "invalid CNI_ARGS", format!("'{part}' is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The plugin's network configuration (one plugin entry of a conflist, with name/cniVersion/prevResult).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(default)]
    pub ipamd_socket: Option<PathBuf>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub veth_prefix: Option<String>,
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Decodes stdin (code 6) and checks the values (code 7) and the version (code 1).
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, "cannot decode the network configuration", e.to_string()))?;
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("unsupported cniVersion {}", conf.cni_version),
                format!("supported: {}", SUPPORTED.join(", ")),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "network name is empty", "set \"name\""));
        }
        if let Some(m) = conf.mtu.filter(|m| !(576..=9001).contains(m)) {
            return Err(CniError::new(Code::InvalidConfig, "invalid mtu", format!("{m}; accepted: 576 to 9001")));
        }
        if let Some(p) = conf
            .veth_prefix
            .as_deref()
            .filter(|p| p.is_empty() || p.len() > 4 || !p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(CniError::new(
                Code::InvalidConfig,
                "invalid vethPrefix",
                format!("'{p}'; accepted: 1 to 4 letters or digits"),
            ));
        }
        Ok(conf)
    }

    pub fn socket(&self) -> PathBuf {
        self.ipamd_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    pub fn veth_prefix(&self) -> &str {
        self.veth_prefix.as_deref().unwrap_or("eni")
    }

    /// Whether this configuration's version has `cmd` (CHECK from 0.4.0, STATUS and GC from 1.1.0).
    pub fn supports(&self, cmd: Command) -> bool {
        let v = self.cni_version.as_str();
        match cmd {
            Command::Check => !v.starts_with("0.3"),
            Command::Status | Command::Gc => v == "1.1.0",
            _ => true,
        }
    }

    /// The pod IP a previous ADD reported (for DEL when ipamd cannot be asked).
    pub fn prev_pod_ip(&self) -> Option<Ipv4Addr> {
        let ips = self.prev_result.as_ref()?.get("ips")?.as_array()?;
        ips.iter().find_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
    }
}

/// An ADD result: the host veth, the pod interface, the pod's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    pub host_veth: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl AddResult {
    /// Encodes the result in `version`'s format (0.3.x/0.4.0 carry `"version": "4"` per IP); a chained
    /// previous result's interfaces and IPs come first, as the spec asks.
    pub fn to_json(&self, version: &str, prev: Option<&Value>) -> Value {
        let mut interfaces: Vec<Value> =
            prev.and_then(|p| p.get("interfaces")?.as_array().cloned()).unwrap_or_default();
        let mut ips: Vec<Value> = prev.and_then(|p| p.get("ips")?.as_array().cloned()).unwrap_or_default();
        let base = interfaces.len();
        interfaces.push(json!({ "name": self.host_veth, "mac": self.host_mac }));
        interfaces.push(json!({ "name": self.pod_ifname, "mac": self.pod_mac, "sandbox": self.netns }));
        let mut ip = json!({ "address": format!("{}/32", self.ip), "interface": base + 1 });
        if version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        ips.push(ip);
        let routes = prev.and_then(|p| p.get("routes").cloned()).unwrap_or_else(|| json!([{ "dst": "0.0.0.0/0" }]));
        json!({ "cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": prev.and_then(|p| p.get("dns").cloned()).unwrap_or(json!({})) })
    }
}

pub use datapath::podnet::host_veth_name;

#[cfg(test)]
mod tests;

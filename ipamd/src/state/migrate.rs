//! Migration from aws-node: at ipamd's first start on a node that ran aws-vpc-cni (no `ipam.json` of ours yet),
//! aws-node's checkpoint (`/var/run/aws-node/ipam.json`) is imported so the pods already running keep their IPs
//! and none of them is handed out again. It runs while our checkpoint's marker says the import is pending
//! ([`crate::state::checkpoint::AwsNodeImport`]), that is when there is no `ipam.json`, and the first save marks
//! it done.
//!
//! aws-vpc-cni has written one version string, `vpc-cni-ipam/1`, in two layouts: v1.7–v1.10 entries carry only
//! `networkName`, `containerID`, `ifName` and `ipv4`/`ipv6`; from v1.11 they add `allocationTimestamp` (unix
//! nanoseconds) and `metadata` (`k8sPodNamespace`, `k8sPodName`, from v1.20 `interfacesCount`). The layout is
//! told by the fields present. Entries aws-vpc-cni migrated from its older CRI scan carry the placeholder key
//! `_migrated-from-cri` / `unknown`: they are keyed as the plugin will ask for them (`aws-cni`, `eth0`).
//!
//! What is imported is checked, and an entry that fails is skipped with why (in [`Imported::skipped`], logged):
//! - an IPv4 address (IPv6-only entries are skipped: this ipamd is IPv4) and a container id;
//! - the bounds ipamd keeps for what the plugin sends (see [`crate::state::datastore::MAX_CONTAINER_ID`] and
//!   the others beside it);
//! - the address is one of the node's ENIs' as IMDS lists them ([`NodeAddresses`]): aws-vpc-cni itself drops an
//!   entry whose IP is on none of the node's ENIs ("presuming stale/dead");
//! - no IP and no key twice: a later entry with an IP or a key already imported is skipped (aws-vpc-cni refuses
//!   to start on the first).
//!
//! aws-node's file is left as it is, for a rollback.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::cloud::imds::MacInfo;
use crate::state::datastore::{AllocKey, Allocation, MAX_POD_NAME, too_long};
use crate::state::file::{FileError, FileProblem};

pub const AWS_NODE_VERSION: &str = "vpc-cni-ipam/1";
const CRI_NETWORK: &str = "_migrated-from-cri";

/// Why aws-node's checkpoint could not be imported.
pub type MigrateError = FileError;

const WHAT: &str = "aws-node checkpoint";

#[derive(Debug, Deserialize)]
struct AwsFile {
    version: String,
    #[serde(default)]
    allocations: Option<Vec<AwsEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AwsEntry {
    #[serde(default)]
    network_name: String,
    #[serde(rename = "containerID", default)]
    container_id: String,
    #[serde(default)]
    if_name: String,
    #[serde(default)]
    ipv4: String,
    #[serde(default)]
    allocation_timestamp: i64,
    #[serde(default)]
    metadata: AwsMetadata,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AwsMetadata {
    #[serde(default)]
    k8s_pod_namespace: String,
    #[serde(default)]
    k8s_pod_name: String,
}

/// What an import found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub allocations: BTreeMap<AllocKey, Allocation>,
    /// Entries left out, with why.
    pub skipped: Vec<String>,
}

/// Where a pod IP of this node can be: an address of one of its ENIs as IMDS lists them (`local-ipv4s`), or one
/// inside their /28 prefixes (`ipv4-prefix`); never the node's own primary IP (hostNetwork pods use it, no pod
/// is given it). IMDS can lag EC2 by a moment: an IP assigned just before the switch may be missing, and its
/// entry skipped; its pod's host route still keeps the IP from other pods (see the daemon's restore).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    ips: BTreeSet<Ipv4Addr>,
    prefixes: Vec<Ipv4Net>,
}

impl NodeAddresses {
    /// From IMDS's interfaces (`cloud::imds::interfaces`) and the node's primary IP.
    pub fn new<'a>(interfaces: impl IntoIterator<Item = &'a MacInfo>, node_ip: Ipv4Addr) -> Self {
        let mut out = Self::default();
        for i in interfaces {
            out.ips.extend(i.ips.iter().filter(|ip| **ip != node_ip));
            out.prefixes.extend(&i.prefixes);
        }
        out
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ips.contains(&ip) || self.prefixes.iter().any(|p| p.contains(&ip))
    }
}

/// At most this much of a value goes into a log line.
fn shown(v: &str) -> &str {
    let end = (0..=v.len().min(80)).rev().find(|i| v.is_char_boundary(*i)).unwrap_or(0);
    &v[..end]
}

/// Parses aws-node's checkpoint bytes, keeping the entries that pass the checks (see the module's doc);
/// `now_unix` stands in for a missing allocation time.
pub fn parse(path: &Path, bytes: &[u8], now_unix: i64, node: &NodeAddresses) -> Result<Imported, MigrateError> {
    let file: AwsFile = serde_json::from_slice(bytes).map_err(|source| {
        FileError::new(WHAT, path, FileProblem::Decode { format: "aws-vpc-cni's ipam.json", source })
    })?;
    if file.version != AWS_NODE_VERSION {
        return Err(FileError::new(
            WHAT,
            path,
            FileProblem::Version { found: file.version, supported: AWS_NODE_VERSION },
        ));
    }
    let mut out = Imported::default();
    let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for e in file.allocations.unwrap_or_default() {
        let id = shown(&e.container_id).to_string();
        let Ok(ip) = e.ipv4.parse::<Ipv4Addr>() else {
            out.skipped.push(format!("{id}: no IPv4 address"));
            continue;
        };
        if e.container_id.is_empty() {
            out.skipped.push(format!("{ip}: no container id"));
            continue;
        }
        let cri = e.network_name == CRI_NETWORK;
        let key = AllocKey {
            network_name: if cri || e.network_name.is_empty() { "aws-cni".into() } else { e.network_name },
            container_id: e.container_id,
            if_name: if cri || e.if_name.is_empty() { "eth0".into() } else { e.if_name },
        };
        let (ns, name) = (e.metadata.k8s_pod_namespace, e.metadata.k8s_pod_name);
        let long = key
            .too_long()
            .or_else(|| too_long(&[("k8sPodNamespace", &ns, MAX_POD_NAME), ("k8sPodName", &name, MAX_POD_NAME)]));
        if let Some(why) = long {
            out.skipped.push(format!("{ip} for {id}: {why}"));
            continue;
        }
        if !node.contains(ip) {
            out.skipped.push(format!("{ip} for {id}: on none of the node's ENIs (IMDS)"));
            continue;
        }
        if let Some(other) = seen.get(&ip) {
            out.skipped.push(format!("{ip} for {id}: already imported for {}", shown(other)));
            continue;
        }
        if out.allocations.contains_key(&key) {
            out.skipped
                .push(format!("{ip} for {id}: its key ({}, {}) is already imported", key.network_name, key.if_name));
            continue;
        }
        seen.insert(ip, key.container_id.clone());
        let allocated_unix = if e.allocation_timestamp > 0 { e.allocation_timestamp / 1_000_000_000 } else { now_unix };
        out.allocations.insert(
            key,
            Allocation {
                ip,
                eni_id: String::new(),
                pod_namespace: ns,
                pod_name: name,
                pod_uid: String::new(),
                allocated_unix,
            },
        );
    }
    Ok(out)
}

/// aws-node's checkpoint at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, MigrateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::new(WHAT, path, FileProblem::Io(source))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/aws-node").join(name)).unwrap()
    }

    /// A node whose one ENI holds `ips` (and the node's own 10.0.1.4) and `prefixes`.
    fn node(ips: &[&str], prefixes: &[&str]) -> NodeAddresses {
        let eni = MacInfo {
            mac: "02:00:00:00:00:01".into(),
            eni_id: "eni-1".into(),
            device_number: 0,
            ips: ips.iter().chain(&["10.0.1.4"]).map(|i| i.parse().unwrap()).collect(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        };
        NodeAddresses::new([&eni], "10.0.1.4".parse().unwrap())
    }

    #[test]
    fn both_layouts_import_with_keys_the_plugin_will_send() {
        let node = node(&["10.0.41.17", "10.0.37.203", "10.0.52.9"], &[]);
        for (name, with_pods) in [("ipam-v1.json", false), ("ipam-v2.json", true)] {
            let got = parse(Path::new(name), &fixture(name), 42, &node).unwrap();
            assert_eq!(got.allocations.len(), 3, "{name}");
            assert!(got.skipped.is_empty(), "{name}: {:?}", got.skipped);
            for (k, a) in &got.allocations {
                assert_eq!(
                    (k.network_name.as_str(), k.if_name.as_str(), k.container_id.len()),
                    ("aws-cni", "eth0", 64)
                );
                assert_eq!(!a.pod_name.is_empty(), with_pods, "{name}: {a:?}");
                assert_eq!(a.allocated_unix == 42, !with_pods, "{name}: {a:?}");
            }
            let ips: Vec<String> = got.allocations.values().map(|a| a.ip.to_string()).collect();
            for ip in ["10.0.41.17", "10.0.37.203", "10.0.52.9"] {
                assert!(ips.contains(&ip.to_string()), "{name}: {ips:?}");
            }
        }
    }

    #[test]
    fn odd_entries_are_normalised_or_skipped_and_bad_files_refused() {
        let node = node(&["10.0.0.5"], &[]);
        let text = br#"{"version":"vpc-cni-ipam/1","allocations":[
            {"networkName":"_migrated-from-cri","containerID":"c1","ifName":"unknown","ipv4":"10.0.0.5"},
            {"networkName":"aws-cni","containerID":"c2","ifName":"eth0","ipv6":"2600::5"},
            {"networkName":"aws-cni","containerID":"c3","ifName":"eth0","ipv4":"10.0.0.5"}]}"#;
        let got = parse(Path::new("x"), text, 0, &node).unwrap();
        let k = got.allocations.keys().next().unwrap();
        assert_eq!((k.network_name.as_str(), k.container_id.as_str(), k.if_name.as_str()), ("aws-cni", "c1", "eth0"));
        assert_eq!(got.allocations.len(), 1);
        assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
        let err = parse(Path::new("x"), br#"{"version":"vpc-cni-ipam/9","allocations":[]}"#, 0, &node).unwrap_err();
        assert!(err.to_string().contains("vpc-cni-ipam/9"), "{err}");
        assert!(parse(Path::new("x"), b"{not json", 0, &node).unwrap_err().damaged());
        let empty = parse(Path::new("x"), br#"{"version":"vpc-cni-ipam/1","allocations":null}"#, 0, &node).unwrap();
        assert!(empty.allocations.is_empty());
        assert!(read(Path::new("/nonexistent/ipam.json")).unwrap().is_none());
    }

    /// Only what could be a pod of this node, in the bounds ipamd keeps, once per IP and per key, is imported;
    /// everything else is skipped and named.
    #[test]
    fn only_entries_on_the_node_within_bounds_and_once_are_imported() {
        let node = node(&["10.0.1.10", "10.0.1.11", "10.0.1.12"], &["10.0.2.16/28"]);
        let entry = |id: &str, ip: &str, ifname: &str, net: &str, ns: &str, pod: &str| {
            format!(
                r#"{{"networkName":"{net}","containerID":"{id}","ifName":"{ifname}","ipv4":"{ip}",
                "metadata":{{"k8sPodNamespace":"{ns}","k8sPodName":"{pod}"}}}}"#
            )
        };
        let long = |n: usize| "x".repeat(n);
        let entries = [
            entry("c1", "10.0.1.10", "eth0", "aws-cni", "default", "web"),
            entry("c2", "10.0.2.20", "eth0", "aws-cni", "default", "in-a-prefix"),
            entry("c3", "10.9.9.9", "eth0", "aws-cni", "default", "elsewhere"),
            entry("c4", "10.0.1.4", "eth0", "aws-cni", "default", "the-node-ip"),
            entry(&long(257), "10.0.1.11", "eth0", "aws-cni", "default", "long-id"),
            entry("c6", "10.0.1.11", "eth0123456789abc", "aws-cni", "default", "long-ifname"),
            entry("c7", "10.0.1.11", "eth0", &long(257), "default", "long-network"),
            entry("c8", "10.0.1.11", "eth0", "aws-cni", &long(254), "long-namespace"),
            entry("c9", "10.0.1.11", "eth0", "aws-cni", "default", &long(254)),
            entry("c1", "10.0.1.12", "eth0", "aws-cni", "default", "same-key"),
            entry("c10", "10.0.1.10", "eth0", "aws-cni", "default", "same-ip"),
        ];
        let text = format!(r#"{{"version":"vpc-cni-ipam/1","allocations":[{}]}}"#, entries.join(","));
        let got = parse(Path::new("x"), text.as_bytes(), 0, &node).unwrap();
        let imported: Vec<(&str, String)> =
            got.allocations.iter().map(|(k, a)| (k.container_id.as_str(), a.ip.to_string())).collect();
        assert_eq!(imported, [("c1", "10.0.1.10".to_string()), ("c2", "10.0.2.20".to_string())]);
        let why = [
            "10.9.9.9 for c3: on none of the node's ENIs",
            "10.0.1.4 for c4: on none of the node's ENIs",
            "container_id is 257 bytes; at most 256",
            "10.0.1.11 for c6: if_name is 16 bytes; at most 15",
            "10.0.1.11 for c7: network_name is 257 bytes; at most 256",
            "10.0.1.11 for c8: k8sPodNamespace is 254 bytes; at most 253",
            "10.0.1.11 for c9: k8sPodName is 254 bytes; at most 253",
            "10.0.1.12 for c1: its key (aws-cni, eth0) is already imported",
            "10.0.1.10 for c10: already imported for c1",
        ];
        assert_eq!(got.skipped.len(), why.len(), "{:#?}", got.skipped);
        for (said, want) in got.skipped.iter().zip(why) {
            assert!(said.contains(want), "{said:?} should say {want:?}");
            assert!(said.len() < 200, "a skipped entry is named briefly: {said}");
        }
    }
}

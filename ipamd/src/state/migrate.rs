//! Migration from aws-node: at ipamd's first start on a node that ran aws-vpc-cni (no `ipam.json` of ours yet),
//! aws-node's checkpoint (`/var/run/aws-node/ipam.json`) is imported so the pods already running keep their IPs
//! and none of them is handed out again.
//!
//! aws-vpc-cni has written one version string, `vpc-cni-ipam/1`, in two layouts: v1.7–v1.10 entries carry only
//! `networkName`, `containerID`, `ifName` and `ipv4`/`ipv6`; from v1.11 they add `allocationTimestamp` (unix
//! nanoseconds) and `metadata` (`k8sPodNamespace`, `k8sPodName`, from v1.20 `interfacesCount`). The layout is
//! told by the fields present. Entries aws-vpc-cni migrated from its older CRI scan carry the placeholder key
//! `_migrated-from-cri` / `unknown`: they are keyed as the plugin will ask for them (`aws-cni`, `eth0`). IPv6-only
//! entries are skipped (this ipamd is IPv4); a second entry with an IP already imported is skipped with a
//! warning (aws-vpc-cni refuses to start on one). aws-node's file is left as it is, for a rollback.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use crate::state::datastore::{AllocKey, Allocation};
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

/// Parses aws-node's checkpoint bytes; `now_unix` stands in for a missing allocation time.
pub fn parse(path: &Path, bytes: &[u8], now_unix: i64) -> Result<Imported, MigrateError> {
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
        let Ok(ip) = e.ipv4.parse::<Ipv4Addr>() else {
            out.skipped.push(format!("{}: no IPv4 address", e.container_id));
            continue;
        };
        if e.container_id.is_empty() {
            out.skipped.push(format!("{ip}: no container id"));
            continue;
        }
        if let Some(other) = seen.get(&ip) {
            out.skipped.push(format!("{} for {}: already imported for {other}", ip, e.container_id));
            continue;
        }
        seen.insert(ip, e.container_id.clone());
        let cri = e.network_name == CRI_NETWORK;
        let key = AllocKey {
            network_name: if cri || e.network_name.is_empty() { "aws-cni".into() } else { e.network_name },
            container_id: e.container_id,
            if_name: if cri || e.if_name.is_empty() { "eth0".into() } else { e.if_name },
        };
        let allocated_unix = if e.allocation_timestamp > 0 { e.allocation_timestamp / 1_000_000_000 } else { now_unix };
        out.allocations.insert(
            key,
            Allocation {
                ip,
                eni_id: String::new(),
                pod_namespace: e.metadata.k8s_pod_namespace,
                pod_name: e.metadata.k8s_pod_name,
                pod_uid: String::new(),
                allocated_unix,
            },
        );
    }
    Ok(out)
}

/// Reads aws-node's checkpoint at `path`; `None` when there is none.
pub fn import(path: &Path, now_unix: i64) -> Result<Option<Imported>, MigrateError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes, now_unix).map(Some),
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

    #[test]
    fn both_layouts_import_with_keys_the_plugin_will_send() {
        for (name, with_pods) in [("ipam-v1.json", false), ("ipam-v2.json", true)] {
            let got = parse(Path::new(name), &fixture(name), 42).unwrap();
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
        let text = br#"{"version":"vpc-cni-ipam/1","allocations":[
            {"networkName":"_migrated-from-cri","containerID":"c1","ifName":"unknown","ipv4":"10.0.0.5"},
            {"networkName":"aws-cni","containerID":"c2","ifName":"eth0","ipv6":"2600::5"},
            {"networkName":"aws-cni","containerID":"c3","ifName":"eth0","ipv4":"10.0.0.5"}]}"#;
        let got = parse(Path::new("x"), text, 0).unwrap();
        let k = got.allocations.keys().next().unwrap();
        assert_eq!((k.network_name.as_str(), k.container_id.as_str(), k.if_name.as_str()), ("aws-cni", "c1", "eth0"));
        assert_eq!(got.allocations.len(), 1);
        assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
        let err = parse(Path::new("x"), br#"{"version":"vpc-cni-ipam/9","allocations":[]}"#, 0).unwrap_err();
        assert!(err.to_string().contains("vpc-cni-ipam/9"), "{err}");
        assert!(parse(Path::new("x"), b"{not json", 0).unwrap_err().damaged());
        let empty = parse(Path::new("x"), br#"{"version":"vpc-cni-ipam/1","allocations":null}"#, 0).unwrap();
        assert!(empty.allocations.is_empty());
        assert!(import(Path::new("/nonexistent/ipam.json"), 0).unwrap().is_none());
    }
}

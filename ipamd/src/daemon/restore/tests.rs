//! Restore on the host's pods as data and the IMDS fake: a lost checkpoint, a first start after aws-node, the
//! same after our file was lost, a damaged file, a node without host networking.

use std::collections::BTreeMap;

use super::*;
use crate::cloud::imds::fake::{FakeImds, node};

const MAC: &str = "02:aa:bb:cc:dd:00";

/// The fake node (primary IP 10.0.1.4) whose one ENI also holds `ips`, and its NodeInfo.
async fn imds(ips: &[&str]) -> (FakeImds, NodeInfo) {
    let mut md = node();
    let all: Vec<&str> = ["10.0.1.4"].iter().chain(ips).copied().collect();
    md.0.insert(format!("network/interfaces/macs/{MAC}/local-ipv4s"), all.join("\n"));
    let info = NodeInfo::load(&md).await.unwrap();
    (md, info)
}

fn veth(ns: &str, name: &str) -> String {
    datapath::podnet::host_veth_name("eni", ns, name)
}

/// A pod route to the veth of `ns/name`; `ours`: the veth carries the owner vpc-cni's plugin records.
fn routed(ip: &str, ns: &str, name: &str, ours: bool) -> HostPod {
    let owner = ours.then(|| VethOwner { pod: format!("{ns}/{name}"), uid: "u-new".into(), sandbox: "s-new".into() });
    HostPod { ip: ip.parse().unwrap(), veth: veth(ns, name), owner }
}

/// aws-node's checkpoint (v1.11+ layout) with entries (container id, ip, namespace, pod).
fn aws_file(dir: &std::path::Path, entries: &[(&str, &str, &str, &str)]) -> PathBuf {
    let list: Vec<String> = entries
        .iter()
        .map(|(id, ip, ns, name)| {
            format!(
                r#"{{"networkName":"aws-cni","containerID":"{id}","ifName":"eth0","ipv4":"{ip}",
                "allocationTimestamp":1741940133871265092,
                "metadata":{{"k8sPodNamespace":"{ns}","k8sPodName":"{name}"}}}}"#
            )
        })
        .collect();
    let path = dir.join("aws-node-ipam.json");
    std::fs::write(&path, format!(r#"{{"version":"vpc-cni-ipam/1","allocations":[{}]}}"#, list.join(","))).unwrap();
    path
}

/// Who holds each IP: the container id for an imported pod, `recovered` for one rebuilt from its route.
fn holders(cp: &Checkpoint) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, a) in &cp.allocations {
        let who = if k.network_name == RECOVERED_NETWORK { "recovered".into() } else { k.container_id.clone() };
        assert!(out.insert(a.ip.to_string(), who).is_none(), "{} held twice", a.ip);
    }
    out
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// No `ipam.json` while the host routes pods: their IPs are held (rebuilt from the routes, reported as a
/// rebuild), never an empty pool that hands them to new pods. A node with no pods starts empty, unreported.
#[tokio::test]
async fn a_missing_checkpoint_while_the_host_routes_pods_is_rebuilt_from_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let (_, none) = settle::<FakeImds>(&store, Loaded::Missing, Some(&[]), "eni", None).await.unwrap();
    assert_eq!(none, None, "a node without pods: a plain first start");

    std::fs::remove_file(store.path()).unwrap();
    let host = [routed("10.0.1.10", "default", "web", true), routed("10.0.1.11", "default", "db", false)];
    let (cp, why) = settle::<FakeImds>(&store, Loaded::Missing, Some(&host), "eni", None).await.unwrap();
    assert_eq!(holders(&cp), map(&[("10.0.1.10", "recovered"), ("10.0.1.11", "recovered")]));
    let why = why.expect("reported like a damaged checkpoint");
    assert!(why.contains("no checkpoint at") && why.contains("2 pods"), "{why}");
    let saved = store.read().unwrap().expect("saved at once");
    assert_eq!((saved.allocations, saved.aws_node_import), (cp.allocations, AwsNodeImport::Done));
}

/// The first start after aws-node: its entries win for the IPs they name (the keys the plugin will send),
/// routes it does not name are held as recovered (one IMDS does not list yet among them), no IP twice. A
/// second start reads our checkpoint and imports nothing again.
#[tokio::test]
async fn a_first_start_after_aws_node_imports_its_pods_once_and_holds_the_other_routes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let aws = aws_file(
        dir.path(),
        &[
            ("c-web0", "10.0.1.10", "default", "web-0"),
            ("c-web1", "10.0.1.11", "default", "web-1"),
            ("c-dns", "10.0.1.12", "kube-system", "coredns"),
            ("c-lag", "10.0.1.13", "default", "lagging"),
        ],
    );
    let host = [
        routed("10.0.1.10", "default", "web-0", false),
        routed("10.0.1.11", "default", "web-1", false),
        routed("10.0.1.12", "kube-system", "coredns", false),
        routed("10.0.1.13", "default", "lagging", false),
        routed("10.0.1.14", "default", "unnamed", false),
    ];
    // 10.0.1.13 was assigned a moment ago: IMDS does not list it yet.
    let (md, info) = imds(&["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.14"]).await;
    let src = AwsNode { path: aws.clone(), imds: &md, node: &info };
    let (cp, why) = settle(&store, Loaded::Missing, Some(&host), "eni", Some(src)).await.unwrap();
    let want = [
        ("10.0.1.10", "c-web0"),
        ("10.0.1.11", "c-web1"),
        ("10.0.1.12", "c-dns"),
        ("10.0.1.13", "recovered"),
        ("10.0.1.14", "recovered"),
    ];
    assert_eq!(holders(&cp), map(&want));
    let web0 = cp.allocations.values().find(|a| a.ip.to_string() == "10.0.1.10").unwrap();
    assert_eq!((web0.pod_namespace.as_str(), web0.pod_name.as_str()), ("default", "web-0"));
    assert!(why.is_some_and(|w| w.contains("2 pods")));

    // web-0's DEL came and was saved; then ipamd restarts, aws-node's file still there.
    let mut saved = store.read().unwrap().unwrap();
    saved.allocations.retain(|k, _| k.container_id != "c-web0");
    store.save(&saved).unwrap();
    let src = AwsNode { path: aws, imds: &md, node: &info };
    let (again, why) = settle(&store, Loaded::read(&store).unwrap(), Some(&host), "eni", Some(src)).await.unwrap();
    assert_eq!((again.allocations, why), (saved.allocations, None), "imported once");
}

/// Our `ipam.json` was lost on a node where ipamd has run for a while, aws-node's old file still there. The
/// routes are the truth: only an entry whose pod aws-node wired and still runs is imported; an IP a pod of
/// ours holds now, or one routed to another pod's veth, is held as recovered; an entry whose pod is gone
/// holds nothing.
#[tokio::test]
async fn a_lost_checkpoint_imports_only_what_the_host_confirms_of_aws_nodes_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let aws = aws_file(
        dir.path(),
        &[
            ("c-old-web0", "10.0.1.10", "default", "web-0"),
            ("c-gone", "10.0.1.11", "default", "gone"),
            ("c-web1", "10.0.1.12", "default", "web-1"),
            ("c-old-db", "10.0.1.13", "default", "db"),
        ],
    );
    let host = [
        // web-0 was recreated since, and our plugin wired its new sandbox on the same IP.
        routed("10.0.1.10", "default", "web-0", true),
        // web-1 has run since aws-node's days.
        routed("10.0.1.12", "default", "web-1", false),
        // db's IP went to another pod, wired by a vpc-cni that did not record owners yet.
        routed("10.0.1.13", "default", "cache", false),
    ];
    let (md, info) = imds(&["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"]).await;
    let src = AwsNode { path: aws, imds: &md, node: &info };
    let (cp, why) = settle(&store, Loaded::Missing, Some(&host), "eni", Some(src)).await.unwrap();
    let want = [("10.0.1.10", "recovered"), ("10.0.1.12", "c-web1"), ("10.0.1.13", "recovered")];
    assert_eq!(holders(&cp), map(&want));
    assert!(why.is_some());
}

/// A damaged checkpoint was ours: the node had its first start, so aws-node's file is not imported again;
/// the routes are held.
#[tokio::test]
async fn a_damaged_checkpoint_is_rebuilt_from_the_routes_without_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    std::fs::write(store.path(), b"{torn").unwrap();
    let aws = aws_file(dir.path(), &[("c-web0", "10.0.1.10", "default", "web-0")]);
    let host = [routed("10.0.1.10", "default", "web-0", false)];
    let (md, info) = imds(&["10.0.1.10"]).await;
    let src = AwsNode { path: aws, imds: &md, node: &info };
    let (cp, why) = settle(&store, Loaded::read(&store).unwrap(), Some(&host), "eni", Some(src)).await.unwrap();
    assert_eq!(holders(&cp), map(&[("10.0.1.10", "recovered")]));
    assert!(why.is_some_and(|w| w.contains("moved aside")));
    assert_eq!(store.read().unwrap().unwrap().aws_node_import, AwsNodeImport::Done);
}

/// Without host networking there are no routes to ask: aws-node's entries are imported as they pass the
/// checks (an IP on none of the node's ENIs is not).
#[tokio::test]
async fn without_host_networking_aws_nodes_file_is_taken_as_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let aws =
        aws_file(dir.path(), &[("c-web0", "10.0.1.10", "default", "web-0"), ("c-far", "10.9.0.1", "default", "far")]);
    let (md, info) = imds(&["10.0.1.10"]).await;
    let src = AwsNode { path: aws, imds: &md, node: &info };
    let (cp, why) = settle(&store, Loaded::Missing, None, "eni", Some(src)).await.unwrap();
    assert_eq!((holders(&cp), why), (map(&[("10.0.1.10", "c-web0")]), None));
}

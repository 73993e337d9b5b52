//! Prefix mode (ENABLE_PREFIX_DELEGATION) against LocalStack through the fault proxy: LocalStack ignores
//! prefix requests, so the proxy delegates /28s itself (`vpc_sim::ec2prefix`, faithful to EC2's answers) and
//! plays a fragmented subnet (InsufficientCidrBlocks) on demand. LocalStack must be running (`make test`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use vpc_sim::fixture::{NodeFixture, add_retrying, del, eventually, free_port, http_get, metric, try_status};

const SERVING: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(45);

fn prefixes_of(node_enis: &[vpc_sim::localstack::NodeEni]) -> Vec<Ipv4Net> {
    node_enis.iter().flat_map(|e| e.prefixes.iter().map(|p| p.parse().unwrap())).collect()
}

/// IPs come from /28s (never a /32 secondary IP), a second prefix is warmed as the first fills, and once the
/// pods are gone the prefixes beyond WARM_PREFIX_TARGET go back to EC2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_from_prefixes_and_empty_prefixes_go_back() {
    let node = NodeFixture::behind_proxy("prefix", "m5.large").await;
    let proxy = node.proxy.as_ref().unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("IP_COOLDOWN_PERIOD", "1"),
        ("METRICS_BIND_ADDR", &metrics),
    ]);
    ipamd.wait_serving(SERVING).await.unwrap();
    let enis = node.enis().await;
    assert_eq!(prefixes_of(&enis).len(), 1, "WARM_PREFIX_TARGET defaults to 1: {enis:?}");
    assert!(enis[0].secondary_ips.is_empty(), "no /32 secondary IPs in prefix mode");

    let mut ips = BTreeSet::new();
    for i in 0..20 {
        let r = add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("pod {i}: {s:?}"));
        ips.insert(r.ipv4_addr.parse::<Ipv4Addr>().unwrap());
    }
    assert_eq!(ips.len(), 20, "distinct addresses");
    // 20 pods fill one /28 and part of a second; a third stays whole and free.
    let prefixes = eventually(SETTLE, "3 prefixes on the primary ENI", || async {
        let p = prefixes_of(&node.enis().await);
        (p.len() == 3).then_some(p)
    })
    .await;
    for ip in &ips {
        assert!(prefixes.iter().any(|p| p.contains(ip)), "{ip} is inside a delegated prefix {prefixes:?}");
    }
    assert!(prefixes.iter().all(|p| p.prefix_len() == 28 && p.network() == p.trunc().network()));
    // The pool learns of the third prefix at its next observe, a moment after EC2 shows it.
    let status = eventually(SETTLE, "3 prefixes in ipamd's status", || async {
        try_status(&ipamd).await.filter(|s| s.prefixes == 3)
    })
    .await;
    assert!(status.prefix_delegation);
    assert_eq!((status.prefixes, status.assigned_ips, status.max_pods), (3, 20, 110), "{status:?}");

    for i in 0..20 {
        del(&ipamd, &format!("c{i}")).await.unwrap();
    }
    let left = eventually(SETTLE, "back to one prefix after the cooldown", || async {
        let p = prefixes_of(&node.enis().await);
        (p.len() == 1).then_some(p)
    })
    .await;
    assert!(proxy.calls("UnassignPrivateIpAddresses") >= 1);
    let m = eventually(SETTLE, "ipamd to count one prefix", || async {
        let m = http_get(port, "/metrics").await.ok()?;
        (metric(&m, "ipamd_prefixes") == Some(1.0)).then_some(m)
    })
    .await;
    assert_eq!(metric(&m, "ipamd_prefix_fallback_enis"), Some(0.0), "{m}");
    eprintln!("kept {left:?}; EC2 calls at the proxy: {}", proxy.total_calls());
    ipamd.terminate().await;
    node.cleanup().await;
}

/// A fragmented subnet: EC2 answers InsufficientCidrBlocks to every prefix request. ipamd falls back to /32
/// secondary IPs for that ENI (and for a new ENI it creates), pods keep getting addresses, and status, metrics
/// and the event stream say so. (aws-vpc-cni fails the pods instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_cidr_blocks_falls_back_to_single_ips_and_says_so() {
    let node = NodeFixture::behind_proxy("prefix-frag", "m5.large").await;
    let proxy = node.proxy.as_ref().unwrap();
    let msg = "There are not enough free cidr blocks in the specified subnet to satisfy the request.";
    proxy.fail("AssignPrivateIpAddresses:prefix", 400, "InsufficientCidrBlocks", msg);
    proxy.fail("CreateNetworkInterface:prefix", 400, "InsufficientCidrBlocks", msg);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[("ENABLE_PREFIX_DELEGATION", "true"), ("METRICS_BIND_ADDR", &metrics)]);
    ipamd.wait_serving(SERVING).await.unwrap();
    let mut got = Vec::new();
    for i in 0..2 {
        let r = add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("pod {i}: {s:?}"));
        got.push(r.ipv4_addr);
    }
    // The primary ENI's 9 slots took single IPs; the 16 warm addresses WARM_PREFIX_TARGET=1 wants brought a
    // second ENI, also of /32s (2 pods leave exactly 16 free, so no third).
    let enis = eventually(SETTLE, "two ENIs of secondary IPs", || async {
        let e = node.enis().await;
        (e.len() == 2 && e.iter().all(|e| e.secondary_ips.len() == 9)).then_some(e)
    })
    .await;
    assert!(prefixes_of(&enis).is_empty());
    let secondary: BTreeSet<&String> = enis.iter().flat_map(|e| &e.secondary_ips).collect();
    assert!(got.iter().all(|ip| secondary.contains(ip)), "pods hold secondary IPs: {got:?}");
    let status = eventually(SETTLE, "both ENIs reported as fallen back", || async {
        let s = try_status(&ipamd).await?;
        (s.prefix_fallback_enis.len() == 2).then_some(s)
    })
    .await;
    let ids: BTreeSet<String> = enis.iter().map(|e| e.id.clone()).collect();
    assert_eq!(status.prefix_fallback_enis.iter().cloned().collect::<BTreeSet<_>>(), ids);
    let m = http_get(port, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "ipamd_prefix_fallback_enis"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "ipamd_prefix_fallbacks_total"), Some(2.0), "{m}");
    assert!(ipamd.log_text().contains("prefix-fallback"), "the event is logged");
    // vpcctl shows it too.
    let out = std::process::Command::new(vpc_sim::ipamd_proc::sibling_binary("vpcctl"))
        .arg("--socket")
        .arg(&ipamd.socket)
        .args(["-o", "json", "status"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prefix_fallback_enis"].as_array().map(Vec::len), Some(2), "{v}");
    ipamd.terminate().await;
    node.cleanup().await;
}

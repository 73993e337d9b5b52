//! Prefix mode in vpc-sim (root + netns): the sim's EC2 proxy delegates /28s (LocalStack ignores prefix
//! requests, see `vpc_sim::ec2prefix`) and its VPC fabric routes their addresses to the ENI. Pods get addresses
//! from the prefixes and working networking across nodes; and surge: 60 pods at once on a fresh t3.large get
//! their IPs with fewer EC2 calls than with IPAMD_SURGE=false.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;
use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::rounds_pass_by;
use vpc_sim::sim::pods::{Pod, concurrently, pod_ip};
use vpc_sim::testkit::{SimProc, ping, tcp_peer_seen};

fn pod(sim: &SimProc, node: usize, name: &str) -> Pod {
    Pod {
        state_dir: sim.state.path().to_path_buf(),
        node,
        namespace: "pfx".into(),
        name: name.into(),
        ..Default::default()
    }
}

/// The prefixes ipamd's pool holds on `node` (`vpcctl enis`).
async fn pool_prefixes(sim: &SimProc, node: usize) -> Vec<Ipv4Net> {
    let socket = sim.state.path().join(format!("node-{node}/ipamd.sock"));
    let ch = vpc_cni_proto::uds::connect(&socket, None).await.unwrap();
    let mut c = vpc_cni_proto::v1::introspection_client::IntrospectionClient::new(ch);
    let enis = c.list_enis(pb::ListEnisRequest {}).await.unwrap().into_inner().enis;
    enis.iter().flat_map(|e| e.prefixes.iter().map(|p| p.parse().unwrap())).collect()
}

/// ipamd's EC2 requests so far on a sim node, by operation (its metrics listener is inside the node's namespace).
/// EC2 requests by operation from the node's /metrics; a failed read fails the test (it must not count 0).
fn ec2_requests(sim: &SimProc, node: usize) -> BTreeMap<String, f64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &sim.node(node), "curl", "-fsS", "http://127.0.0.1:61678/metrics"])
        .output()
        .unwrap();
    assert!(out.status.success(), "reading node {node}'s metrics: {}", String::from_utf8_lossy(&out.stderr));
    let by_op = vpc_sim::fixture::ec2_requests_by_op(&String::from_utf8_lossy(&out.stdout));
    assert!(!by_op.is_empty(), "no ipamd_ec2_requests_total in node {node}'s metrics");
    by_op
}

/// The EC2 request counts once they stop moving (no call in three whole reconcile rounds): the pool has settled.
async fn settled_ec2_requests(sim: &SimProc, node: usize) -> BTreeMap<String, f64> {
    let mut last = ec2_requests(sim, node);
    for _ in 0..20 {
        rounds_pass_by(|| sim.status(node), 3).await;
        let now = ec2_requests(sim, node);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("EC2 calls still going after 60 rounds: {last:?}");
}

/// The requests made between two readings.
fn since(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn pods_get_prefix_addresses_and_reach_each_other_across_nodes() {
    let sim = SimProc::start_with("pf", 2, "t3.large", &["ENABLE_PREFIX_DELEGATION=true"]);
    let mut ips = Vec::new();
    for node in 0..2 {
        for i in 0..3 {
            let p = pod(&sim, node, &format!("p{node}{i}"));
            let r: Value = p.add_retrying(Duration::from_secs(30)).unwrap_or_else(|e| panic!("ADD {}: {e}", p.name));
            ips.push((p, pod_ip(&r)));
        }
    }
    for node in 0..2 {
        let prefixes = pool_prefixes(&sim, node).await;
        for (p, ip) in ips.iter().filter(|(p, _)| p.node == node) {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert!(
                prefixes.iter().any(|n| n.contains(&ip)),
                "{} {ip} is inside a prefix of node {node}: {prefixes:?}",
                p.name
            );
        }
    }
    let ns = |i: usize| ips[i].0.netns().unwrap();
    for (src, dst) in [(0, 3), (4, 1), (2, 5)] {
        assert!(ping(&ns(src), &ips[dst].1), "ping {} → {}", ips[src].1, ips[dst].1);
        assert_eq!(tcp_peer_seen(&ns(dst), &ips[dst].1, &ns(src)).unwrap(), ips[src].1, "source preserved");
    }
    assert!(ping(&sim.node(1), &ips[0].1), "a node reaches a pod of another node");
    for (p, _) in &ips {
        p.del(false).unwrap();
    }
    drop(sim.stop());
}

/// 60 pods at once on a fresh t3.large in prefix mode (WARM_PREFIX_TARGET=1), with surge and without. IMDS
/// lists a new prefix 1.5 s after EC2 delegated it, as EC2's IMDS lags: what the pool waits on between steps.
/// The loop runs every second (IPAMD_RECONCILE_INTERVAL=1) so that "settled" takes seconds.
async fn burst(surge: bool) -> (BTreeMap<String, f64>, Duration) {
    let env = [
        "ENABLE_PREFIX_DELEGATION=true".to_string(),
        format!("IPAMD_SURGE={surge}"),
        "IPAMD_RECONCILE_INTERVAL=1".into(),
        "--imds-lag-ms=1500".into(),
    ];
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let sim = SimProc::start_with(if surge { "su" } else { "ns" }, 1, "t3.large", &env);
    let pods: Vec<Pod> = (0..60).map(|i| pod(&sim, 0, &format!("b{i}"))).collect();
    // The start-up's own calls (the first warm prefix) are not the burst's.
    let before = settled_ec2_requests(&sim, 0).await;
    let started = Instant::now();
    let added = concurrently(&pods, Duration::from_secs(180), Pod::add);
    let wall = started.elapsed();
    // Until the pool has settled again (the warm prefix after the burst).
    let calls = since(&before, &settled_ec2_requests(&sim, 0).await);
    let ips: std::collections::BTreeSet<String> = added
        .iter()
        .zip(&pods)
        .map(|((_, r), p)| pod_ip(r.as_ref().unwrap_or_else(|e| panic!("surge={surge}: ADD {}: {e}", p.name))))
        .collect();
    assert_eq!(ips.len(), 60, "surge={surge}: 60 distinct pod IPs");
    for p in &pods {
        p.del(false).unwrap();
    }
    drop(sim.stop());
    (calls, wall)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn sixty_pods_at_once_take_fewer_ec2_calls_with_surge() {
    let (with, with_wall) = burst(true).await;
    let (without, without_wall) = burst(false).await;
    let (with_calls, without_calls): (f64, f64) = (with.values().sum(), without.values().sum());
    eprintln!(
        "60 pods on a fresh t3.large, prefix mode: with surge {with_calls} EC2 calls ({with:?}), all IPs in \
         {with_wall:.2?}; without {without_calls} ({without:?}) in {without_wall:.2?}"
    );
    // Surge asks for the whole burst in one call per ENI; without it the pool grows one warm prefix per round
    // (measured: 2-3 AssignPrivateIpAddresses against 4): fewer calls in all, and a quarter fewer assigns.
    let assigns = |m: &BTreeMap<String, f64>| m.get("AssignPrivateIpAddresses").copied().unwrap_or(0.0);
    assert!(with_calls < without_calls, "surge: {with:?}, without: {without:?}");
    assert!(assigns(&with) <= 0.75 * assigns(&without), "surge: {with:?}, without: {without:?}");
}

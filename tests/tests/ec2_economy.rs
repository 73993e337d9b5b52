//! EC2 economy at fleet size: an idle node makes no EC2 call at all, and pods that fit the warm pool cost no
//! Describe. ipamd reconciles from IMDS and asks EC2 only on a change it did not make (or at the 30-minute
//! full sync). Requests are counted twice: by ipamd's own metric and at a proxy in front of LocalStack.
//! LocalStack must be running (`make test` starts it).

use std::time::Duration;

use tokio::task::JoinSet;
use vpc_sim::ec2faults::Ec2FaultProxy;
use vpc_sim::fixture::{NodeFixture, add, del, free_port, http_get, metric, rounds_pass};

const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// Sum of `ipamd_ec2_requests_total` over all operations.
fn ec2_requests(metrics: &str) -> f64 {
    vpc_sim::fixture::ec2_requests_by_op(metrics).values().sum()
}

/// Rounds watched while idle: with IPAMD_RECONCILE_INTERVAL=1 their 30 s also outlast the 20 s an IMDS/EC2
/// mismatch waits before ipamd describes (`reconcile::ec2sync::SETTLE`), so a false mismatch would show.
const IDLE_ROUNDS: u64 = 30;

/// Until the start-up round's follow-ups are done: three rounds in a row with no EC2 request. Returns the
/// metrics then.
async fn settled(port: u16, ipamd: &vpc_sim::ipamd_proc::Ipamd) -> String {
    let read = || async { http_get(port, "/metrics").await.map(|m| ec2_requests(&m)).unwrap_or(-1.0) };
    let mut last = read().await;
    for _ in 0..20 {
        rounds_pass(ipamd, 3).await;
        let now = read().await;
        if now == last && now >= 0.0 {
            return http_get(port, "/metrics").await.unwrap();
        }
        last = now;
    }
    panic!("EC2 requests still going after 60 rounds: {last}");
}

/// m5.large with defaults, the loop every second: after SERVING and the start-up actions, 30 rounds pass
/// with zero EC2 requests; the loop keeps running from IMDS alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_makes_no_ec2_call_in_thirty_rounds() {
    let node = NodeFixture::new("idle", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[
        ("METRICS_BIND_ADDR", &metrics_addr),
        ("AWS_ENDPOINT_URL_EC2", &proxy.endpoint),
        ("IPAMD_RECONCILE_INTERVAL", "1"),
    ]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    let before = settled(port, &ipamd).await;
    let at_proxy = proxy.total_calls();
    eprintln!("start-up: {} EC2 requests ({at_proxy} at the proxy)", ec2_requests(&before));
    rounds_pass(&ipamd, IDLE_ROUNDS).await;
    let after = http_get(port, "/metrics").await.unwrap();
    assert_eq!(ec2_requests(&after), ec2_requests(&before), "EC2 requests while idle, by ipamd's metric:\n{after}");
    assert_eq!(proxy.total_calls(), at_proxy, "EC2 requests while idle, at the proxy");
    let rounds = metric(&after, "ipamd_reconciles_total{result=\"ok\"}").unwrap_or(0.0)
        - metric(&before, "ipamd_reconciles_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(rounds >= IDLE_ROUNDS as f64, "the loop kept running from IMDS: {rounds} good rounds");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// A warm pool of 40 IPs (MINIMUM_IP_TARGET=40 on a c5.4xlarge): 30 pods added at once and deleted again make
/// no Describe call; EC2 is not asked anything at all, since the pool never leaves its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fits_the_warm_pool_makes_no_describe_call() {
    let node = NodeFixture::new("burst-econ", "c5.4xlarge").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[
        ("METRICS_BIND_ADDR", &metrics_addr),
        ("AWS_ENDPOINT_URL_EC2", &proxy.endpoint),
        ("MINIMUM_IP_TARGET", "40"),
        ("WARM_IP_TARGET", "0"),
        ("IPAMD_RECONCILE_INTERVAL", "1"),
    ]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    settled(port, &ipamd).await;
    let describes = proxy.calls("DescribeNetworkInterfaces");
    let total = proxy.total_calls();
    let ipamd = std::sync::Arc::new(ipamd);
    let mut set = JoinSet::new();
    for i in 0..30 {
        let ipamd = ipamd.clone();
        set.spawn(async move { add(&ipamd, &format!("burst-{i}")).await });
    }
    let mut ips = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        ips.insert(r.unwrap().expect("Add from the warm pool").ipv4_addr);
    }
    assert_eq!(ips.len(), 30, "30 distinct IPs");
    // Rounds the burst set off would have asked EC2 by now.
    rounds_pass(&ipamd, 3).await;
    for i in 0..30 {
        del(&ipamd, &format!("burst-{i}")).await.expect("Del");
    }
    rounds_pass(&ipamd, 3).await;
    assert_eq!(proxy.calls("DescribeNetworkInterfaces"), describes, "Describe calls during the burst");
    assert_eq!(proxy.total_calls(), total, "EC2 calls of any kind during the burst");
    let m = http_get(port, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "ipamd_pod_requests_total{op=\"add\",result=\"ok\"}"), Some(30.0), "{m}");
    let ipamd = std::sync::Arc::into_inner(ipamd).expect("no other handle");
    ipamd.terminate().await;
    node.cleanup().await;
}

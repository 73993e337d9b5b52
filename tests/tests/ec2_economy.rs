//! EC2 economy at fleet size: an idle node makes no EC2 call at all, and pods that fit the warm pool cost no
//! Describe. ipamd reconciles from IMDS and asks EC2 only on a change it did not make (or at the 30-minute
//! full sync). Requests are counted twice: by ipamd's own metric and at a proxy in front of LocalStack.
//! LocalStack must be running (`make test` starts it).

use std::time::Duration;

use tokio::task::JoinSet;
use vpc_sim::ec2faults::Ec2FaultProxy;
use vpc_sim::fixture::{NodeFixture, add, del, free_port, http_get, metric};

const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// Sum of `ipamd_ec2_requests_total` over all operations.
fn ec2_requests(metrics: &str) -> f64 {
    vpc_sim::fixture::ec2_requests_by_op(metrics).values().sum()
}

/// m5.large with defaults: after SERVING and the start-up actions, two minutes pass with zero EC2 requests
/// (the loop still runs every 5 s, reading IMDS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_makes_no_ec2_call_for_two_minutes() {
    let node = NodeFixture::new("idle", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut ipamd =
        node.spawn_ipamd(&[("METRICS_BIND_ADDR", &metrics_addr), ("AWS_ENDPOINT_URL_EC2", &proxy.endpoint)]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    // Let the start-up round's follow-ups (none expected with an empty node) finish.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = http_get(port, "/metrics").await.unwrap();
    let at_proxy = proxy.total_calls();
    eprintln!("start-up: {} EC2 requests ({at_proxy} at the proxy)", ec2_requests(&before));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let after = http_get(port, "/metrics").await.unwrap();
    assert_eq!(ec2_requests(&after), ec2_requests(&before), "EC2 requests while idle, by ipamd's metric:\n{after}");
    assert_eq!(proxy.total_calls(), at_proxy, "EC2 requests while idle, at the proxy");
    let rounds = metric(&after, "ipamd_reconciles_total{result=\"ok\"}").unwrap_or(0.0)
        - metric(&before, "ipamd_reconciles_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(rounds >= 20.0, "the loop kept running from IMDS: {rounds} rounds in 120 s");
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
    ]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
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
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..30 {
        del(&ipamd, &format!("burst-{i}")).await.expect("Del");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(proxy.calls("DescribeNetworkInterfaces"), describes, "Describe calls during the burst");
    assert_eq!(proxy.total_calls(), total, "EC2 calls of any kind during the burst");
    let m = http_get(port, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "ipamd_pod_requests_total{op=\"add\",result=\"ok\"}"), Some(30.0), "{m}");
    let ipamd = std::sync::Arc::into_inner(ipamd).expect("no other handle");
    ipamd.terminate().await;
    node.cleanup().await;
}

//! Degraded mode: with EC2 and IMDS both unreachable, ipamd keeps serving pods from its checkpointed pool,
//! says so (status, metrics), and converges with EC2 once they are back. LocalStack must be running; the
//! outage is made at a proxy (EC2: every connection dropped) and in the IMDS emulator (503), so LocalStack
//! itself, shared with other tests, stays up.

use std::collections::BTreeSet;
use std::time::Duration;

use vpc_sim::ec2faults::{Chaos, Ec2FaultProxy};
use vpc_sim::fixture::{
    NodeFixture, add, add_retrying, del, eventually, free_port, http_get, metric, pool_enis, try_status,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamd_started_without_ec2_and_imds_serves_from_its_checkpoint_and_converges_after() {
    let node = NodeFixture::new("degraded", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let env = [("METRICS_BIND_ADDR", metrics_addr.as_str()), ("AWS_ENDPOINT_URL_EC2", proxy.endpoint.as_str())];
    let mut ipamd = node.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.unwrap();
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(add_retrying(&ipamd, &format!("p{i}"), Duration::from_secs(60)).await.unwrap().ipv4_addr);
    }
    // The pool at rest before the kill: the warm ENI (WARM_ENI_TARGET=1) attached, in EC2 and in the pool.
    eventually(Duration::from_secs(60), "the warm ENI in EC2 and in the pool", || async {
        let pool: BTreeSet<String> = pool_enis(&ipamd).await.into_iter().map(|e| e.eni_id).collect();
        let attached: BTreeSet<String> = node.enis().await.into_iter().map(|e| e.id).collect();
        (pool.len() == 2 && pool == attached).then_some(())
    })
    .await;
    ipamd.kill9().await;

    proxy.chaos(Chaos { drop: 1.0, ..Chaos::default() });
    node.imds.set_down(true);
    let mut ipamd = node.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(90)).await.expect("SERVING from the checkpoint");
    let s = try_status(&ipamd).await.unwrap();
    assert!(!s.degraded.is_empty(), "status says DEGRADED: {s:?}");
    let m = http_get(port, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "ipamd_degraded"), Some(1.0), "{m}");
    let health = std::process::Command::new(vpc_sim::ipamd_proc::sibling_binary("vpcctl"))
        .arg("--socket")
        .arg(&ipamd.socket)
        .arg("health")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success() && text.starts_with("SERVING (DEGRADED: "), "vpcctl health: {text}");
    // The pods keep their IPs, a new pod gets a free one, a DEL releases.
    assert_eq!(add(&ipamd, "p0").await.expect("repeat Add").ipv4_addr, before[0]);
    let new = add(&ipamd, "p3").await.expect("Add while degraded").ipv4_addr;
    assert!(!before.contains(&new), "{new} is not one of the old pods' IPs");
    let in_ec2: BTreeSet<String> = node.enis().await.into_iter().flat_map(|e| e.secondary_ips).collect();
    assert!(in_ec2.contains(&new), "{new} is one of the node's secondary IPs in EC2");
    assert!(del(&ipamd, "p1").await.expect("Del while degraded").released);

    proxy.chaos(Chaos::default());
    node.imds.set_down(false);
    eventually(Duration::from_secs(120), "DEGRADED cleared", || async {
        try_status(&ipamd).await.filter(|s| s.degraded.is_empty() && s.last_error.is_empty()).map(|_| ())
    })
    .await;
    let m = http_get(port, "/metrics").await.unwrap();
    assert_eq!(metric(&m, "ipamd_degraded"), Some(0.0), "{m}");
    let tracked: BTreeSet<String> = pool_enis(&ipamd).await.into_iter().map(|e| e.eni_id).collect();
    let attached: BTreeSet<String> = node.enis().await.into_iter().map(|e| e.id).collect();
    assert_eq!(tracked, attached, "the pool follows EC2 again");
    for (c, ip) in [("p0", &before[0]), ("p2", &before[2]), ("p3", &new)] {
        assert_eq!(&add(&ipamd, c).await.unwrap().ipv4_addr, ip, "{c} kept its IP through the outage");
    }
    ipamd.terminate().await;
    node.cleanup().await;
}

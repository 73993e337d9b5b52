//! EC2 misbehaving, through a fault proxy in front of LocalStack: random throttling, 5xx, dropped
//! connections and latency; and the errors LocalStack never returns (subnet exhausted, attachment limit,
//! missing IAM permission, DeleteOnTermination not set). ipamd must converge, stay within EC2_API_QPS counted
//! at the proxy, back off instead of looping, and leak no ENI. LocalStack must be running (`make test`).

use std::collections::BTreeSet;
use std::time::Duration;

use vpc_sim::ec2faults::{Chaos, Ec2FaultProxy};
use vpc_sim::fixture::{
    NodeFixture, add_retrying, backoff_window, eventually, free_port, http_get, metric, pool_enis, try_status,
};

const SERVING_TIMEOUT: Duration = Duration::from_secs(120);

/// 30 % throttling, 10 % 5xx, 5 % dropped connections and 2 s on every request, EC2_API_QPS=2 with a burst
/// of 1: ipamd still reaches SERVING, warms a second ENI for its pods and ends with EC2 and its pool in
/// agreement; no 10-second window at the proxy holds more than QPS × 10 + burst requests; no ENI leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_converges_through_throttling_errors_and_latency_within_the_qps_budget() {
    let node = NodeFixture::new("chaos-ec2", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    proxy.chaos(Chaos { throttle: 0.3, server_error: 0.1, drop: 0.05, latency: Duration::from_secs(2) });
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[
        ("METRICS_BIND_ADDR", &metrics_addr),
        ("AWS_ENDPOINT_URL_EC2", &proxy.endpoint),
        ("EC2_API_QPS", "2"),
        ("EC2_API_BURST", "1"),
    ]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.expect("SERVING despite the faults");
    for i in 0..12 {
        add_retrying(&ipamd, &format!("p{i}"), Duration::from_secs(180)).await.expect("Add");
    }
    // The target: 12 pods on 18 IPs (two full ENIs) and a third ENI warm (WARM_ENI_TARGET=1).
    eventually(Duration::from_secs(240), "three full ENIs in EC2 and in the pool", || async {
        let ec2 = node.ip_counts().await;
        let pool: Vec<usize> = pool_enis(&ipamd).await.iter().map(|e| e.ips.len()).collect();
        (ec2 == vec![9, 9, 9] && pool == ec2).then_some(())
    })
    .await;
    let m = http_get(port, "/metrics").await.unwrap();
    let throttled = metric(&m, "ipamd_ec2_errors_total{op=\"DescribeInstanceTypes\",code=\"RequestLimitExceeded\"}");
    eprintln!("calls at the proxy: {}; throttled DescribeInstanceTypes: {throttled:?}", proxy.total_calls());
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("ipamd_ec2_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors > 0.0, "the faults were seen (and retried):\n{m}");
    let worst = proxy.max_in_window(Duration::from_secs(10));
    eprintln!("busiest 10 s window at the proxy: {worst} requests");
    assert!(worst <= 2 * 10 + 1, "{worst} requests in one 10 s window with EC2_API_QPS=2, EC2_API_BURST=1");
    proxy.chaos(Chaos::default());
    assert!(node.unattached_enis().await.is_empty(), "no ENI left unattached");
    let tracked: BTreeSet<String> = pool_enis(&ipamd).await.into_iter().map(|e| e.eni_id).collect();
    let attached: BTreeSet<String> = node.enis().await.into_iter().map(|e| e.id).collect();
    assert_eq!(tracked, attached, "ipamd tracks exactly the ENIs attached in EC2");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// One EC2 error on one operation while pods want IPs: ipamd reports it in status and metrics, backs off
/// (over three doubling waits of its error backoff, at most four attempts of the operation, while a pod
/// arrives every 200 ms and kicks the loop: some 70 attempts without a backoff), and recovers once healed.
async fn backs_off(tag: &str, env: &[(&str, &str)], action: &str, status: u16, code: &str) {
    const STEPS: u32 = 3;
    let window = backoff_window(STEPS);
    let node = NodeFixture::new(tag, "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut env = env.to_vec();
    env.extend([("METRICS_BIND_ADDR", metrics_addr.as_str()), ("AWS_ENDPOINT_URL_EC2", proxy.endpoint.as_str())]);
    let mut ipamd = node.spawn_ipamd(&env);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    proxy.fail(action, status, code, "injected by the test");
    let before = proxy.calls(action);
    let started = std::time::Instant::now();
    // Pods keep arriving: the first takes an IP (the pool now wants an ENI), the rest keep kicking the loop.
    let mut n = 0;
    while started.elapsed() < window {
        let _ = vpc_sim::fixture::add(&ipamd, &format!("{tag}-{n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = proxy.calls(action) - before;
    let most = u64::from(STEPS) + 1;
    assert!((1..=most).contains(&calls), "{calls} {action} calls in {window:?} with {code} (at most {most})");
    let s = try_status(&ipamd).await.expect("status");
    assert!(s.last_error.contains(code) && s.last_error.contains("next try in"), "status: {}", s.last_error);
    // Each failed call is counted in the metric once its answer is back; a retry may be in flight, so both are
    // read again until they agree.
    let series = format!("ipamd_ec2_errors_total{{op=\"{action}\",code=\"{code}\"}}");
    let m = eventually(Duration::from_secs(10), "ipamd_ec2_errors_total to count every failed call", || async {
        let m = http_get(port, "/metrics").await.ok()?;
        (metric(&m, &series) == Some((proxy.calls(action) - before) as f64)).then_some(m)
    })
    .await;
    assert!(metric(&m, "ipamd_reconciles_total{result=\"error\"}").unwrap_or(0.0) >= 1.0, "{m}");
    proxy.heal(action);
    add_retrying(&ipamd, &format!("{tag}-after-heal"), Duration::from_secs(180)).await.expect("Add once healed");
    eventually(Duration::from_secs(30), "no leaked ENI", || async {
        node.unattached_enis().await.is_empty().then_some(())
    })
    .await;
    ipamd.terminate().await;
    node.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_exhaustion_backs_off() {
    backs_off("exhausted", &[], "CreateNetworkInterface", 400, "InsufficientFreeAddressesInSubnet").await;
}

/// The ENI was created, then the attach failed: it is deleted at once, so nothing leaks either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_limit_backs_off_and_deletes_the_unattached_eni() {
    backs_off("attach-limit", &[], "AttachNetworkInterface", 400, "AttachmentLimitExceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_iam_permission_backs_off() {
    backs_off("iam", &[], "CreateNetworkInterface", 403, "UnauthorizedOperation").await;
}

/// PrivateIpAddressLimitExceeded on assign (in warm-IP mode the primary ENI is topped up by assigning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_ip_limit_backs_off() {
    let env = [("WARM_IP_TARGET", "2"), ("MINIMUM_IP_TARGET", "2")];
    backs_off("ip-limit", &env, "AssignPrivateIpAddresses", 400, "PrivateIpAddressLimitExceeded").await;
}

/// An ENI attached but DeleteOnTermination not set (the call failed): set on a later pass once EC2 takes it,
/// with the retries spaced by the backoff. LocalStack neither reports nor keeps an attachment's
/// DeleteOnTermination, so the fix is checked at the proxy: a forwarded ModifyNetworkInterfaceAttribute for
/// that ENI with `Attachment.DeleteOnTermination=true` after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_termination_is_set_on_a_later_pass() {
    const OP: &str = "ModifyNetworkInterfaceAttribute";
    let node = NodeFixture::new("dot", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    let mut ipamd = node.spawn_ipamd(&[("AWS_ENDPOINT_URL_EC2", &proxy.endpoint)]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    proxy.fail(OP, 500, "InternalError", "injected by the test");
    add_retrying(&ipamd, "p0", Duration::from_secs(30)).await.expect("Add");
    eventually(Duration::from_secs(60), "the second ENI attached", || async {
        (node.ip_counts().await.len() == 2).then_some(())
    })
    .await;
    // A pass makes 5 attempts (a server error is retried), and passes come no faster than the error backoff:
    // over three of its doubling waits, at most four passes after the one under way.
    const STEPS: u32 = 3;
    let window = backoff_window(STEPS);
    tokio::time::sleep(window).await;
    let calls = proxy.calls(OP);
    let most = 5 * (u64::from(STEPS) + 2);
    assert!((5..=most).contains(&calls), "{calls} {OP} calls by {window:?} after the attach (at most {most})");
    let eni = node.enis().await[1].id.clone();
    proxy.heal(OP);
    eventually(Duration::from_secs(150), "DeleteOnTermination set on a later pass", || async {
        let bodies = proxy.bodies(OP);
        bodies[calls as usize..]
            .iter()
            .any(|b| b.contains(&format!("NetworkInterfaceId={eni}")) && b.contains("DeleteOnTermination=true"))
            .then_some(())
    })
    .await;
    ipamd.terminate().await;
    node.cleanup().await;
}

/// `vpcctl health [--live]` against ipamd's socket: (exit status, what it printed).
fn vpcctl_health(ipamd: &vpc_sim::ipamd_proc::Ipamd, live: bool) -> (bool, String) {
    let mut cmd = std::process::Command::new(vpc_sim::ipamd_proc::sibling_binary("vpcctl"));
    cmd.arg("--socket").arg(&ipamd.socket).arg("health");
    if live {
        cmd.arg("--live");
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A node whose first reconcile cannot complete (DescribeNetworkInterfaces refused: a missing IAM permission)
/// is alive and unready: the liveness probe passes, so the kubelet does not restart it in a loop, the readiness
/// probe fails, and status says why. Once the permission is there it turns SERVING without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_iam_permission_leaves_ipamd_alive_and_unready() {
    // What the DaemonSet's probes run: liveness is not readiness.
    let ds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let ds: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(ds).unwrap()).unwrap();
    let probe = |kind: &str| -> Vec<String> {
        let containers = ds["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
        let c = containers.iter().find(|c| !c[kind].is_null()).unwrap_or_else(|| panic!("no {kind}"));
        serde_yaml::from_value(c[kind]["exec"]["command"].clone()).expect("exec command")
    };
    assert_eq!(probe("readinessProbe"), ["/usr/local/bin/vpcctl", "health"]);
    assert_eq!(probe("livenessProbe"), ["/usr/local/bin/vpcctl", "health", "--live"]);

    let node = NodeFixture::new("iam-live", "m5.large").await;
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    proxy.fail("DescribeNetworkInterfaces", 403, "UnauthorizedOperation", "not authorized (test)");
    let mut ipamd = node.spawn_ipamd(&[("AWS_ENDPOINT_URL_EC2", &proxy.endpoint)]);
    eventually(SERVING_TIMEOUT, "status naming the refused permission", || async {
        try_status(&ipamd).await.filter(|s| s.last_error.contains("UnauthorizedOperation"))
    })
    .await;
    assert_eq!(vpcctl_health(&ipamd, true), (true, "ALIVE".to_string()), "liveness");
    assert_eq!(vpcctl_health(&ipamd, false), (false, "NOT_SERVING".to_string()), "readiness");
    let pid = ipamd.pid();
    proxy.heal("DescribeNetworkInterfaces");
    ipamd.wait_serving(SERVING_TIMEOUT).await.expect("SERVING once the permission is there");
    assert_eq!(ipamd.pid(), pid, "the same process: no restart");
    assert_eq!(vpcctl_health(&ipamd, false), (true, "SERVING".to_string()), "readiness");
    ipamd.terminate().await;
    node.cleanup().await;
}

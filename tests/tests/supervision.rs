//! Supervision of ipamd's long-lived tasks, on the real binary (debug build: the test-only fault file exists
//! there and nowhere else): a task that dies or stalls turns health NOT_SERVING and ends the process with a
//! non-zero status within a second, naming the task and the cause in the log, so the kubelet restarts it;
//! SIGTERM answers every request in flight, keeps them in the checkpoint and exits 0. LocalStack must be
//! running (each test has its own VPC).

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::{NodeFixture, add, eventually, free_port, try_status};
use vpc_sim::ipamd_proc::Ipamd;

/// Starts ipamd with a fault file (empty until the test writes it).
async fn started(node: &NodeFixture, extra: &[(&str, &str)]) -> (Ipamd, std::path::PathBuf) {
    let faults = node.dir.path().join("faults");
    std::fs::write(&faults, "").unwrap();
    let faults_env = faults.display().to_string();
    let mut env = vec![("IPAMD_TEST_FAULT_FILE", faults_env.as_str())];
    env.extend_from_slice(extra);
    let mut ipamd = node.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.unwrap();
    (ipamd, faults)
}

/// Writes `fault`, then waits for the process to end. Returns its status, how long after the fault it ended,
/// and whether a health watcher saw NOT_SERVING before the socket went away.
async fn fail(ipamd: &mut Ipamd, faults: &std::path::Path, fault: &str, limit: Duration) -> (i32, Duration, bool) {
    let mut watch = HealthClient::new(ipamd.channel().await.unwrap())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let seen = tokio::spawn(async move {
        while let Some(Ok(update)) = watch.next().await {
            if update.status == ServingStatus::NotServing as i32 {
                return true;
            }
        }
        false
    });
    let t0 = Instant::now();
    std::fs::write(faults, format!("{fault}\n")).unwrap();
    let status = ipamd.wait_exit(limit).await;
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| panic!("ipamd still runs {limit:?} after `{fault}`\n{}", ipamd.log_text()));
    let saw_not_serving = tokio::time::timeout(Duration::from_secs(2), seen).await.map(|r| r.unwrap()).unwrap_or(false);
    (status.code().unwrap_or(-1), took, saw_not_serving)
}

async fn a_dead_task_ends_ipamd(tag: &str, fault: &str, task: &str, cause: &str, extra: &[(&str, &str)]) {
    let node = NodeFixture::new(tag, "m5.large").await;
    let (mut ipamd, faults) = started(&node, extra).await;
    let (code, took, saw) = fail(&mut ipamd, &faults, fault, Duration::from_secs(5)).await;
    let log = ipamd.log_text();
    assert_ne!(code, 0, "a dead task must fail the process\n{log}");
    assert!(took < Duration::from_secs(1), "exited {took:?} after the fault (limit 1 s)\n{log}");
    assert!(saw, "a health watcher saw NOT_SERVING before the exit\n{log}");
    let line = log.lines().find(|l| l.contains("ERROR") && l.contains(&format!("task '{task}'")));
    let line = line.unwrap_or_else(|| panic!("no error line naming task '{task}'\n{log}"));
    assert!(line.contains(cause) && line.contains("NOT_SERVING"), "{line}");
    node.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_reconciler_panic_is_not_serving_and_exit_1_within_a_second() {
    a_dead_task_ends_ipamd("sup-reconcile", "reconcile loop=panic", "reconcile loop", "panicked", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_pool_actor_panic_is_not_serving_and_exit_1_within_a_second() {
    a_dead_task_ends_ipamd("sup-pool", "pool actor=panic", "pool actor", "panicked", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_metrics_server_that_ends_is_not_serving_and_exit_1_within_a_second() {
    let addr = format!("127.0.0.1:{}", free_port());
    a_dead_task_ends_ipamd(
        "sup-metrics",
        "metrics server=exit",
        "metrics server",
        "ended",
        &[("METRICS_BIND_ADDR", addr.as_str())],
    )
    .await;
}

/// A loop that stops coming round (the fault parks it between rounds, as a deadlock would) counts as dead once
/// 10× its interval has passed without a round: here 10 × 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_stalled_reconcile_loop_is_not_serving_and_exit_1() {
    let node = NodeFixture::new("sup-stall", "m5.large").await;
    let (mut ipamd, faults) = started(&node, &[("IPAMD_RECONCILE_INTERVAL", "1")]).await;
    let (code, took, saw) = fail(&mut ipamd, &faults, "reconcile=stall", Duration::from_secs(30)).await;
    let log = ipamd.log_text();
    assert_ne!(code, 0, "{log}");
    assert!(saw, "a health watcher saw NOT_SERVING before the exit\n{log}");
    // The last round promised the next within 10 s; the stall is noticed within a check (0.1 s) of that and
    // the exit follows within the second it has.
    assert!(took <= Duration::from_secs(12), "exited {took:?} after the stall\n{log}");
    let line = log.lines().find(|l| l.contains("task 'reconcile loop' stalled")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("no progress for") && line.contains("NOT_SERVING"), "{line}");
    node.cleanup().await;
}

/// SIGTERM while eight Adds are inside ipamd (each held 1.5 s at its start by the fault file): every one is
/// answered with an address, the process exits 0 well inside the DaemonSet's 30 s grace period, and a restarted
/// ipamd holds all eight (they were checkpointed before the replies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_sigterm_answers_every_request_in_flight_and_exits_0() {
    let node = NodeFixture::new("sup-term", "m5.large").await;
    let (mut ipamd, faults) = started(&node, &[]).await;
    eventually(Duration::from_secs(60), "8 free IPs", || async {
        try_status(&ipamd).await.filter(|s| s.free_ips >= 8)
    })
    .await;
    std::fs::write(&faults, "add=delay:1500\n").unwrap();
    let ipamd_ref = &ipamd;
    let adds = futures::future::join_all((0..8).map(|i| async move { add(ipamd_ref, &format!("term-{i}")).await }));
    let term = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = ipamd_ref.pid().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
        Instant::now()
    };
    let (replies, sent) = tokio::join!(adds, term);
    let mut ips = std::collections::BTreeSet::new();
    for (i, r) in replies.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("term-{i} not answered with an address: {e}\n{}", ipamd.log_text()));
        ips.insert(r.ipv4_addr);
    }
    assert_eq!(ips.len(), 8, "eight distinct addresses");
    let status = ipamd.wait_exit(Duration::from_secs(10)).await.expect("ipamd exits after SIGTERM");
    let took = sent.elapsed();
    let log = ipamd.log_text();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}\n{log}");
    assert!(log.contains("requests in flight answered") && log.contains("every task joined"), "{log}");

    std::fs::write(&faults, "").unwrap();
    let (again, _) = started(&node, &[]).await;
    let mut c = again.introspection().await;
    let held: std::collections::BTreeSet<String> = c
        .list_allocations(pb::ListAllocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .allocations
        .into_iter()
        .map(|a| a.ipv4_addr)
        .collect();
    assert_eq!(held, ips, "every answered Add is in the checkpoint");
    again.terminate().await;
    node.cleanup().await;
}

//! A checkpoint that parses but that no ipamd wrote (here: two pods on one IP) is refused at start like a torn
//! one: ipamd names the problem in its log, keeps the file aside for a post-mortem, rebuilds from the host (with
//! host networking off, from nothing) and serves. LocalStack must be running.

use std::time::Duration;

use vpc_sim::fixture::{NodeFixture, add_retrying};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconsistent_checkpoint_is_moved_aside_and_rebuilt() {
    let node = NodeFixture::new("cp-check", "m5.large").await;
    let entry = |c: &str| {
        serde_json::json!({"network_name": "aws-cni", "container_id": c, "if_name": "eth0", "ip": "10.0.0.77",
            "eni_id": "", "pod_namespace": "default", "pod_name": c, "allocated_unix": 7})
    };
    let file = serde_json::json!({"version": 1, "allocations": [entry("a"), entry("b")], "cooling": {}});
    let path = node.dir.path().join("ipam.json");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

    let mut ipamd = node.spawn_ipamd(&[]);
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING after the rebuild");
    let log = ipamd.log_text();
    let line = log.lines().find(|l| l.contains("inconsistent")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("10.0.0.77 is held by two allocations") && line.contains("moved aside"), "{line}");
    let aside: Vec<String> = std::fs::read_dir(node.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ipam.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the refused file is kept aside");
    let kept = std::fs::read(node.dir.path().join(&aside[0])).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&kept).unwrap(), file, "kept as it was");
    let mut c = ipamd.introspection().await;
    let held = c.list_allocations(vpc_cni_proto::v1::ListAllocationsRequest {}).await.unwrap().into_inner();
    assert!(held.allocations.is_empty(), "nothing of the refused file was loaded: {held:?}");
    let ip = add_retrying(&ipamd, "after", Duration::from_secs(60)).await.unwrap().ipv4_addr;
    assert!(!ip.is_empty());
    ipamd.terminate().await;
    node.cleanup().await;
}

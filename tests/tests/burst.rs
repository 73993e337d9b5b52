//! 30 pods added to one node at once through the real plugin (root + netns): all succeed with distinct VPC
//! addresses, and all go away again. Latency figures come from `vpc-sim bench` (docs/benchmarks.md), not
//! from this test.

use std::collections::BTreeSet;
use std::time::Duration;

use vpc_sim::sim::pods::{Pod, concurrently};
use vpc_sim::testkit::SimProc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn thirty_pods_at_once_on_one_node() {
    let sim = SimProc::start_with("vt", 1, "m5.xlarge", &["MINIMUM_IP_TARGET=30"]);
    let pods: Vec<Pod> = (0..30)
        .map(|i| Pod {
            state_dir: sim.state.path().to_path_buf(),
            node: 0,
            namespace: "burst".into(),
            name: format!("b{i}"),
            ..Pod::default()
        })
        .collect();
    let added = concurrently(&pods, Duration::from_secs(60), Pod::add);
    let mut ips = BTreeSet::new();
    for (p, (_, r)) in pods.iter().zip(&added) {
        let r = r.as_ref().unwrap_or_else(|e| panic!("ADD {}: {e}", p.name));
        ips.insert(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 30, "30 distinct pod IPs");
    for (p, (_, r)) in pods.iter().zip(concurrently(&pods, Duration::from_secs(60), |p| p.del(false))) {
        r.unwrap_or_else(|e| panic!("DEL {}: {e}", p.name));
    }
    // The kernel removes the veths with their namespaces, in the background.
    vpc_sim::testkit::wait_link_gone(&sim.node(0), "eni");
    drop(sim.stop());
}

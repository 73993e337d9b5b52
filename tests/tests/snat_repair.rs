//! Node SNAT is kept in place by a loop of its own (root + netns): a `nft flush ruleset` on the node (what a
//! firewall reload does) and a deleted NodePort rule are put back by its next round; an `nft` that hangs is
//! killed after its timeout, GetStatus says why, and pods still get IPs.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vpc_sim::fixture::poll_until;
use vpc_sim::netns::{ip_in, run};
use vpc_sim::sim::pods::{Pod, pod_ip};
use vpc_sim::testkit::{SimProc, ping, wait_until};

const NODEPORT_RULE: &str = "1024:\tfrom all fwmark 0x80/0x80 lookup main";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn node_snat_is_restored_and_a_hung_nft_stops_no_pod() {
    // A node whose `nft` never returns (first on ipamd's PATH).
    let bin = tempfile::tempdir().unwrap();
    let nft = bin.path().join("nft");
    std::fs::write(&nft, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hung_path = format!("PATH={}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let (sim, hung) = std::thread::scope(|s| {
        let a = s.spawn(|| SimProc::start("sr", 1, &["IPAMD_RECONCILE_INTERVAL=1"]));
        let b = s.spawn(|| SimProc::start("sh", 1, &["IPAMD_RECONCILE_INTERVAL=1", &hung_path]));
        (a.join().unwrap(), b.join().unwrap())
    });

    // Flushed by another tool: back within the keeper's next round (1 s here).
    let node = sim.node(0);
    let in_place = || {
        run("ip", &["netns", "exec", &node, "nft", "list", "table", "ip", "vpc-cni"])
            .is_ok_and(|t| t.contains("snat to"))
            && ip_in(&node, &["rule"]).is_ok_and(|r| r.contains(NODEPORT_RULE))
    };
    wait_until("SNAT table and NodePort rule in place", Duration::from_secs(30), in_place);
    let s = sim.status(0).await.expect("status");
    assert_eq!(s.snat, "in place", "{s:?}");
    run("ip", &["netns", "exec", &node, "nft", "flush", "ruleset"]).unwrap();
    ip_in(&node, &["rule", "del", "priority", "1024"]).unwrap();
    assert!(!in_place());
    wait_until("SNAT table and NodePort rule restored", Duration::from_secs(30), in_place);

    // `nft` hangs: killed after its timeout, status says so, and the node serves pods all the while.
    let broken = poll_until(
        Duration::from_secs(90),
        || hung.status(0),
        |s| s.as_ref().is_some_and(|s| s.snat.starts_with("broken:")),
    )
    .await
    .expect("status");
    assert!(broken.snat.contains("did not finish within"), "{}", broken.snat);
    assert!(broken.serving, "SNAT trouble must not keep the node from SERVING: {broken:?}");
    let pod = Pod {
        state_dir: hung.state.path().to_path_buf(),
        node: 0,
        namespace: "default".into(),
        name: "while-nft-hangs".into(),
        ..Default::default()
    };
    let ip = pod_ip(&pod.add_retrying(Duration::from_secs(30)).expect("ADD while nft hangs"));
    assert!(ping(&hung.node(0), &ip), "the node reaches its pod at {ip}");
    pod.del(false).unwrap();
    drop(sim.stop());
    drop(hung.stop());
}

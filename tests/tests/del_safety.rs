//! A late or repeated DEL of a sandbox (root + netns) never takes the networking of the pod that holds its IP
//! now. ipamd hands the IP to a newer pod (IP_COOLDOWN_PERIOD=0 makes that the next ADD), then the old
//! sandbox's DEL comes again with its prevResult: once while ipamd answers DelNetwork with an error (a debug
//! build's IPAMD_TEST_FAULT_FILE), once while ipamd cannot be reached. The newer pod keeps its rules both times.

use std::time::Duration;

use vpc_sim::netns::ip_in;
use vpc_sim::sim::pods::{Pod, PodError, pod_ip};
use vpc_sim::testkit::{SimProc, ping};

fn pod(sim: &SimProc, name: &str) -> Pod {
    Pod {
        state_dir: sim.state.path().to_path_buf(),
        node: 0,
        namespace: "default".into(),
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn a_repeated_del_leaves_the_pod_that_has_the_ip_now_alone() {
    let faults = tempfile::NamedTempFile::new().unwrap();
    let fault_env = format!("IPAMD_TEST_FAULT_FILE={}", faults.path().display());
    let sim = SimProc::start("dl", 1, &["IP_COOLDOWN_PERIOD=0", &fault_env]);
    let (old, new) = (pod(&sim, "old"), pod(&sim, "new"));
    let prev = old.add_retrying(Duration::from_secs(30)).expect("ADD old");
    let ip = pod_ip(&prev);
    old.del(true).expect("DEL old");
    let got = new.add_retrying(Duration::from_secs(30)).expect("ADD new");
    assert_eq!(pod_ip(&got), ip, "with no cooldown the IP goes to the next pod");
    let node = sim.node(0);
    let intact = |when: &str| {
        let rules = ip_in(&node, &["rule"]).expect("ip rule");
        assert!(
            rules.contains(&format!("to {ip} lookup main")),
            "{when}: the new pod's rule for {ip} is gone:\n{rules}"
        );
        assert!(ping(&node, &ip), "{when}: the node no longer reaches the new pod at {ip}");
    };
    intact("before");

    // ipamd answers the repeated DEL with an error: the plugin fails the DEL and touches nothing.
    std::fs::write(faults.path(), "del=error:injected by the test\n").unwrap();
    let refused = old.repeat_del(&prev, None);
    intact("after a DEL ipamd refused");
    match refused {
        Err(PodError::Plugin { json, .. }) => {
            assert!(json["details"].as_str().unwrap_or_default().contains("injected"), "{json}")
        }
        other => panic!("a DEL ipamd refused must fail: {other:?}"),
    }
    std::fs::write(faults.path(), "").unwrap();

    // ipamd unreachable: the plugin tears down from prevResult, but the IP's host route is the new pod's veth.
    let nobody = tempfile::tempdir().unwrap();
    old.repeat_del(&prev, Some(&nobody.path().join("ipamd.sock"))).expect("a DEL with ipamd unreachable succeeds");
    intact("after a DEL with ipamd unreachable");

    // The old sandbox's DEL once more, ipamd back: it holds nothing for it, and nothing is touched.
    old.repeat_del(&prev, None).expect("DEL of a released sandbox");
    intact("after the last DEL");
    new.del(false).unwrap();
    old.del(false).unwrap();
    drop(sim.stop());
}

//! A pod cannot take another pod's host veth (root + netns). The host veth name is 44 bits of
//! sha1("<namespace>.<pod>"), as in aws-vpc-cni, so a tenant can search two colliding pod names: default/p1803518
//! and default/p8024346 are such a pair (found by a birthday search in a few seconds). Each host veth carries its
//! owner in its alias; an ADD that finds its name taken replaces the link only when it is the same pod's.

use std::time::Duration;

use datapath::podnet::host_veth_name;
use vpc_sim::netns::ip_in;
use vpc_sim::sim::pods::{Pod, PodError, pod_ip};
use vpc_sim::testkit::{SimProc, ping};

const VICTIM: &str = "p1803518";
const ATTACKER: &str = "p8024346";

fn pod(sim: &SimProc, name: &str, sandbox: u32) -> Pod {
    Pod {
        state_dir: sim.state.path().to_path_buf(),
        node: 0,
        namespace: "default".into(),
        name: name.into(),
        sandbox,
        ..Default::default()
    }
}

/// The plugin's error JSON of an ADD that must fail.
fn refused(r: Result<serde_json::Value, PodError>) -> serde_json::Value {
    match r {
        Err(PodError::Plugin { json, .. }) => json,
        other => panic!("the ADD must fail with a CNI error: {other:?}"),
    }
}

/// `ip -d link show` of the host veth: its index (first field) and its alias line.
fn link(node: &str, veth: &str) -> (String, String) {
    let shown = ip_in(node, &["-d", "link", "show", veth]).expect("the host veth exists");
    let index = shown.split(':').next().unwrap_or_default().trim().to_string();
    let alias = shown.lines().find_map(|l| l.trim().strip_prefix("alias ")).unwrap_or_default().to_string();
    (index, alias)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn a_pod_whose_name_hashes_like_another_never_takes_its_veth() {
    let veth = host_veth_name("eni", "default", VICTIM);
    assert_eq!(veth, host_veth_name("eni", "default", ATTACKER), "the two names must collide");
    let sim = SimProc::start("vo", 1, &[]);
    let node = sim.node(0);

    // The same pod's next sandbox replaces the veth its previous sandbox left (namespace not deleted yet).
    let first = pod(&sim, VICTIM, 0);
    first.add_retrying(Duration::from_secs(30)).expect("ADD victim, sandbox 0");
    first.del(true).expect("DEL victim, sandbox 0, namespace kept");
    let victim = pod(&sim, VICTIM, 1);
    let ip = pod_ip(
        &victim.add_retrying(Duration::from_secs(30)).expect("ADD victim, sandbox 1 (replaces sandbox 0's veth)"),
    );
    let (index, alias) = link(&node, &veth);
    assert!(
        alias.starts_with(&format!("vpc-cni pod=default/{VICTIM} ")) && alias.contains(&victim.container_id()),
        "the host veth names its owner: {alias:?}"
    );
    let intact = |when: &str| {
        assert_eq!(link(&node, &veth).0, index, "{when}: the victim's host veth was replaced");
        assert!(ping(&node, &ip), "{when}: the node no longer reaches the victim at {ip}");
    };
    intact("before");

    // Another pod with a colliding name: its ADD fails naming both pods, and the victim keeps its veth.
    let attacker = pod(&sim, ATTACKER, 0);
    let json = refused(attacker.add());
    let details = json["details"].as_str().unwrap_or_default();
    assert_eq!(json["code"], 103, "{json}");
    assert!(
        details.contains(&format!("default/{VICTIM}")) && details.contains(&format!("default/{ATTACKER}")),
        "{json}"
    );
    intact("after the colliding ADD");
    attacker.del(false).expect("DEL after the failed ADD");
    intact("after the colliding pod's DEL");

    // A veth with no owner recorded (made by aws-node or an older vpc-cni): left alone, "try again later".
    ip_in(&node, &["link", "set", "dev", &veth, "alias", ""]).expect("clear the alias");
    assert_eq!(link(&node, &veth).1, "", "the alias was not cleared");
    let json = refused(attacker.add());
    assert_eq!(json["code"], 11, "{json}");
    intact("after an ADD that found a veth with no owner");
    attacker.del(false).expect("DEL after the failed ADD");
    intact("at the end");
    victim.del(false).unwrap();
    drop(sim.stop());
}

//! The reconcile loop in prefix mode through the EC2 trait, with the recording fake ([`crate::cloud::ec2::fake`]):
//! LocalStack ignores prefix delegation, so this is where prefix mode meets the real reconciler, pool actor and
//! checkpoint without a network. (The tests/ suites do the same over HTTP through a prefix-delegating proxy.)

use super::testrig::rig;
use crate::cloud::ec2::fake::PRIMARY_ENI;
use crate::planner::Targets;
use crate::state::datastore::AllocKey;

fn prefix_mode() -> Targets {
    Targets { warm_prefix: Some(1), ..Targets::default() }
}

#[tokio::test]
async fn prefixes_are_delegated_served_and_given_back() {
    let mut rig = rig(prefix_mode()).await;
    rig.settle().await;
    let ec2 = rig.ec2.clone();
    let primary = move || ec2.enis().into_iter().find(|e| e.id == PRIMARY_ENI).unwrap();
    assert_eq!((primary().prefixes.len(), primary().secondary_ips.len()), (1, 0));
    let p0 = primary().prefixes[0];
    let ip = rig.add("c0").await.unwrap();
    assert!(p0.contains(&ip), "{ip} from {p0}");
    // The one prefix is no longer whole: a second is delegated.
    rig.settle().await;
    assert_eq!(primary().prefixes.len(), 2);
    let snap = rig.pool.snapshot().await.unwrap();
    assert_eq!((snap.max_pods, snap.stats.total, snap.stats.assigned), (Some(110), 32, 1));
    // The pod goes: one prefix is surplus (cooldown 0) and goes back; its addresses were reserved first.
    rig.pool
        .del(AllocKey { network_name: "aws-cni".into(), container_id: "c0".into(), if_name: "eth0".into() })
        .await
        .unwrap();
    rig.settle().await;
    assert_eq!(primary().prefixes.len(), 1);
    assert!(
        rig.ec2.calls().iter().any(|c| c.starts_with("UnassignPrivateIpAddresses:prefix eni-0 1")),
        "{:?}",
        rig.ec2.calls()
    );
}

#[tokio::test]
async fn insufficient_cidr_blocks_turns_the_eni_to_single_ips() {
    let mut rig = rig(prefix_mode()).await;
    rig.ec2.fail("AssignPrivateIpAddresses:prefix", "InsufficientCidrBlocks");
    rig.ec2.fail("CreateNetworkInterface:prefix", "InsufficientCidrBlocks");
    rig.settle().await;
    let enis = rig.ec2.enis();
    // The primary ENI took its 9 slots as /32s; the 16 warm addresses wanted brought a second ENI, created with
    // single IPs after its prefix create was refused, and trimmed to the 16 (single IPs go as in IP mode).
    let shape: Vec<(usize, usize)> = enis.iter().map(|e| (e.secondary_ips.len(), e.prefixes.len())).collect();
    assert_eq!(shape, [(9, 0), (7, 0)], "{:?}", rig.ec2.calls());
    let snap = rig.pool.snapshot().await.unwrap();
    assert!(snap.ds.enis.values().all(|e| e.fallback), "both ENIs marked");
    assert!(rig.add("c0").await.is_ok());
    // Once EC2 has /28s again, a fallen-back ENI stays on single IPs (until ipamd restarts); nothing fails.
    rig.ec2.heal("AssignPrivateIpAddresses:prefix");
    rig.settle().await;
    assert!(rig.ec2.enis().iter().all(|e| e.prefixes.is_empty()));
}

#[tokio::test]
async fn surge_asks_for_the_waiting_pods_in_one_call() {
    let mut rig = rig(prefix_mode()).await;
    rig.settle().await;
    // 16 addresses warm; 40 pods at once: 24 are refused and wait.
    let mut refused = 0;
    for i in 0..40 {
        if rig.add(&format!("c{i}")).await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 24);
    let before = rig.ec2.calls().len();
    rig.r.reconcile_once().await.unwrap();
    let assigns: Vec<String> =
        rig.ec2.calls()[before..].iter().filter(|c| c.starts_with("AssignPrivateIpAddresses")).cloned().collect();
    // 24 waiting + one whole prefix still wanted after them = 40 addresses: 3 prefixes in one call.
    assert_eq!(assigns, ["AssignPrivateIpAddresses:prefix eni-0 3"]);
    for i in 16..40 {
        rig.add(&format!("c{i}")).await.unwrap();
    }
}

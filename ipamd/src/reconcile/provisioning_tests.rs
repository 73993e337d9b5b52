//! DISABLE_NETWORK_RESOURCE_PROVISIONING on the recording fake: the pool is what is attached (an ENI a user
//! attached included), a pool that wants to grow asks EC2 for nothing, and the hold is said once.

use super::testrig::rig;
use crate::planner::Targets;

#[tokio::test]
async fn without_provisioning_ec2_is_read_and_never_changed() {
    let mut rig = rig(Targets { warm_ip: Some(5), ..Targets::default() }).await;
    rig.r.settings.provisioning = false;
    let mut events = rig.pool.events.subscribe();
    rig.ec2.attach_foreign("eni-user", 1, true);
    for _ in 0..4 {
        rig.r.reconcile_once().await.unwrap();
    }
    let calls = rig.ec2.calls();
    assert!(calls.iter().all(|c| c.starts_with("Describe")), "only reads: {calls:?}");
    let snap = rig.pool.snapshot().await.unwrap();
    assert!(snap.ds.enis.contains_key("eni-user"), "the user's ENI is served");
    assert!(rig.add("c1").await.is_err(), "nothing attached to hand out, and nothing asked for");
    let held: Vec<String> =
        std::iter::from_fn(|| events.try_recv().ok()).filter(|e| e.kind == "pool-held").map(|e| e.message).collect();
    assert_eq!(held.len(), 1, "said once: {held:?}");
    assert!(held[0].contains("provisioning is off"), "{held:?}");
}

//! ENIs ipamd does not manage, on the recording fake: an interface without a private IPv4 address (EFA-only
//! on p5/trn instances, an IPv6-only ENI a user attached) is foreign like any other ENI ipamd did not create:
//! never fatal, reported once, its attachment slot counted against the instance's ENI limit.

use super::TAG_INSTANCE_ID;
use super::testrig::rig;
use crate::cloud::ec2::Ec2Eni;
use crate::cloud::ec2::fake::INSTANCE;
use crate::planner::Targets;
use crate::pool::PoolError;

#[tokio::test]
async fn an_eni_without_ipv4_is_left_alone_and_its_slot_counted() {
    let mut rig = rig(Targets { warm_eni: 1, ..Targets::default() }).await;
    let mut events = rig.pool.events.subscribe();
    rig.ec2.attach_foreign("eni-efa", 1, false);
    rig.settle().await;
    // Pods fill the node: 3 ENIs of 9 secondary IPs allowed, one slot taken by the EFA-only interface.
    let mut served = 0;
    let mut refused = None;
    for i in 0..30 {
        let pod = format!("c{i}");
        let got = match rig.add(&pod).await {
            Ok(ip) => Ok(ip),
            Err(_) => {
                rig.settle().await;
                rig.add(&pod).await
            }
        };
        match got {
            Ok(_) => served += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(served, 18, "the primary ENI's and one more ENI's 9 IPs each: {:?}", rig.ec2.calls());
    assert!(matches!(refused, Some(PoolError::AtLimit(..))), "then the limit: {refused:?}");
    let enis = rig.ec2.enis();
    let devices: Vec<(String, Option<u32>)> = enis.iter().map(|e| (e.id.clone(), e.device_index)).collect();
    assert_eq!(devices.len(), 3, "no ENI beyond the limit: {devices:?}");
    assert!(devices.contains(&("eni-efa".into(), Some(1))), "the EFA-only interface stays: {devices:?}");
    let snap = rig.pool.snapshot().await.unwrap();
    assert!(!snap.ds.enis.contains_key("eni-efa"), "not in the pool");
    let mut reported = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.kind == "eni-ignored" {
            reported.push(e.message);
        }
    }
    assert_eq!(reported.len(), 1, "reported once: {reported:?}");
    assert!(reported[0].contains("eni-efa") && reported[0].contains("no private IPv4"), "{reported:?}");
}

/// An ENI of ours attached at a device number whose route table would be one of the kernel's (253 default,
/// 254 main, 255 local) is not one ipamd can wire: left alone like a foreign one.
#[tokio::test]
async fn an_eni_beyond_the_routable_device_numbers_is_not_managed() {
    let rig = rig(Targets::default()).await;
    let ours = |device: u32| Ec2Eni {
        id: format!("eni-dev{device}"),
        subnet_id: "subnet-fake".into(),
        primary_ip: Some("10.0.0.99".parse().unwrap()),
        secondary_ips: Vec::new(),
        prefixes: Vec::new(),
        device_index: Some(device),
        attachment_id: None,
        delete_on_termination: Some(true),
        status: "in-use".into(),
        security_groups: Vec::new(),
        tags: [(TAG_INSTANCE_ID.to_string(), INSTANCE.to_string())].into(),
    };
    assert!(rig.r.managed(&ours(datapath::MAX_DEVICE_NUMBER)));
    assert!(!rig.r.managed(&ours(datapath::MAX_DEVICE_NUMBER + 1)), "table 253 is the kernel's default");
    assert!(!rig.r.managed(&ours(u32::MAX)));
    assert_eq!(datapath::eni_route_table(u32::MAX), u32::MAX, "no overflow");
}

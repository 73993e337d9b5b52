//! Subnet discovery (ENABLE_SUBNET_DISCOVERY, on by default) against LocalStack, whose DescribeSubnets counts
//! each subnet's free addresses from the ENIs in it as EC2 does: new ENIs go to the tagged subnet with the most
//! free addresses, follow it when another fills up, and never go to an untagged, opted-out (`role/cni=0`) or
//! other-zone subnet. LocalStack must be running (`make test` starts it).

use std::time::Duration;

use aws_sdk_ec2::types::Tag;
use vpc_sim::fixture::{NodeFixture, add_retrying};
use vpc_sim::localstack::REGION;

const SETTLE: Duration = Duration::from_secs(45);

async fn tag_role(node: &NodeFixture, subnet: &str, role: &str) {
    let tag = Tag::builder().key("kubernetes.io/role/cni").value(role).build();
    node.ec2.create_tags().resources(subnet).tags(tag).send().await.expect("CreateTags");
}

/// The subnet of each attached ENI, by device index.
async fn eni_subnets(node: &NodeFixture) -> Vec<String> {
    node.enis().await.into_iter().map(|e| e.subnet_id).collect()
}

async fn wait_enis(node: &NodeFixture, count: usize) -> Vec<String> {
    vpc_sim::fixture::eventually(SETTLE, &format!("{count} ENIs attached"), || async {
        let s = eni_subnets(node).await;
        (s.len() == count).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_enis_go_to_the_emptier_tagged_subnet_and_never_elsewhere() {
    // The node's own subnet is small (a /27), so it never has the most room.
    let node_subnet = format!("10.0.{}.{}/27", rand::random_range(40u32..64), 32 * rand::random_range(0u32..8));
    let mut node = NodeFixture::in_subnet("subnet-disc", "m5.large", &node_subnet).await;
    let (ec2, zone, other_zone) = (node.ec2.clone(), format!("{REGION}a"), format!("{REGION}b"));
    // LocalStack (scripts/localstack_main.py) never hands an address out twice in its lifetime: fresh blocks per
    // run (the node's /27 above too) keep a long-lived LocalStack from running out.
    let block = 64 + 2 * rand::random_range(0u32..95);
    let roomy = node.vpc.add_subnet(&ec2, &format!("10.0.{block}.0/24"), &zone).await.unwrap();
    let smaller = node.vpc.add_subnet(&ec2, &format!("10.0.{}.0/25", block + 1), &zone).await.unwrap();
    let untagged = node.vpc.add_subnet(&ec2, "10.0.8.0/22", &zone).await.unwrap();
    let opted_out = node.vpc.add_subnet(&ec2, "10.0.16.0/21", &zone).await.unwrap();
    let elsewhere = node.vpc.add_subnet(&ec2, "10.0.32.0/21", &other_zone).await.unwrap();
    for (s, role) in [(&roomy, "1"), (&smaller, "1"), (&opted_out, "0"), (&elsewhere, "1")] {
        tag_role(&node, s, role).await;
    }
    let mut ipamd = node.spawn_ipamd(&[]);
    ipamd.wait_serving(Duration::from_secs(60)).await.unwrap();

    // WARM_ENI_TARGET=1: the first pod leaves fewer than an ENI's worth free, so a second ENI comes.
    add_retrying(&ipamd, "c0", SETTLE).await.expect("first pod");
    let subnets = wait_enis(&node, 2).await;
    assert_eq!(subnets[1], roomy, "the second ENI is in the tagged /24 (most free addresses): {subnets:?}");

    // Something else takes most of the /24: it now has fewer free addresses than the /25.
    ec2.create_network_interface()
        .subnet_id(&roomy)
        .secondary_private_ip_address_count(130)
        .send()
        .await
        .expect("CreateNetworkInterface in the /24");
    for i in 1..10 {
        add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("pod {i}: {s:?}"));
    }
    let subnets = wait_enis(&node, 3).await;
    assert_eq!(subnets[2], smaller, "the third ENI follows the free space to the tagged /25: {subnets:?}");
    for s in [&untagged, &opted_out, &elsewhere] {
        assert!(!subnets.contains(s), "{s} (untagged, role/cni=0 or another zone) is never used: {subnets:?}");
    }
    // The operator can see why: each choice is logged (and a pool event) with the candidates it beat.
    let log = ipamd.log_text();
    let chosen: Vec<&str> = log.lines().filter(|l| l.contains("subnet-chosen")).collect();
    assert!(
        chosen.len() >= 2 && chosen.last().unwrap().contains(&smaller) && chosen.last().unwrap().contains(&roomy),
        "{chosen:?}"
    );
    ipamd.terminate().await;
    node.cleanup().await;
}

/// The node's own subnet tagged `role/cni=0` is not used either: ENIs go to the tagged one even when the node's
/// has more room; with discovery off they stay in the node's subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_node_subnet_is_skipped_and_discovery_can_be_turned_off() {
    for (discovery, expect_node_subnet) in [("true", false), ("false", true)] {
        let mut node = NodeFixture::in_subnet(&format!("subnet-off-{discovery}"), "t3.medium", "10.0.0.0/22").await;
        let zone = format!("{REGION}a");
        let cidr = format!("10.0.{}.{}/26", rand::random_range(12u32..16), 64 * rand::random_range(0u32..4));
        let tagged = node.vpc.add_subnet(&node.ec2.clone(), &cidr, &zone).await.unwrap();
        tag_role(&node, &node.vpc.subnet_ids[0].clone(), "0").await;
        tag_role(&node, &tagged, "1").await;
        let mut ipamd = node.spawn_ipamd(&[("ENABLE_SUBNET_DISCOVERY", discovery)]);
        ipamd.wait_serving(Duration::from_secs(60)).await.unwrap();
        add_retrying(&ipamd, "c0", SETTLE).await.expect("first pod");
        let subnets = wait_enis(&node, 2).await;
        let want = if expect_node_subnet { &node.vpc.subnet_ids[0] } else { &tagged };
        assert_eq!(&subnets[1], want, "ENABLE_SUBNET_DISCOVERY={discovery}: {subnets:?}");
        ipamd.terminate().await;
        node.cleanup().await;
    }
}

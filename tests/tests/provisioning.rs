//! DISABLE_NETWORK_RESOURCE_PROVISIONING and ENABLE_IMDS_ONLY_MODE on the real ipamd against LocalStack, every
//! EC2 request of ipamd's through a counting proxy (AWS_EC2_ENDPOINT): the operator attaches the ENIs and IPs,
//! pods get exactly those, and ipamd asks EC2 for no change — in IMDS-only mode for nothing at all.

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::Code;
use vpc_sim::ec2faults::Ec2FaultProxy;
use vpc_sim::fixture::{NodeFixture, add, del, rounds_pass};
use vpc_sim::ipamd_proc::Ipamd;

/// Every EC2 action that changes something, as the proxy names them.
const MUTATING: [&str; 10] = [
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "ModifyNetworkInterfaceAttribute",
    "CreateTags",
    "DeleteTags",
    "AssignIpv6Addresses",
];

/// ADDs until the pool is exhausted; the IPs handed out.
async fn fill(ipamd: &Ipamd, prefix: &str) -> BTreeSet<String> {
    let mut ips = BTreeSet::new();
    for i in 0..40 {
        match add(ipamd, &format!("{prefix}{i}")).await {
            Ok(r) => {
                ips.insert(r.ipv4_addr);
            }
            Err(e) if e.code() == Code::ResourceExhausted => return ips,
            Err(e) => panic!("ADD {prefix}{i}: {e:?}"),
        }
    }
    panic!("40 pods and the pool is not exhausted: {ips:?}");
}

#[tokio::test]
async fn without_provisioning_pods_get_what_the_operator_attached_and_ec2_is_never_changed() {
    let fx = NodeFixture::new("provisioning", "t3.medium").await;
    let me = fx.instance_id().to_string();
    // What the operator provisions: 3 secondary IPs on the primary ENI, an ENI of their own with 2, and one
    // opted out with no_manage=true.
    let primary = fx.enis().await[0].id.clone();
    fx.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&primary)
        .secondary_private_ip_address_count(3)
        .send()
        .await
        .expect("AssignPrivateIpAddresses");
    let (_, user_ips) = fx.attach_eni(1, &[("team", "platform")]).await;
    let no_manage = [(ipamd::reconcile::TAG_INSTANCE_ID, me.as_str()), (ipamd::reconcile::TAG_NO_MANAGE, "true")];
    let (_, opted_out_ips) = fx.attach_eni(2, &no_manage).await;
    let before = fx.enis().await;
    let attached: BTreeSet<String> = before[0].secondary_ips.iter().chain(&user_ips).cloned().collect();
    assert_eq!(attached.len(), 5);

    let proxy = Ec2FaultProxy::to_localstack().await.expect("proxy");
    let env = [
        ("AWS_EC2_ENDPOINT", proxy.endpoint.as_str()),
        ("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true"),
        // A pool that would grow: nothing of it may reach EC2.
        ("WARM_IP_TARGET", "10"),
        ("IPAMD_RECONCILE_INTERVAL", "1"),
        ("IP_COOLDOWN_PERIOD", "1"),
    ];
    let mut ipamd = fx.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");
    let served = fill(&ipamd, "p").await;
    assert_eq!(served, attached, "the pods hold exactly the IPs attached beforehand (never {opted_out_ips:?})");
    rounds_pass(&ipamd, 3).await;
    for action in MUTATING {
        assert_eq!(proxy.calls(action), 0, "{action} called with provisioning off");
    }
    assert!(proxy.calls("DescribeNetworkInterfaces") > 0, "EC2 is still read");
    let log = ipamd.log_text();
    assert!(log.contains("provisioning off"), "the start says so");
    ipamd.terminate().await;

    // IMDS only: the same node, no EC2 call at all. The pods are restored from the checkpoint, a released IP is
    // served again, and the ENIs are read from IMDS (tags cannot be: the opted-out ENI's IPs are served too).
    let proxy = Ec2FaultProxy::to_localstack().await.expect("proxy");
    let env = [
        ("AWS_EC2_ENDPOINT", proxy.endpoint.as_str()),
        ("ENABLE_IMDS_ONLY_MODE", "true"),
        ("WARM_IP_TARGET", "10"),
        ("IPAMD_RECONCILE_INTERVAL", "1"),
        ("IP_COOLDOWN_PERIOD", "1"),
    ];
    let mut ipamd = fx.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");
    let again = add(&ipamd, "p0").await.expect("a restored pod's ADD");
    assert!(served.contains(&again.ipv4_addr), "p0 keeps its IP: {}", again.ipv4_addr);
    let released = del(&ipamd, "p1").await.expect("DEL").ipv4_addr;
    // Past IP_COOLDOWN_PERIOD.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = fill(&ipamd, "q").await;
    assert!(all.contains(&released), "the released {released} is served again: {all:?}");
    let everything: BTreeSet<String> = attached.iter().chain(&opted_out_ips).cloned().collect();
    assert!(all.is_subset(&everything), "only attached IPs: {all:?}");
    assert!(opted_out_ips.iter().all(|ip| all.contains(ip)), "IMDS shows no tags: {all:?}");
    rounds_pass(&ipamd, 3).await;
    assert_eq!(proxy.total_calls(), 0, "ENABLE_IMDS_ONLY_MODE made EC2 calls");
    ipamd.terminate().await;
    let after = fx.enis().await;
    let counts = |e: &[vpc_sim::localstack::NodeEni]| e.iter().map(|e| e.secondary_ips.len()).collect::<Vec<_>>();
    assert_eq!(counts(&after), counts(&before), "EC2 ends holding exactly what the operator attached");
    fx.cleanup().await;
}

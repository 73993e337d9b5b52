//! Migration from aws-node (LocalStack, no namespaces): a node whose primary ENI already holds the IPs of
//! three running pods, and aws-vpc-cni's checkpoint for them (both layouts it has written, fixtures in
//! tests/fixtures/aws-node/). At ipamd's first start the pods keep their IPs: listed as theirs, never handed to a
//! new pod, released by their DEL under the key the plugin sends. A second start does not import again.

use std::collections::BTreeSet;
use std::time::Duration;

use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::{NodeFixture, add_retrying, del};

const FIXTURE_IPS: [&str; 3] = ["10.0.41.17", "10.0.37.203", "10.0.52.9"];

async fn migrate(fixture: &str, with_pod_names: bool) {
    let fx = NodeFixture::in_subnet(&format!("migrate-{fixture}"), "t3.medium", "10.0.32.0/19").await;
    // What aws-node had assigned in EC2 for its pods.
    let primary = fx.enis().await[0].id.clone();
    fx.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&primary)
        .set_private_ip_addresses(Some(FIXTURE_IPS.iter().map(|s| s.to_string()).collect()))
        .send()
        .await
        .expect("AssignPrivateIpAddresses");
    let aws_file = fx.dir.path().join("aws-node-ipam.json");
    std::fs::copy(vpc_sim::kubeapi::repo_root().join("tests/fixtures/aws-node").join(fixture), &aws_file).unwrap();
    let env = [("IPAMD_AWS_NODE_CHECKPOINT", aws_file.to_str().unwrap())];
    let mut ipamd = fx.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");

    let list = ipamd.introspection().await.list_allocations(pb::ListAllocationsRequest {}).await.unwrap().into_inner();
    let imported: BTreeSet<String> = list.allocations.iter().map(|a| a.ipv4_addr.clone()).collect();
    assert_eq!(imported, FIXTURE_IPS.iter().map(|s| s.to_string()).collect(), "{fixture}");
    let named = list.allocations.iter().filter(|a| !a.k8s_pod_name.is_empty()).count();
    assert_eq!(named, if with_pod_names { 3 } else { 0 }, "{fixture}: {:?}", list.allocations);
    let enis = ipamd.introspection().await.list_enis(pb::ListEnisRequest {}).await.unwrap().into_inner();
    for ip in FIXTURE_IPS {
        let state = enis.enis.iter().flat_map(|e| &e.ips).find(|i| i.address == ip).map(|i| i.state.clone());
        assert_eq!(state.as_deref(), Some("assigned"), "{fixture}: {ip}");
    }
    // Every other IP the node can hold goes to new pods; none of the imported ones does.
    for i in 0..10 {
        let r = add_retrying(&ipamd, &format!("new-{i}"), Duration::from_secs(30)).await.expect("add");
        assert!(!FIXTURE_IPS.contains(&r.ipv4_addr.as_str()), "{fixture}: {} handed out again", r.ipv4_addr);
    }
    // The imported pod's DEL, as the plugin sends it after the switch, releases its IP.
    let first = list.allocations.iter().find(|a| a.ipv4_addr == FIXTURE_IPS[0]).unwrap();
    let r = del(&ipamd, &first.key.clone().unwrap().container_id).await.unwrap();
    assert!(r.released && r.ipv4_addr == FIXTURE_IPS[0], "{fixture}: {r:?}");
    // A restart reads our own checkpoint: the released IP is not imported again.
    ipamd.terminate().await;
    let mut ipamd = fx.spawn_ipamd(&env);
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING again");
    let again = ipamd.introspection().await.list_allocations(pb::ListAllocationsRequest {}).await.unwrap().into_inner();
    assert!(again.allocations.iter().all(|a| a.ipv4_addr != FIXTURE_IPS[0]), "{fixture}: imported twice");
    assert_eq!(again.allocations.len(), 12, "{fixture}");
    ipamd.terminate().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn aws_node_checkpoint_without_pod_metadata_is_imported() {
    migrate("ipam-v1.json", false).await;
}

#[tokio::test]
async fn aws_node_checkpoint_with_pod_metadata_is_imported() {
    migrate("ipam-v2.json", true).await;
}

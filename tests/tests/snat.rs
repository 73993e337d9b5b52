//! Node SNAT in vpc-sim (root + netns): with the default, pods' traffic to the internet host arrives from the
//! node's primary IP (pods on secondary ENIs included); with AWS_VPC_K8S_CNI_EXTERNALSNAT=true it arrives from
//! the pod IP, secondary-ENI pods leaving through their own ENI. Inside the VPC sources are never rewritten,
//! and that includes a CIDR associated with the VPC while ipamd runs.

use std::time::Duration;

use serde_json::Value;
use vpc_sim::localstack::{self, node_enis};
use vpc_sim::netns::ip_in;
use vpc_sim::sim::fabric::INTERNET_HOST;
use vpc_sim::sim::pods::{Pod, pod_ip};
use vpc_sim::testkit::{SimProc, tcp_peer_seen, wait_until};

/// A peer in a CIDR the VPC does not have yet, behind the VPC router (in the sim's internet namespace).
const LATER_CIDR: &str = "10.77.0.0/16";
const LATER_PEER: &str = "10.77.0.10";

/// A CIDR associated with the VPC while ipamd runs: traffic from a pod to it is SNATed before, and keeps the
/// pod's IP once ipamd has read the CIDR from IMDS and rewritten the node's SNAT exclusions (no restart).
async fn a_cidr_associated_later_is_not_snated(sim: &SimProc, pods: &[(Pod, String, i32)], node_ip: &str) {
    let (fabric, internet) = (format!("{}-fabric", sim.prefix), format!("{}-internet", sim.prefix));
    ip_in(&internet, &["addr", "add", &format!("{LATER_PEER}/32"), "dev", "eth0"]).unwrap();
    ip_in(&fabric, &["route", "add", LATER_CIDR, "via", INTERNET_HOST]).unwrap();
    // A pod on the primary ENI: its traffic leaves there whatever the destination.
    let (pod, ip, _) = pods.iter().find(|p| p.2 == 0).expect("a pod on the primary ENI");
    let ns = pod.netns().unwrap();
    assert_eq!(tcp_peer_seen(&internet, LATER_PEER, &ns).unwrap(), node_ip, "{LATER_CIDR} is not the VPC's yet");
    let ec2 = localstack::ec2_client();
    ec2.associate_vpc_cidr_block().vpc_id(&sim.record().vpc.vpc_id).cidr_block(LATER_CIDR).send().await.unwrap();
    let table = || vpc_sim::netns::run("ip", &["netns", "exec", &sim.node(0), "nft", "list", "table", "ip", "vpc-cni"]);
    wait_until(&format!("{LATER_CIDR} in the node's SNAT exclusions"), Duration::from_secs(60), || {
        table().is_ok_and(|t| t.contains(LATER_CIDR))
    });
    assert_eq!(&tcp_peer_seen(&internet, LATER_PEER, &ns).unwrap(), ip, "{LATER_CIDR} is the VPC's: not translated");
}

fn add_retrying(p: &Pod) -> Value {
    p.add_retrying(std::time::Duration::from_secs(30)).unwrap_or_else(|e| panic!("ADD {}: {e}", p.name))
}

/// Six pods on node 0 (t3.medium: the sixth is on the secondary ENI); returns (pod, ip, ENI device) each.
async fn six_pods(sim: &SimProc) -> Vec<(Pod, String, i32)> {
    let mut out = Vec::new();
    for i in 0..6 {
        let p = Pod {
            state_dir: sim.state.path().to_path_buf(),
            node: 0,
            namespace: "default".into(),
            name: format!("s{i}"),
            ..Default::default()
        };
        let r = add_retrying(&p);
        let ip = pod_ip(&r);
        out.push((p, ip, -1));
    }
    let enis = node_enis(&localstack::ec2_client(), &sim.record().vpc.instance_ids[0]).await.unwrap();
    for (_, ip, dev) in &mut out {
        *dev = enis.iter().find(|e| e.secondary_ips.contains(ip)).map(|e| e.device_index).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn internet_traffic_is_snated_to_the_node_ip_unless_external_snat() {
    let (snat, external) = std::thread::scope(|s| {
        let a = s.spawn(|| SimProc::start("vs", 1, &[]));
        let b = s.spawn(|| SimProc::start("vx", 1, &["AWS_VPC_K8S_CNI_EXTERNALSNAT=true"]));
        (a.join().unwrap(), b.join().unwrap())
    });

    // Default: SNAT to the node's primary IP, whichever ENI the pod's IP is on.
    let node_ip =
        node_enis(&localstack::ec2_client(), &snat.record().vpc.instance_ids[0]).await.unwrap()[0].primary_ip.clone();
    let table =
        vpc_sim::netns::run("ip", &["netns", "exec", &snat.node(0), "nft", "list", "table", "ip", "vpc-cni"]).unwrap();
    assert!(table.contains(&format!("snat to {node_ip} fully-random")), "{table}");
    let internet = format!("{}-internet", snat.prefix);
    let pods = six_pods(&snat).await;
    assert!(
        pods.iter().any(|p| p.2 == 0) && pods.iter().any(|p| p.2 == 1),
        "pods on both ENIs: {:?}",
        pods.iter().map(|p| p.2).collect::<Vec<_>>()
    );
    for (p, ip, dev) in &pods {
        let seen = tcp_peer_seen(&internet, INTERNET_HOST, &p.netns().unwrap()).unwrap();
        assert_eq!(seen, node_ip, "pod {ip} on device {dev} → internet is SNATed to the node IP");
    }
    // Inside the VPC the pod's own IP stays the source.
    let (a, b) = (&pods[0], &pods[5]);
    assert_eq!(tcp_peer_seen(&b.0.netns().unwrap(), &b.1, &a.0.netns().unwrap()).unwrap(), a.1);
    a_cidr_associated_later_is_not_snated(&snat, &pods, &node_ip).await;

    // External SNAT: the internet host sees pod IPs; secondary-ENI pods leave through their ENI and pass the
    // fabric's source check.
    let internet = format!("{}-internet", external.prefix);
    for (p, ip, dev) in six_pods(&external).await {
        let seen = tcp_peer_seen(&internet, INTERNET_HOST, &p.netns().unwrap()).unwrap();
        assert_eq!(seen, ip, "pod on device {dev} keeps its IP with external SNAT");
        if dev == 1 {
            let rules = ip_in(&external.node(0), &["rule"]).unwrap();
            assert!(rules.contains(&format!("from {ip} lookup 2")), "{rules}");
        }
    }
    drop(snat.stop());
    drop(external.stop());
}

//! Custom networking end to end (root + netns): `vpc-sim up --custom-networking --zones=2` runs the real API
//! server (scripts/kube-apiserver.sh), one node per zone, and per zone a pod subnet, a security group and an
//! ENIConfig named after the zone, selected with ENI_CONFIG_LABEL_DEF=topology.kubernetes.io/zone. Every ENI
//! ipamd creates must sit in its zone's pod subnet with its security group (checked in LocalStack), the primary
//! ENI serves no pod, pods get pod-subnet addresses and reach each other across nodes with their own source
//! IPs, and `vpc-sim pod add|del` keep the Pod objects in step. The pods run through the plugin and conflist
//! ipamd installed itself once SERVING (`--install-cni`). All namespaces belong to the sim.

use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use vpc_sim::fixture::poll_until;
use vpc_sim::ipamd_proc::sibling_binary;
use vpc_sim::kubeapi;
use vpc_sim::localstack::node_enis;
use vpc_sim::sim::pods::{Pod, pod_ip};
use vpc_sim::testkit::{SimProc, ping, tcp_peer_seen};

fn vpcctl_status(sim: &SimProc, node: usize) -> Value {
    let socket = sim.state.path().join(format!("node-{node}/ipamd.sock"));
    let out =
        Command::new(sibling_binary("vpcctl")).arg("--socket").arg(&socket).args(["-o", "json", "status"]).output();
    let out = out.expect("vpcctl");
    assert!(out.status.success(), "vpcctl: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("vpcctl JSON")
}

#[tokio::test]
#[ignore = "needs root + netns"]
async fn pods_get_addresses_from_their_zones_eniconfig_and_reach_each_other() {
    let sim = SimProc::start("cn", 2, &["--custom-networking", "--zones=2", "--install-cni", "WARM_ENI_TARGET=1"]);
    // The pods below go through what ipamd installed once SERVING, not a conflist the sim wrote.
    for node in 0..2 {
        let dir = sim.state.path().join(format!("node-{node}"));
        assert!(dir.join("cni/net.d/10-vpc-cni.conflist").exists() && dir.join("cni/bin/vpc-cni").exists());
        assert!(!dir.join("10-vpc-cni.conflist").exists());
    }
    let rec = sim.record();
    let kube = rec.kube.clone().expect("--kube record");
    let ec2 = vpc_sim::localstack::ec2_client();
    // Subnets: node subnets per zone (10.0.0.0/20 a, 10.0.16.0/20 b), then pod subnets (10.0.32.0/20 a, 10.0.48.0/20 b).
    let pod_subnet_ids = [rec.vpc.subnet_ids[2].clone(), rec.vpc.subnet_ids[3].clone()];
    let pod_cidrs: [Ipv4Net; 2] = ["10.0.32.0/20".parse().unwrap(), "10.0.48.0/20".parse().unwrap()];
    let zones = ["us-east-1a", "us-east-1b"];

    for node in 0..2 {
        let s = vpcctl_status(&sim, node);
        assert_eq!(s["kube_api"], "connected", "{s:#}");
        assert_eq!(s["custom_networking"], true);
        assert_eq!(s["eni_config"], zones[node], "{s:#}");
        assert_eq!(s["eni_config_source"], "label topology.kubernetes.io/zone");
        assert_eq!(s["eni_config_subnet"], pod_subnet_ids[node].as_str());
        assert_eq!(s["eni_config_problem"], "");
        let enis = node_enis(&ec2, &rec.vpc.instance_ids[node]).await.unwrap();
        assert!(enis.len() >= 2, "{enis:?}");
        assert!(enis[0].secondary_ips.is_empty(), "the primary ENI holds no pod IP: {enis:?}");
        for e in &enis[1..] {
            assert_eq!(e.subnet_id, pod_subnet_ids[node], "node {node}: {e:?}");
            // LocalStack lists the instance's groups on attached ENIs too; the zone's pod group must be there.
            assert!(e.security_groups.iter().any(|g| rec.vpc.extra_sg_ids.contains(g)), "{e:?}");
        }
    }

    let pods: Vec<Pod> = (0..4)
        .map(|i| Pod {
            state_dir: sim.state.path().to_path_buf(),
            node: i % 2,
            namespace: "cn".into(),
            name: format!("web-{i}"),
            ..Pod::default()
        })
        .collect();
    let mut ips = Vec::new();
    for p in &pods {
        let r = p.add_retrying(Duration::from_secs(60)).unwrap_or_else(|e| panic!("ADD {}: {e}", p.name));
        let ip = pod_ip(&r);
        assert!(pod_cidrs[p.node].contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()), "{}: {ip}", p.name);
        ips.push(ip);
    }
    for (a, b) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
        assert!(ping(&pods[a].netns().unwrap(), &ips[b]), "{} → {} ({})", pods[a].name, pods[b].name, ips[b]);
    }
    let seen = tcp_peer_seen(&pods[1].netns().unwrap(), &ips[1], &pods[0].netns().unwrap()).unwrap();
    assert_eq!(seen, ips[0], "no NAT inside the VPC");

    let admin = kubeapi::client(&kube.admin).await.unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(admin, "cn");
    for (p, ip) in pods.iter().zip(&ips) {
        let obj = api.get(&p.name).await.expect("the Pod object exists");
        let st = obj.status.unwrap_or_default();
        assert_eq!((st.phase.as_deref(), st.pod_ip.as_deref()), (Some("Running"), Some(ip.as_str())));
        assert_eq!(obj.spec.and_then(|s| s.node_name).as_deref(), Some(kube.nodes[p.node].as_str()));
    }
    for p in &pods {
        p.del(false).unwrap();
        assert!(api.get_opt(&p.name).await.unwrap().is_none(), "{} deleted with its sandbox", p.name);
    }
    for node in 0..2 {
        // DEL frees the IP before the Pod object goes: until ipamd's watch sees the deletion, a GC pass may list
        // the pod's IP as unknown, and the list holds until the next pass (15 s at most here).
        let unknown_gone = |s: &Value| s["unknown_pod_ips"].as_array().unwrap().is_empty();
        let s = poll_until(Duration::from_secs(40), || async { vpcctl_status(&sim, node) }, unknown_gone).await;
        assert!(s["enis_from_other_eni_config"].as_array().unwrap().is_empty(), "{s:#}");
        assert!(s["unknown_pod_ips"].as_array().unwrap().is_empty(), "{s:#}");
    }
    let (_, state) = sim.stop();
    let log = std::fs::read_to_string(state.path().join("sim.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

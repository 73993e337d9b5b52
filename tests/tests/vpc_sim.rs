//! `vpc-sim up` end to end (root + network namespaces): two sims side by side, ENI hot-plug and ipamd's host
//! setup (a route table and rule per secondary ENI), VPC routing and the EC2 source/destination check, and a
//! clean shutdown. Every namespace is created by the sims under a unique prefix and removed by them; the root
//! namespace is never changed.

use std::time::Duration;

use vpc_sim::fixture::poll_until;
use vpc_sim::ipamd_proc::sibling_binary;
use vpc_sim::localstack::{self, NodeEni, node_enis};
use vpc_sim::netns::{self, ip_in, run};
use vpc_sim::testkit::{SimProc, imds_macs, link_mac, ping, wait_until};

async fn enis(instance: &str) -> Vec<NodeEni> {
    node_enis(&localstack::ec2_client(), instance).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn two_sims_wire_the_vpc_enforce_source_checks_and_clean_up() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| SimProc::start("va", 2, &["WARM_ENI_TARGET=2", "DISABLE_TCP_EARLY_DEMUX=true"]));
        let b = s.spawn(|| SimProc::start("vb", 1, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let rec = a.record();

    // Each node: the primary ENI and the warm ENI ipamd attached, with the MACs IMDS reports.
    let mut node_enis_by_idx = Vec::new();
    for (i, instance) in rec.vpc.instance_ids.iter().enumerate() {
        let ns = a.node(i);
        let e = poll_until(Duration::from_secs(20), || enis(instance), |e| e.len() == 2).await;
        assert_eq!(e.iter().map(|x| x.device_index).collect::<Vec<_>>(), vec![0, 1], "WARM_ENI_TARGET=2 on t3.medium");
        let macs = imds_macs(&ns);
        assert_eq!(macs.len(), 2, "{macs:?}");
        for (dev, mac) in &macs {
            let link = format!("ens{}", 5 + dev);
            wait_until(&format!("{link} in {ns}"), Duration::from_secs(5), || link_mac(&ns, &link).is_some());
            assert_eq!(link_mac(&ns, &link).as_deref(), Some(mac.as_str()), "{ns} {link}");
        }
        // ipamd's host setup: table device+1 with the gateway, the ENI-primary-IP rule, no subnet route in main.
        let eni1 = &e[1];
        let rule = format!("32765:\tfrom {} lookup 2", eni1.primary_ip);
        wait_until(&format!("{rule} in {ns}"), Duration::from_secs(20), || {
            ip_in(&ns, &["rule"]).unwrap().contains(&rule)
        });
        let table = ip_in(&ns, &["route", "show", "table", "2"]).unwrap();
        assert!(table.contains("default via 10.0.0.1 dev ens6"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("10.0.0.1 dev ens6") && l.contains("scope link")), "{table}");
        let main = ip_in(&ns, &["route"]).unwrap();
        assert!(!main.contains("dev ens6"), "no route via the secondary ENI in main:\n{main}");
        let addr = ip_in(&ns, &["-4", "-br", "addr", "show", "ens6"]).unwrap();
        assert!(addr.contains(&format!("{}/20", eni1.primary_ip)) && addr.contains("UP"), "{addr}");
        let link: serde_json::Value =
            serde_json::from_str(&ip_in(&ns, &["-j", "link", "show", "ens6"]).unwrap()).unwrap();
        assert_eq!(link[0]["mtu"], 9001, "AWS_VPC_ENI_MTU on the secondary ENI");
        let sysctl = |k: &str| run("ip", &["netns", "exec", &ns, "sysctl", "-n", k]).unwrap().trim().to_string();
        assert_eq!(sysctl("net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl("net.ipv4.conf.ens5.rp_filter"), "2");
        assert_eq!(sysctl("net.ipv4.tcp_early_demux"), "0", "DISABLE_TCP_EARLY_DEMUX=true");
        node_enis_by_idx.push(e);
    }
    // Unset: the node's default stays.
    let sysctl_b = run("ip", &["netns", "exec", &b.node(0), "sysctl", "-n", "net.ipv4.tcp_early_demux"]).unwrap();
    assert_eq!(sysctl_b.trim(), "1", "tcp_early_demux untouched without DISABLE_TCP_EARLY_DEMUX");

    // VPC routing between nodes, through primary and secondary ENIs.
    let (n0, n1) = (a.node(0), a.node(1));
    assert!(ping(&n0, &node_enis_by_idx[1][0].primary_ip), "node 0 → node 1 primary IP");
    assert!(ping(&n0, &node_enis_by_idx[1][1].primary_ip), "node 0 → node 1 secondary ENI IP");
    assert!(ping(&n1, &node_enis_by_idx[0][1].primary_ip), "node 1 → node 0 secondary ENI IP");

    // Source/destination check: out of node 0's secondary ENI with the primary ENI's IP as source → dropped;
    // with the secondary ENI's own IP → delivered.
    let dst = node_enis_by_idx[1][0].primary_ip.clone();
    let spoof = |src: &str| {
        ip_in(&n0, &["route", "replace", &format!("{dst}/32"), "via", "10.0.0.1", "dev", "ens6", "src", src, "onlink"])
            .unwrap();
        let ok = ping(&n0, &dst);
        ip_in(&n0, &["route", "del", &format!("{dst}/32")]).unwrap();
        ok
    };
    assert!(!spoof(&node_enis_by_idx[0][0].primary_ip), "the fabric must drop a foreign source IP");
    assert!(spoof(&node_enis_by_idx[0][1].primary_ip), "the ENI's own IP passes the source check");

    let status =
        run(sibling_binary("vpc-sim").to_str().unwrap(), &["status", "--state-dir", a.state.path().to_str().unwrap()])
            .unwrap();
    assert!(
        status.contains(&format!("node 1: {}", rec.vpc.instance_ids[1])) && status.contains("lookup 2"),
        "{status}"
    );

    // Hot-plug and unplug: an ENI of this node's ipamd (its instance tag: say one a crashed ipamd attached before
    // it checkpointed) appears in the node; ipamd adopts it, finds it surplus, detaches and deletes it; the link
    // and its table and rule go with it. (ENIs ipamd did not create are left alone: ipamd_localstack.rs.)
    let ec2 = localstack::ec2_client();
    let tag = aws_sdk_ec2::types::Tag::builder()
        .key(ipamd::reconcile::TAG_INSTANCE_ID)
        .value(&rec.vpc.instance_ids[1])
        .build();
    let spec = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
        .tags(tag)
        .build();
    let extra =
        ec2.create_network_interface().subnet_id(&rec.vpc.subnet_ids[0]).tag_specifications(spec).send().await.unwrap();
    let extra = extra.network_interface().unwrap().network_interface_id().unwrap().to_string();
    ec2.attach_network_interface()
        .network_interface_id(&extra)
        .instance_id(&rec.vpc.instance_ids[1])
        .device_index(2)
        .send()
        .await
        .unwrap();
    let exists = || async { localstack::eni_exists(&ec2, &extra).await.unwrap() };
    let exists = poll_until(Duration::from_secs(30), exists, |e| !e).await;
    assert!(!exists, "ipamd gives back an idle surplus ENI");
    wait_until("ens7 to leave node 1 and its table 3 rule", Duration::from_secs(20), || {
        link_mac(&n1, "ens7").is_none() && !ip_in(&n1, &["rule"]).unwrap().contains("lookup 3")
    });
    // The sim polls EC2, so one line may count several ENIs: add up what it reports. It prints a line after it
    // has moved the links, so the unplug line may trail the link's removal by a moment.
    let hot_plugs = |log: &str| {
        let (mut added, mut removed) = (0, 0);
        for l in log.lines().filter_map(|l| l.strip_prefix("vpc-sim: hot-plug: ")) {
            let n: Vec<u32> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
            added += n.first().copied().unwrap_or(0);
            removed += n.get(1).copied().unwrap_or(0);
        }
        (added, removed)
    };
    let log = poll_until(Duration::from_secs(10), || async { a.log() }, |log| hot_plugs(log).1 > 0).await;
    let (added, removed) = hot_plugs(&log);
    assert!(added >= 1 && removed >= 1, "hot-plug and unplug seen by the sim:\n{log}");
    let table3 = ip_in(&n1, &["route", "show", "table", "3"]).expect("ip route show table 3 in node 1");
    assert!(table3.trim().is_empty(), "table 3 left behind: {table3}");

    // The second sim runs beside the first in its own namespaces.
    let rb = b.record();
    let b0 = b.node(0);
    assert!(link_mac(&b0, "ens5").is_some());
    assert!(ping(&b0, "10.0.0.1"), "sim b node 0 reaches its gateway");
    assert_ne!(rb.vpc.vpc_id, rec.vpc.vpc_id);

    // SIGTERM: no namespace, process or EC2 resource left.
    for (sim, rec) in [(a, rec), (b, rb)] {
        let (prefix, _state) = sim.stop();
        assert!(netns::list(&prefix).is_empty(), "{:?}", netns::list(&prefix));
        for pid in &rec.pids {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "ipamd {pid} still running");
        }
        // Only EC2's "not found" means gone: any other error (LocalStack down, a bad request) fails the check.
        let vpcs = unless_not_found(ec2.describe_vpcs().vpc_ids(&rec.vpc.vpc_id).send().await, "DescribeVpcs");
        assert!(vpcs.is_none_or(|o| o.vpcs().is_empty()), "VPC {} still exists", rec.vpc.vpc_id);
        let inst = unless_not_found(
            ec2.describe_instances().set_instance_ids(Some(rec.vpc.instance_ids.clone())).send().await,
            "DescribeInstances",
        );
        let live = inst.map_or(0, |o| {
            o.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()).is_none_or(|n| n.as_str() != "terminated"))
                .count()
        });
        assert_eq!(live, 0, "instances of {} not terminated", rec.vpc.vpc_id);
    }
}

/// The answer, `None` when EC2 says the resource does not exist; any other failure panics with its code.
fn unless_not_found<T, E>(r: Result<T, aws_sdk_ec2::error::SdkError<E>>, op: &str) -> Option<T>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::fmt::Debug,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    match r {
        Ok(v) => Some(v),
        Err(e) if e.code().is_some_and(|c| c.ends_with(".NotFound")) => None,
        Err(e) => panic!("{op}: {:?}: {e:?}", e.code()),
    }
}

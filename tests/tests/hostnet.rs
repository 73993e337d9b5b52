//! ipamd's secondary-ENI host setup against the real kernel (root + netns): a fresh namespace with a veth
//! link standing in for a hot-plugged ENI, netlink opened inside it, setup run twice (the second run must
//! change nothing), then the ENI's table and rule removed when it goes away.

use std::time::Duration;

use datapath::{self, EniNet, netlink::Netlink};
use vpc_sim::netns::{self, ip_in};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

#[tokio::test]
#[ignore = "needs root + netns"]
async fn setup_is_idempotent_and_removal_leaves_nothing() {
    let ns = Ns(format!("vpcsimh-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    ip_in(&ns.0, &["link", "add", "ens6", "address", "02:00:0a:00:05:09", "type", "veth", "peer", "name", "fabric0"])
        .unwrap();
    ip_in(&ns.0, &["link", "set", "fabric0", "up"]).unwrap();
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let eni = EniNet {
        mac: "02:00:0a:00:05:09".into(),
        device_number: 1,
        primary_ip: "10.0.5.9".parse().unwrap(),
        subnet: "10.0.0.0/20".parse().unwrap(),
        mtu: 9001,
    };
    let first = datapath::setup_eni(&net, &eni, Duration::from_secs(1)).await.unwrap();
    assert!(first >= 5, "{first}");
    let snapshot = || {
        ["link", "addr", "rule", "route show table all"]
            .map(|c| ip_in(&ns.0, &c.split(' ').collect::<Vec<_>>()).unwrap())
            .join("\n")
    };
    let before = snapshot();
    assert_eq!(datapath::setup_eni(&net, &eni, Duration::ZERO).await.unwrap(), 0, "second run changes nothing");
    assert_eq!(snapshot(), before);

    assert!(before.contains("32765:\tfrom 10.0.5.9 lookup 2"), "{before}");
    let t2 = ip_in(&ns.0, &["route", "show", "table", "2"]).unwrap();
    assert!(
        t2.contains("default via 10.0.0.1 dev ens6") && t2.contains("10.0.0.1 dev ens6 proto 118 scope link"),
        "{t2}"
    );
    let main = ip_in(&ns.0, &["route"]).unwrap();
    assert!(!main.contains("10.0.0.0/20"), "kernel subnet route removed from main: {main}");
    assert!(ip_in(&ns.0, &["link", "show", "ens6"]).unwrap().contains("mtu 9001"));

    // The ENI is gone (detached): its rule and table go.
    ip_in(&ns.0, &["link", "del", "ens6"]).unwrap();
    assert!(datapath::remove_stale_tables(&net, &[]).await.unwrap() >= 1);
    assert!(!ip_in(&ns.0, &["rule"]).unwrap().contains("lookup 2"));
    assert!(ip_in(&ns.0, &["route", "show", "table", "2"]).unwrap().trim().is_empty());
}

/// Clean-up removes only what ipamd made (rules and routes carry protocol 118): another tool's rule at 32765,
/// a rule added without a priority (the kernel puts it at 32765 too), a route someone put in an ENI's table, and
/// the same ENI rule made earlier by aws-node (taken over as ours) — only ours goes when the ENI does.
#[tokio::test]
#[ignore = "needs root + netns"]
async fn clean_up_removes_only_our_own_rules_and_routes() {
    let ns = Ns(format!("vpcsimh-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    let ip = |args: &str| ip_in(&ns.0, &args.split(' ').collect::<Vec<_>>()).unwrap();
    ip("link add ens6 address 02:00:0a:00:05:09 type veth peer name fabric0");
    ip("link add other0 type veth peer name other1");
    ip("link set other0 up");
    // Before ipamd: a boot rule without a priority (first: the kernel puts it just above main's 32766, at 32765),
    // aws-node's rule for this ENI, another tool's rule at 32765, a route of its own in table 2.
    ip("rule add from 10.9.9.7 lookup 100");
    ip("rule add priority 32765 from 10.0.5.9 lookup 2");
    ip("rule add priority 32765 from 10.9.9.9 lookup 3");
    ip("route add 10.8.0.0/16 dev other0 table 2");
    ip("route add 10.7.0.0/16 dev other0 table 3");
    assert!(ip("rule").contains("32765:\tfrom 10.9.9.7 lookup 100"), "{}", ip("rule"));
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let eni = EniNet {
        mac: "02:00:0a:00:05:09".into(),
        device_number: 1,
        primary_ip: "10.0.5.9".parse().unwrap(),
        subnet: "10.0.0.0/20".parse().unwrap(),
        mtu: 9001,
    };
    datapath::setup_eni(&net, &eni, Duration::from_secs(1)).await.unwrap();
    assert_eq!(datapath::setup_eni(&net, &eni, Duration::ZERO).await.unwrap(), 0, "second run changes nothing");
    let rules = ip("-d rule");
    assert_eq!(rules.matches("from 10.0.5.9 lookup 2").count(), 1, "aws-node's rule taken over, not doubled: {rules}");
    assert!(rules.contains("from 10.0.5.9 lookup 2 proto 118"), "{rules}");
    assert!(ip("route show table 2").contains("10.8.0.0/16 dev other0"), "a foreign route in table 2 stays");

    ip("link del ens6");
    datapath::remove_stale_tables(&net, &[]).await.unwrap();
    let rules = ip("rule");
    assert!(!rules.contains("lookup 2"), "our rule goes with the ENI: {rules}");
    for theirs in ["32765:\tfrom 10.9.9.9 lookup 3", "32765:\tfrom 10.9.9.7 lookup 100"] {
        assert!(rules.contains(theirs), "another tool's rule `{theirs}` was removed: {rules}");
    }
    assert!(ip("route show table 2").contains("10.8.0.0/16 dev other0"), "a foreign route in table 2 was removed");
    assert!(ip("route show table 3").contains("10.7.0.0/16 dev other0"), "a foreign table was emptied");
}

/// A rule already there (left by an earlier sandbox that had the same IP) does not make adding it fail:
/// the kernel cannot replace a rule, so the add is idempotent instead.
#[tokio::test]
#[ignore = "needs root + netns"]
async fn adding_an_existing_rule_succeeds_and_keeps_one_copy() {
    use datapath::{HostNet, Rule};
    let ns = Ns(format!("vpcsimh-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let rule = Rule {
        priority: 1536,
        src: Some("10.0.5.20/32".parse().unwrap()),
        dst: None,
        fwmark: None,
        table: 2,
        proto: datapath::RTPROT_VPC_CNI,
    };
    net.add_rule(&rule).await.unwrap();
    net.add_rule(&rule).await.expect("the same rule again");
    let rules = ip_in(&ns.0, &["rule"]).unwrap();
    assert_eq!(rules.matches("from 10.0.5.20 lookup 2").count(), 1, "{rules}");
}

/// The NodePort rule follows AWS_VPC_K8S_CNI_CONNMARK (a changed mark replaces ours) and
/// AWS_VPC_CNI_NODE_PORT_SUPPORT (off: ours removed); another tool's rule at its priority stays.
#[tokio::test]
#[ignore = "needs root + netns"]
async fn the_nodeport_rule_follows_the_connmark_and_the_switch() {
    let ns = Ns(format!("vpcsimh-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    let ip = |args: &str| ip_in(&ns.0, &args.split(' ').collect::<Vec<_>>()).unwrap();
    ip("rule add priority 1024 fwmark 0x1/0x1 lookup 7");
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let at_1024 = || ip("-d rule").lines().filter(|l| l.starts_with("1024:")).map(String::from).collect::<Vec<_>>();
    assert!(datapath::ensure_nodeport_rule(&net, Some(0x80)).await.unwrap());
    assert!(!datapath::ensure_nodeport_rule(&net, Some(0x80)).await.unwrap(), "in place: nothing to do");
    assert!(at_1024().iter().any(|l| l.contains("fwmark 0x80/0x80 lookup main proto 118")), "{:?}", at_1024());
    assert!(datapath::ensure_nodeport_rule(&net, Some(0x4000)).await.unwrap());
    let rules = at_1024();
    assert!(rules.iter().any(|l| l.contains("fwmark 0x4000/0x4000 lookup main proto 118")), "{rules:?}");
    assert!(!rules.iter().any(|l| l.contains("0x80/0x80")), "the old mark's rule is gone: {rules:?}");
    assert!(datapath::ensure_nodeport_rule(&net, None).await.unwrap());
    assert_eq!(at_1024().len(), 1, "only the other tool's rule is left: {:?}", at_1024());
    assert!(at_1024()[0].contains("fwmark 0x1/0x1 lookup 7"), "{:?}", at_1024());
}

/// AWS_EXTERNAL_SERVICE_CIDRS: one `to <cidr> lookup main` rule at 1535 per CIDR; a CIDR dropped from the
/// setting loses its rule, another tool's rule at 1535 stays.
#[tokio::test]
#[ignore = "needs root + netns"]
async fn external_service_cidrs_get_main_table_rules_ahead_of_the_pods() {
    let ns = Ns(format!("vpcsimh-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    let ip = |args: &str| ip_in(&ns.0, &args.split(' ').collect::<Vec<_>>()).unwrap();
    ip("rule add priority 1535 to 172.16.0.0/12 lookup 9");
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let at_1535 = || ip("-d rule").lines().filter(|l| l.starts_with("1535:")).map(String::from).collect::<Vec<_>>();
    let cidrs: Vec<ipnet::Ipv4Net> = vec!["10.100.0.0/16".parse().unwrap(), "192.168.7.0/24".parse().unwrap()];
    assert_eq!(datapath::ensure_external_service_rules(&net, &cidrs).await.unwrap(), 2);
    assert_eq!(datapath::ensure_external_service_rules(&net, &cidrs).await.unwrap(), 0, "in place");
    let rules = at_1535();
    for c in ["10.100.0.0/16", "192.168.7.0/24"] {
        assert!(rules.iter().any(|l| l.contains(&format!("to {c} lookup main proto 118"))), "{c}: {rules:?}");
    }
    assert_eq!(datapath::ensure_external_service_rules(&net, &cidrs[1..]).await.unwrap(), 1);
    let rules = at_1535();
    assert!(!rules.iter().any(|l| l.contains("10.100.0.0/16")), "a dropped CIDR's rule goes: {rules:?}");
    assert!(rules.iter().any(|l| l.contains("to 172.16.0.0/12 lookup 9")), "another tool's rule stays: {rules:?}");
}

/// The plugin's lookup of one address's host route (a late DEL asks whose the IP is): one FIB lookup that
/// answers the /32 itself, whatever the default and subnet routes around it, and nothing for an address that
/// has no /32 of its own.
#[tokio::test]
#[ignore = "needs root + netns"]
async fn the_host_route_of_an_address_is_found_without_a_dump() {
    let ns = Ns(format!("vpcsimr-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    for args in [
        "link add veth-a type veth peer name veth-b",
        "link set veth-a up",
        "link set veth-b up",
        "addr add 10.0.0.10/20 dev veth-b",
        "route add default via 10.0.0.1 dev veth-b",
        "route add 10.0.0.77/32 dev veth-a scope link",
    ] {
        ip_in(&ns.0, &args.split(' ').collect::<Vec<_>>()).unwrap();
    }
    let net = Netlink::in_netns(&netns::path(&ns.0)).unwrap();
    let veth_a = net.link_by_name("veth-a").await.unwrap().expect("veth-a").index;
    let held = net.host_route_of("10.0.0.77".parse().unwrap()).await.unwrap().expect("the /32");
    assert_eq!((held.dst.to_string().as_str(), held.oif), ("10.0.0.77/32", Some(veth_a)));
    // Inside the subnet, and outside it (the default route): no /32 of its own.
    assert_eq!(net.host_route_of("10.0.0.78".parse().unwrap()).await.unwrap(), None);
    assert_eq!(net.host_route_of("192.0.2.1".parse().unwrap()).await.unwrap(), None);
    ip_in(&ns.0, &["route", "del", "default"]).unwrap();
    assert_eq!(net.host_route_of("192.0.2.1".parse().unwrap()).await.unwrap(), None, "no route at all");
}

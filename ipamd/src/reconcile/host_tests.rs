//! The host side of a reconcile round against the real kernel (root + netns): an ENI that EC2 shows attached but
//! IMDS skipped for a round keeps its table and rule (its pods route through them).

use std::process::Command;

use super::testrig::rig;
use crate::planner::Targets;
use crate::state::datastore::ObservedEni;

struct Ns(String);

impl Ns {
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", &self.0]).args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
#[ignore = "needs root + netns"]
async fn an_eni_imds_skipped_for_a_round_keeps_its_table() {
    let ns = Ns(format!("vpcsimr-{:04x}", std::process::id() as u16));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    ns.ip(&["link", "add", "ens6", "address", "02:00:0a:00:05:09", "type", "veth", "peer", "name", "fabric0"]);
    let net = datapath::netlink::Netlink::in_netns(&std::path::Path::new("/var/run/netns").join(&ns.0)).unwrap();
    let mut rig = rig(Targets::default()).await;
    let mut observed = vec![ObservedEni {
        id: "eni-second".into(),
        mac: "02:00:0a:00:05:09".into(),
        device_number: 1,
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.0.0/20".parse().unwrap(),
        primary_ip: "10.0.5.9".parse().unwrap(),
        secondary_ips: Vec::new(),
        unconfirmed: Vec::new(),
        ready: false,
        prefixes: Vec::new(),
        fallback: false,
    }];
    assert!(rig.r.sync_host(&net, &mut observed).await.is_empty());
    assert!(observed[0].ready);
    let wired = |when: &str| {
        let rules = ns.ip(&["rule"]);
        assert!(rules.contains("from 10.0.5.9 lookup 2"), "{when}: the ENI's rule is gone:\n{rules}");
        let t2 = ns.ip(&["route", "show", "table", "2"]);
        assert!(t2.contains("default via 10.0.0.1"), "{when}: the ENI's table is gone:\n{t2}");
    };
    wired("after the first round");

    // IMDS does not list it this round (no MAC): not ready, but EC2 says attached, so its table stays.
    observed[0].mac.clear();
    assert!(rig.r.sync_host(&net, &mut observed).await.is_empty());
    assert!(!observed[0].ready);
    wired("after a round IMDS skipped it");

    // Detached (EC2 no longer lists it): now it goes.
    assert!(rig.r.sync_host(&net, &mut []).await.is_empty());
    assert!(!ns.ip(&["rule"]).contains("lookup 2"));
}

//! Host setup logic against a recording in-memory fake of the netlink boundary (the real kernel is exercised
//! by the root + netns tests in `tests/`).

use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct FakeNet {
    links: Mutex<Vec<Link>>,
    addrs: Mutex<Vec<(u32, Ipv4Net)>>,
    routes: Mutex<Vec<Route>>,
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<Vec<String>>,
}

impl FakeNet {
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
}

impl HostNet for FakeNet {
    async fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(self.links.lock().unwrap().clone())
    }
    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), HostNetError> {
        self.record(format!("set_link {index} {mtu} {up}"));
        for l in self.links.lock().unwrap().iter_mut().filter(|l| l.index == index) {
            l.mtu = mtu;
            l.up = up;
        }
        Ok(())
    }
    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>, HostNetError> {
        Ok(self.addrs.lock().unwrap().iter().filter(|(i, _)| *i == index).map(|(_, a)| *a).collect())
    }
    async fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<(), HostNetError> {
        self.record(format!("add_address {index} {addr}"));
        self.addrs.lock().unwrap().push((index, addr));
        // As the kernel does: a prefix route in main.
        self.routes.lock().unwrap().push(Route {
            dst: addr.trunc(),
            gateway: None,
            oif: Some(index),
            table: MAIN_TABLE,
            scope_link: true,
            proto: 2, // RTPROT_KERNEL
        });
        Ok(())
    }
    async fn routes(&self, table: u32) -> Result<Vec<Route>, HostNetError> {
        Ok(self.routes.lock().unwrap().iter().filter(|r| r.table == table).cloned().collect())
    }
    async fn add_route(&self, route: &Route) -> Result<(), HostNetError> {
        self.record(format!("add_route {route:?}"));
        self.routes.lock().unwrap().push(route.clone());
        Ok(())
    }
    async fn del_route(&self, route: &Route) -> Result<(), HostNetError> {
        self.record(format!("del_route {route:?}"));
        // As the kernel: the first match; a protocol in the request must match too (unspec is any).
        let mut routes = self.routes.lock().unwrap();
        if let Some(i) = routes.iter().position(|r| r == route && (route.proto == RTPROT_ANY || r.proto == route.proto))
        {
            routes.remove(i);
        }
        Ok(())
    }
    async fn rules(&self) -> Result<Vec<Rule>, HostNetError> {
        Ok(self.rules.lock().unwrap().clone())
    }
    async fn add_rule(&self, rule: &Rule) -> Result<(), HostNetError> {
        self.record(format!("add_rule {rule:?}"));
        self.rules.lock().unwrap().push(rule.clone());
        Ok(())
    }
    async fn del_rule(&self, rule: &Rule) -> Result<(), HostNetError> {
        self.record(format!("del_rule {rule:?}"));
        let mut rules = self.rules.lock().unwrap();
        if let Some(i) = rules.iter().position(|r| r == rule && (rule.proto == RTPROT_ANY || r.proto == rule.proto)) {
            rules.remove(i);
        }
        Ok(())
    }
}

fn eni() -> EniNet {
    EniNet {
        mac: "02:00:00:00:00:02".into(),
        device_number: 1,
        primary_ip: "10.0.5.9".parse().unwrap(),
        subnet: "10.0.0.0/20".parse().unwrap(),
        mtu: 9001,
    }
}

fn node() -> FakeNet {
    let net = FakeNet::default();
    net.links.lock().unwrap().push(Link {
        index: 7,
        name: "ens6".into(),
        mac: "02:00:00:00:00:02".into(),
        mtu: 1500,
        up: false,
        alias: None,
    });
    net
}

#[tokio::test]
async fn secondary_eni_gets_its_table_rule_and_no_main_subnet_route() {
    let net = node();
    let changes = setup_eni(&net, &eni(), Duration::ZERO).await.unwrap();
    assert!(changes >= 5, "{:?}", net.calls.lock().unwrap());
    let link = net.links.lock().unwrap()[0].clone();
    assert_eq!((link.mtu, link.up), (9001, true));
    let t2 = net.routes(2).await.unwrap();
    assert!(t2.iter().any(|r| r.dst.to_string() == "10.0.0.1/32" && r.scope_link && r.oif == Some(7)));
    assert!(t2.iter().any(|r| r.dst.prefix_len() == 0 && r.gateway == Some("10.0.0.1".parse().unwrap())));
    assert!(net.routes(MAIN_TABLE).await.unwrap().is_empty(), "subnet route removed from main");
    assert_eq!(
        net.rules.lock().unwrap().clone(),
        vec![Rule {
            priority: 32765,
            src: Some("10.0.5.9/32".parse().unwrap()),
            dst: None,
            fwmark: None,
            table: 2,
            proto: RTPROT_VPC_CNI
        }]
    );
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let net = node();
    setup_eni(&net, &eni(), Duration::ZERO).await.unwrap();
    let before = net.calls.lock().unwrap().len();
    assert_eq!(setup_eni(&net, &eni(), Duration::ZERO).await.unwrap(), 0);
    assert_eq!(net.calls.lock().unwrap().len(), before, "no writes on the second run");
}

#[tokio::test]
async fn missing_link_is_waited_for_then_reported() {
    let net = FakeNet::default();
    let err = setup_eni(&net, &eni(), Duration::from_millis(120)).await.unwrap_err();
    assert!(matches!(err, HostNetError::LinkMissing { .. }), "{err}");
}

#[tokio::test]
async fn detached_enis_lose_their_rule_and_table() {
    let net = node();
    setup_eni(&net, &eni(), Duration::ZERO).await.unwrap();
    assert_eq!(remove_stale_tables(&net, &[2]).await.unwrap(), 0, "an attached ENI's table stays");
    assert_eq!(remove_stale_tables(&net, &[]).await.unwrap(), 3);
    assert!(net.rules.lock().unwrap().is_empty() && net.routes(2).await.unwrap().is_empty());
}

#[test]
fn sysctls_are_written_only_when_different() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("net/ipv4/conf/ens5")).unwrap();
    std::fs::write(root.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
    std::fs::write(root.path().join("net/ipv4/conf/ens5/rp_filter"), "1\n").unwrap();
    assert_eq!(node_sysctls(root.path(), "ens5").unwrap(), 2);
    assert_eq!(node_sysctls(root.path(), "ens5").unwrap(), 0);
    assert_eq!(std::fs::read_to_string(root.path().join("net/ipv4/conf/ens5/rp_filter")).unwrap(), "2");
}

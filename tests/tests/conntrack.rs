//! ipamd's conntrack clean-up against the real kernel (root + netns): flows of an IP are deleted over ctnetlink,
//! other flows stay.

use std::net::UdpSocket;

use datapath::conntrack;
use vpc_sim::netns::{self, in_netns, run_stdin};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn udp(from: &str, to: &str) {
    let s = UdpSocket::bind(format!("{from}:0")).unwrap();
    s.send_to(b"x", format!("{to}:9")).unwrap();
}

/// A fresh namespace whose output is tracked (a stateful rule makes it track connections).
fn tracked_ns() -> Ns {
    let ns = Ns(format!("vpcsimc-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    run_stdin(
        "ip",
        &["netns", "exec", &ns.0, "nft", "-f", "-"],
        "table ip t {\n chain c { type filter hook output priority 0; ct state new accept; }\n}\n",
    )
    .unwrap();
    ns
}

#[test]
#[ignore = "needs root + netns"]
fn forget_deletes_only_the_released_ips_flows() {
    let ns = tracked_ns();
    let (gone, kept) = in_netns(&ns.0, || {
        udp("127.0.0.1", "127.0.0.2");
        udp("127.0.0.1", "127.0.0.3");
        let released: std::net::Ipv4Addr = "127.0.0.2".parse().unwrap();
        let other: std::net::Ipv4Addr = "127.0.0.3".parse().unwrap();
        assert_eq!(conntrack::count(released).unwrap(), 1);
        let n = conntrack::forget(released).unwrap();
        assert_eq!(n, 1);
        Ok((conntrack::count(released).unwrap(), conntrack::count(other).unwrap()))
    })
    .unwrap();
    assert_eq!((gone, kept), (0, 1));
}

/// ipamd's janitor flushes released IPs in batches: one dump deletes the flows of every IP in the batch, in
/// either direction, and no other.
#[test]
#[ignore = "needs root + netns"]
fn forget_many_deletes_each_released_ips_flows_in_one_pass() {
    let ns = tracked_ns();
    let left = in_netns(&ns.0, || {
        udp("127.0.0.1", "127.0.0.2");
        udp("127.0.0.4", "127.0.0.1");
        udp("127.0.0.1", "127.0.0.3");
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let n = conntrack::forget_many(&[ip("127.0.0.2"), ip("127.0.0.4")]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(conntrack::forget_many(&[]).unwrap(), 0);
        Ok(["127.0.0.2", "127.0.0.4", "127.0.0.3"].map(|s| conntrack::count(ip(s)).unwrap()))
    })
    .unwrap();
    assert_eq!(left, [0, 0, 1]);
}

//! ipamd's conntrack clean-up against the real kernel (root + netns): flows of an IP are deleted over ctnetlink,
//! other flows stay.

use std::net::UdpSocket;

use ipamd::hostnet::conntrack;
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

#[test]
#[ignore = "needs root + netns"]
fn forget_deletes_only_the_released_ips_flows() {
    let ns = Ns(format!("vpcsimc-{:04x}", rand::random::<u16>()));
    netns::create(&ns.0).unwrap();
    // A stateful rule makes the namespace track connections.
    run_stdin(
        "ip",
        &["netns", "exec", &ns.0, "nft", "-f", "-"],
        "table ip t {\n chain c { type filter hook output priority 0; ct state new accept; }\n}\n",
    )
    .unwrap();
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

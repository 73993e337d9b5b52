//! The VPC fabric: one namespace that plays the VPC router. Every attached ENI is a veth pair, the node end
//! (`ens<5+device>`, the ENI's MAC) in its node namespace and the fabric end (`n<node>d<device>`) here. The
//! fabric routes each private IP to the link of the ENI that holds it, with a permanent neighbour entry for the
//! ENI's MAC (EC2 needs no ARP for secondary IPs), answers as every subnet's gateway (base + 1) and, by proxy
//! ARP, for every address in the subnet, and drops packets whose source is not one of the sending ENI's IPs
//! (strict reverse-path filtering: each IP's only route is its own ENI's link). 203.0.113.0/24 is the
//! "internet" namespace, reached without NAT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netns::{self, NetnsError, ip_batch, ip_in, sysctl_in};

pub const INTERNET_HOST: &str = "203.0.113.10";
const INTERNET_GW: &str = "203.0.113.1";
pub const ENI_MTU: u32 = 9001;

/// One ENI attached to one sim node, as EC2 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedEni {
    pub node: usize,
    pub device: u32,
    pub eni_id: String,
    pub mac: String,
    pub subnet: Ipv4Net,
    pub primary_ip: Ipv4Addr,
    pub ips: BTreeSet<Ipv4Addr>,
}

impl AttachedEni {
    pub fn fabric_link(&self) -> String {
        format!("n{}d{}", self.node, self.device)
    }
    pub fn node_link(&self) -> String {
        node_link_name(self.device)
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

/// `ens5` for device 0, `ens6` for device 1, … (the names Nitro instances give their ENIs).
pub fn node_link_name(device: u32) -> String {
    format!("ens{}", 5 + device)
}

/// Names of the sim's namespaces.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn fabric(&self) -> String {
        format!("{}-fabric", self.prefix)
    }
    pub fn internet(&self) -> String {
        format!("{}-internet", self.prefix)
    }
    pub fn node(&self, i: usize) -> String {
        format!("{}-node-{i}", self.prefix)
    }
}

/// Creates the fabric and internet namespaces and the link between them.
pub fn create(names: &Names) -> Result<(), NetnsError> {
    let (fabric, internet) = (names.fabric(), names.internet());
    netns::create(&fabric)?;
    netns::create(&internet)?;
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv4.conf.default.rp_filter", "1"),
        ("net.ipv4.conf.all.proxy_arp", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
    ] {
        sysctl_in(&fabric, k, v)?;
    }
    flow_log(&fabric)?;
    ip_in(&fabric, &["link", "add", "inet", "type", "veth", "peer", "name", "eth0", "netns", &internet])?;
    ip_in(&fabric, &["addr", "add", &format!("{INTERNET_GW}/24"), "dev", "inet"])?;
    ip_in(&fabric, &["link", "set", "inet", "up"])?;
    ip_in(&internet, &["addr", "add", &format!("{INTERNET_HOST}/24"), "dev", "eth0"])?;
    ip_in(&internet, &["link", "set", "eth0", "up"])?;
    ip_in(&internet, &["route", "add", "default", "via", INTERNET_GW])?;
    Ok(())
}

/// The sim's VPC flow log: every (source, destination) pair the fabric forwards lands in an nft set, so what the
/// VPC saw — pod IPs, not node IPs — can be read back (`vpc-sim flows`).
fn flow_log(fabric: &str) -> Result<(), NetnsError> {
    let rules = "table ip vpcsim {\n\
        set flows { type ipv4_addr . ipv4_addr; flags dynamic; size 65535; }\n\
        chain forward { type filter hook forward priority 0; policy accept; add @flows { ip saddr . ip daddr }; }\n\
        }\n";
    netns::run_stdin("ip", &["netns", "exec", fabric, "nft", "-f", "-"], rules).map(|_| ())
}

/// The (source, destination) pairs the fabric has forwarded so far.
pub fn flows(names: &Names) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetnsError> {
    let out =
        netns::run("ip", &["netns", "exec", &names.fabric(), "nft", "-j", "list", "set", "ip", "vpcsim", "flows"])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut pairs = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let concat = e.get("elem").and_then(|x| x.get("val")).unwrap_or(e);
            if let Some([a, b]) = concat["concat"].as_array().map(Vec::as_slice)
                && let (Some(a), Some(b)) =
                    (a.as_str().and_then(|x| x.parse().ok()), b.as_str().and_then(|x| x.parse().ok()))
            {
                pairs.push((a, b));
            }
        }
    }
    Ok(pairs)
}

/// What the fabric currently has, so each sync only changes the difference.
#[derive(Debug, Default)]
pub struct FabricState {
    links: BTreeMap<(usize, u32), AttachedEni>,
}

impl FabricState {
    pub fn enis(&self) -> impl Iterator<Item = &AttachedEni> {
        self.links.values()
    }

    /// Brings links, routes and neighbours in step with `want`. Returns (links added, links removed).
    pub fn sync(&mut self, names: &Names, want: &[AttachedEni]) -> Result<(usize, usize), NetnsError> {
        let fabric = names.fabric();
        let want_map: BTreeMap<(usize, u32), &AttachedEni> = want.iter().map(|e| ((e.node, e.device), e)).collect();
        let mut batch = Vec::new();
        let mut removed = 0;
        let gone: Vec<(usize, u32)> = self
            .links
            .iter()
            .filter(|(k, have)| want_map.get(k).is_none_or(|w| w.eni_id != have.eni_id))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let have = self.links.remove(&k).expect("present");
            // Deleting one end of a veth removes both, and the routes and neighbours on it.
            ip_in(&fabric, &["link", "del", &have.fabric_link()])?;
            removed += 1;
        }
        let mut added = 0;
        for (k, w) in &want_map {
            if !self.links.contains_key(k) {
                self.plug(names, w)?;
                added += 1;
                self.links.insert(*k, AttachedEni { ips: BTreeSet::new(), ..(*w).clone() });
            }
            let have = self.links.get_mut(k).expect("present");
            let link = w.fabric_link();
            for ip in w.ips.difference(&have.ips) {
                batch.push(format!("route replace {ip}/32 dev {link}"));
                batch.push(format!("neigh replace {ip} lladdr {} dev {link} nud permanent", w.mac));
            }
            for ip in have.ips.difference(&w.ips) {
                batch.push(format!("route del {ip}/32 dev {link}"));
                batch.push(format!("neigh del {ip} dev {link}"));
            }
            have.ips = w.ips.clone();
        }
        ip_batch(&fabric, &batch)?;
        Ok((added, removed))
    }

    /// Hot-plugs one ENI: the veth pair with the node end created directly in the node namespace, carrying
    /// the ENI's MAC; the fabric end up and holding the subnet gateway address.
    fn plug(&self, names: &Names, e: &AttachedEni) -> Result<(), NetnsError> {
        let (fabric, node) = (names.fabric(), names.node(e.node));
        let (fl, nl) = (e.fabric_link(), e.node_link());
        let mtu = ENI_MTU.to_string();
        ip_in(
            &fabric,
            &[
                "link", "add", &fl, "mtu", &mtu, "type", "veth", "peer", "name", &nl, "address", &e.mac, "mtu", &mtu,
                "netns", &node,
            ],
        )?;
        // EC2's VPC answers ARP at once; Linux delays proxy ARP replies by up to 0.8 s (proxy_delay), which lost
        // first connections between fresh pods with a 1 s timeout.
        sysctl_in(&fabric, &format!("net.ipv4.neigh.{fl}.proxy_delay"), "0")?;
        ip_in(&fabric, &["addr", "add", &format!("{}/32", e.gateway()), "dev", &fl])?;
        ip_in(&fabric, &["link", "set", &fl, "up"])?;
        if e.device == 0 {
            // The primary ENI is configured by the instance's OS (DHCP on EC2): address, up, default route.
            let prefix = e.subnet.prefix_len();
            ip_in(&node, &["addr", "add", &format!("{}/{prefix}", e.primary_ip), "dev", &nl])?;
            ip_in(&node, &["link", "set", &nl, "up"])?;
            ip_in(&node, &["route", "add", "default", "via", &e.gateway().to_string(), "dev", &nl])?;
        }
        Ok(())
    }
}

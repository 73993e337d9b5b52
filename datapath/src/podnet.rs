//! The netlink operations the CNI plugin needs beyond ipamd's own (one typed method each): a veth pair created
//! with its peer directly in the pod namespace in one RTM_NEWLINK, links by name, link deletion, and
//! permanent neighbour entries.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::netlink::Netlink;
use super::{HostNet, HostNetError, Link};

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub permanent: bool,
}

/// The host-side veth name aws-vpc-cni gives a pod: prefix + first 11 hex digits of sha1("<namespace>.<pod>").
pub fn host_veth_name(prefix: &str, pod_namespace: &str, pod_name: &str) -> String {
    use sha1::{Digest, Sha1};
    let h = Sha1::digest(format!("{pod_namespace}.{pod_name}").as_bytes());
    format!("{prefix}{}", &format!("{h:x}")[..11])
}

pub fn parse_mac(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    (bytes.len() == 6).then_some(bytes)
}

impl Netlink {
    /// Creates `host` here and its peer `peer` inside the namespace open as `netns`, both with `mtu`, in a
    /// single request (no later move between namespaces).
    pub async fn add_veth_into(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        netns: &std::fs::File,
    ) -> Result<(), HostNetError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| HostNetError::Netlink { op: "RTM_NEWLINK veth", message: e.to_string() })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, HostNetError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    pub async fn del_link(&self, index: u32) -> Result<(), HostNetError> {
        self.handle()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| HostNetError::Netlink { op: "RTM_DELLINK", message: e.to_string() })
    }

    pub async fn add_permanent_neighbour(&self, index: u32, ip: Ipv4Addr, mac: &str) -> Result<(), HostNetError> {
        let lla = parse_mac(mac)
            .ok_or_else(|| HostNetError::Netlink { op: "RTM_NEWNEIGH", message: format!("bad MAC {mac}") })?;
        self.handle()
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&lla)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| HostNetError::Netlink { op: "RTM_NEWNEIGH", message: e.to_string() })
    }

    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, HostNetError> {
        let msgs: Vec<_> = self
            .handle()
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| HostNetError::Netlink { op: "RTM_GETNEIGH", message: e.to_string() })?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = String::new();
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                        NeighbourAttribute::LinkLayerAddress(b) => {
                            mac = b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
                        }
                        _ => {}
                    }
                }
                Some(Neighbour { ip: ip?, mac, permanent: m.header.state == NeighbourState::Permanent })
            })
            .collect())
    }
}

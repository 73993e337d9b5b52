//! The netlink operations the CNI plugin needs beyond ipamd's own (one typed method each): a veth pair created
//! with its peer directly in the pod namespace in one RTM_NEWLINK, links by name, link deletion, permanent
//! neighbour entries, and the host route of one address by a single FIB lookup.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::RouteFlags;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::netlink::{Netlink, errno, errno_of, mac_string, nl};
use super::{HostNetError, Link, MAIN_TABLE, Route, Rule};

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub permanent: bool,
}

/// The plugin's per-pod rules: `to <pod ip> lookup main` and `from <pod ip> [to <cidr>] lookup <ENI table>`
/// (aws-vpc-cni's priorities, so pods it wired look the same).
pub const TO_POD_RULE_PRIORITY: u32 = 512;
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;

/// The host-side veth name aws-vpc-cni gives a pod: prefix + first 11 hex digits of sha1("<namespace>.<pod>").
pub fn host_veth_name(prefix: &str, pod_namespace: &str, pod_name: &str) -> String {
    use sha1::{Digest, Sha1};
    let h = Sha1::digest(format!("{pod_namespace}.{pod_name}").as_bytes());
    format!("{prefix}{}", &format!("{h:x}")[..11])
}

/// Whose a host veth is, kept in the link's alias (IFLA_IFALIAS; `ip -d link` shows it): the veth name is only a
/// 44-bit hash of the pod's namespace/name, so two pods can share one (a birthday search finds such a pair in
/// seconds), and the plugin must not take a link that is another pod's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VethOwner {
    /// `<namespace>/<name>`.
    pub pod: String,
    pub uid: String,
    pub sandbox: String,
}

/// The kernel keeps at most this many bytes of an alias (IFALIASZ - 1).
const ALIAS_MAX: usize = 255;
const ALIAS_TAG: &str = "vpc-cni";

/// Who holds a host veth name that an ADD found taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// An earlier sandbox of the same pod, or an interrupted ADD of this one: the link may be replaced.
    SamePod,
    /// Another pod whose name hashes to the same veth name.
    OtherPod(VethOwner),
    /// No owner recorded (made by aws-node or a version that did not record owners, or an ADD between its
    /// two requests): nobody can say it is stale.
    Unknown,
}

impl VethOwner {
    /// `vpc-cni pod=<ns>/<name> uid=<uid> sandbox=<id>`, cut to what the kernel keeps. The pod comes first, so a
    /// cut falls on the same byte for every pod and two cut aliases still compare by pod.
    pub fn to_alias(&self) -> String {
        let mut a = format!("{ALIAS_TAG} pod={} uid={} sandbox={}", self.pod, self.uid, self.sandbox);
        if a.len() > ALIAS_MAX {
            let mut end = ALIAS_MAX;
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            a.truncate(end);
        }
        a
    }

    /// The owner an alias written by [`VethOwner::to_alias`] names; `None` for any other alias.
    pub fn from_alias(alias: &str) -> Option<VethOwner> {
        let mut words = alias.split(' ');
        if words.next() != Some(ALIAS_TAG) {
            return None;
        }
        let mut owner = VethOwner::default();
        for w in words {
            match w.split_once('=') {
                Some(("pod", v)) => owner.pod = v.to_string(),
                Some(("uid", v)) => owner.uid = v.to_string(),
                Some(("sandbox", v)) => owner.sandbox = v.to_string(),
                _ => {}
            }
        }
        (!owner.pod.is_empty()).then_some(owner)
    }

    /// Who holds a link whose alias is `alias`, seen from this owner's ADD.
    pub fn holder(&self, alias: Option<&str>) -> Holder {
        let Some(theirs) = alias.and_then(VethOwner::from_alias) else { return Holder::Unknown };
        // Compared as stored: both sides cut the same way.
        let mine = VethOwner::from_alias(&self.to_alias()).unwrap_or_default();
        if theirs.pod == mine.pod { Holder::SamePod } else { Holder::OtherPod(theirs) }
    }
}

pub fn parse_mac(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    (bytes.len() == 6).then_some(bytes)
}

impl Netlink {
    /// Creates `host` (up) here and its peer `peer` (down) inside the namespace open as `netns`, both with
    /// `mtu`, in a single request (no later move between namespaces). The kernel cannot bring the peer up in
    /// the same request (veth_open finds no peer yet: ENOTCONN). An existing `host` is an error (EEXIST): the
    /// caller decides whether it is stale.
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
            .up()
            .build();
        self.handle().link().add(msg).execute().await.map_err(|e| match errno_of(&e) {
            Some(errno::EEXIST) => HostNetError::Exists(host.to_string()),
            _ => nl("RTM_NEWLINK veth")(e),
        })
    }

    /// One link by name (a single RTM_GETLINK, not a dump of every link: a node has a veth per pod).
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, HostNetError> {
        let mut s = self.handle().link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Netlink::parse_link)),
            Err(e) if errno_of(&e) == Some(errno::ENODEV) => Ok(None),
            Err(e) => Err(nl("RTM_GETLINK")(e)),
        }
    }

    /// Deletes the first rule matching `rule` (table 0: any table); `false` when there is none.
    pub async fn del_rule_if_present(&self, rule: &Rule) -> Result<bool, HostNetError> {
        match self.handle().rule().del(Netlink::rule_del_message(rule)).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(errno::ENOENT) => Ok(false),
            Err(e) => Err(nl("RTM_DELRULE")(e)),
        }
    }

    /// Deletes `route` (matched on destination, table and output interface); `false` when there is none.
    pub async fn del_route_if_present(&self, route: &Route) -> Result<bool, HostNetError> {
        match self.handle().route().del(Netlink::route_del_message(route)).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(errno::ESRCH | errno::ENOENT)) => Ok(false),
            Err(e) => Err(nl("RTM_DELROUTE")(e)),
        }
    }

    /// The route main holds for exactly `ip/32`, by one FIB lookup (RTM_GETROUTE with RTM_F_FIB_MATCH answers the
    /// matching entry itself), not a dump of main, which grows with the node's pods. `None` when the best match
    /// is anything else (the default route, a subnet route) or nothing.
    pub async fn host_route_of(&self, ip: Ipv4Addr) -> Result<Option<Route>, HostNetError> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).table_id(MAIN_TABLE).build();
        msg.header.flags |= RouteFlags::FibMatch;
        match self.handle().route().get(msg).execute().try_next().await {
            Ok(m) => {
                Ok(m.as_ref().and_then(Netlink::parse_route).filter(|r| r.dst.addr() == ip && r.dst.prefix_len() == 32))
            }
            Err(e) if matches!(errno_of(&e), Some(errno::ENETUNREACH | errno::EHOSTUNREACH)) => Ok(None),
            Err(e) => Err(nl("RTM_GETROUTE")(e)),
        }
    }

    /// Records `alias` on the link (RTM_SETLINK with IFLA_IFALIAS; the kernel ignores an alias in RTM_NEWLINK).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), HostNetError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.handle().link().set(msg).execute().await.map_err(nl("RTM_SETLINK alias"))
    }

    pub async fn del_link(&self, index: u32) -> Result<(), HostNetError> {
        self.handle().link().del(index).execute().await.map_err(nl("RTM_DELLINK"))
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
            .map_err(nl("RTM_NEWNEIGH"))
    }

    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, HostNetError> {
        let msgs: Vec<_> =
            self.handle().neighbours().get().execute().try_collect().await.map_err(nl("RTM_GETNEIGH"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = String::new();
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                        NeighbourAttribute::LinkLayerAddress(b) => mac = mac_string(b),
                        _ => {}
                    }
                }
                Some(Neighbour { ip: ip?, mac, permanent: m.header.state == NeighbourState::Permanent })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pod: &str, sandbox: &str) -> VethOwner {
        VethOwner { pod: pod.into(), uid: "0d7c3f5e-1111-2222-3333-444455556666".into(), sandbox: sandbox.into() }
    }

    #[test]
    fn an_alias_names_the_owner_and_reads_back() {
        let o = owner("default/web-0", &"c".repeat(64));
        assert_eq!(o.to_alias(), format!("vpc-cni pod=default/web-0 uid={} sandbox={}", o.uid, o.sandbox));
        assert_eq!(VethOwner::from_alias(&o.to_alias()), Some(o));
        assert_eq!(VethOwner::from_alias("uplink to rack 3"), None, "an alias someone else wrote is no owner");
    }

    #[test]
    fn only_the_same_pod_may_replace_a_veth() {
        let me = owner("default/p8024346", "new");
        assert_eq!(me.holder(Some(&owner("default/p8024346", "old").to_alias())), Holder::SamePod);
        let other = owner("default/p1803518", "x");
        assert_eq!(me.holder(Some(&other.to_alias())), Holder::OtherPod(other));
        assert_eq!(me.holder(None), Holder::Unknown);
        assert_eq!(me.holder(Some("")), Holder::Unknown);
        // A pod named like a prefix of another is another pod.
        assert!(matches!(me.holder(Some(&owner("default/p80243460", "x").to_alias())), Holder::OtherPod(_)));
    }

    #[test]
    fn a_long_pod_name_is_cut_where_the_kernel_cuts_and_still_compares() {
        // Namespace 63 + name 253 characters: more than the kernel keeps of an alias (255 bytes).
        let long = format!("{}/{}", "n".repeat(63), "é".repeat(126));
        let me = owner(&long, "s1");
        let stored = me.to_alias();
        assert!(stored.len() <= 255 && stored.is_char_boundary(stored.len()), "{}", stored.len());
        assert_eq!(me.holder(Some(&stored)), Holder::SamePod);
        let other = owner(&format!("{}/{}x", "n".repeat(63), "é".repeat(40)), "s2");
        assert!(matches!(me.holder(Some(&other.to_alias())), Holder::OtherPod(_)));
    }
}

//! rtnetlink implementation of [`HostNet`]: one typed method per netlink operation. The socket belongs to the
//! network namespace it was opened in; [`Netlink::in_netns`] opens it inside another namespace by switching
//! only a short-lived helper thread (never the caller's thread, never the whole operation).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::{HostNet, HostNetError, Link, RTPROT_ANY, Route, Rule};

/// A netlink route socket bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

pub(crate) fn nl(op: &'static str) -> impl Fn(rtnetlink::Error) -> HostNetError {
    move |e| HostNetError::Netlink { op, message: e.to_string() }
}

/// Linux errno values the datapath tells apart (no libc dependency for a few constants).
pub(crate) mod errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
}

/// The errno a netlink request failed with, if the kernel answered with one.
pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

pub(crate) fn mac_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Netlink {
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Opens a socket in the caller's current network namespace (ipamd runs in the node's).
    pub fn current() -> Result<Self, HostNetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(HostNetError::Io)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a socket inside the namespace at `netns` (e.g. /var/run/netns/NAME). Only a helper thread enters
    /// the namespace, and only while the socket is created.
    pub fn in_netns(netns: &Path) -> Result<Self, HostNetError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = super::in_netns(netns, || {
            // The socket registers with the runtime's reactor as it is created.
            let _enter = rt.enter();
            rtnetlink::new_connection()
        })
        .map_err(HostNetError::Io)?;
        rt.spawn(conn);
        Ok(Self { handle })
    }

    fn route_message(r: &Route) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.addr(), r.dst.prefix_len())
            .table_id(r.table);
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        if r.scope_link {
            b = b.scope(RouteScope::Link);
        }
        b.protocol(RouteProtocol::from(r.proto)).build()
    }

    pub(crate) fn parse_route(m: &RouteMessage) -> Option<Route> {
        if m.header.address_family != AddressFamily::Inet || m.header.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(m.header.table);
        let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let dst = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
        let proto = u8::from(m.header.protocol);
        Some(Route { dst, gateway, oif, table, scope_link: m.header.scope == RouteScope::Link, proto })
    }

    /// The RTM_DELRULE message for `rule`; the kernel deletes the first rule matching every attribute given
    /// (table 0: any table).
    pub(crate) fn rule_del_message(rule: &Rule) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.action = RuleAction::ToTable;
        m.attributes.push(RuleAttribute::Priority(rule.priority));
        if rule.table != 0 {
            m.attributes.push(RuleAttribute::Table(rule.table));
        }
        if rule.table < 256 {
            m.header.table = rule.table as u8;
        }
        if let Some(src) = rule.src {
            m.header.src_len = src.prefix_len();
            m.attributes.push(RuleAttribute::Source(IpAddr::V4(src.addr())));
        }
        if let Some(dst) = rule.dst {
            m.header.dst_len = dst.prefix_len();
            m.attributes.push(RuleAttribute::Destination(IpAddr::V4(dst.addr())));
        }
        if let Some((mark, mask)) = rule.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            m.attributes.push(RuleAttribute::FwMask(mask));
        }
        // [`RTPROT_ANY`] matches a rule of any maker; our own protocol only ours.
        if rule.proto != RTPROT_ANY {
            m.attributes.push(RuleAttribute::Protocol(RouteProtocol::from(rule.proto)));
        }
        m
    }

    pub(crate) fn route_del_message(route: &Route) -> RouteMessage {
        // Scope "nowhere" is the kernel's wildcard for a delete (the route may be the kernel's, scope link), and so
        // is protocol "unspec" ([`RTPROT_ANY`]): a clean-up names its own protocol to remove only its own route.
        let mut m = Self::route_message(route);
        m.header.scope = RouteScope::NoWhere;
        m
    }

    pub(crate) fn parse_link(m: &netlink_packet_route::link::LinkMessage) -> Link {
        let mut l = Link { index: m.header.index, up: m.header.flags.contains(LinkFlags::Up), ..Link::default() };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac_string(mac),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                _ => {}
            }
        }
        l
    }

    fn parse_rule(m: &RuleMessage) -> Option<Rule> {
        if m.header.family != AddressFamily::Inet {
            return None;
        }
        let mut table = u32::from(m.header.table);
        let (mut priority, mut src, mut dst, mut mark, mut mask, mut proto) = (0, None, None, None, None, RTPROT_ANY);
        for a in &m.attributes {
            match a {
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = *p,
                RuleAttribute::Protocol(p) => proto = u8::from(*p),
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = Some(*v),
                RuleAttribute::Source(IpAddr::V4(ip)) => src = Ipv4Net::new(*ip, m.header.src_len).ok(),
                RuleAttribute::Destination(IpAddr::V4(ip)) => dst = Ipv4Net::new(*ip, m.header.dst_len).ok(),
                _ => {}
            }
        }
        let fwmark = mark.map(|m| (m, mask.unwrap_or(u32::MAX)));
        Some(Rule { priority, src, dst, fwmark, table, proto })
    }
}

impl HostNet for Netlink {
    async fn links(&self) -> Result<Vec<Link>, HostNetError> {
        let msgs: Vec<_> = self.handle.link().get().execute().try_collect().await.map_err(nl("RTM_GETLINK"))?;
        Ok(msgs.iter().map(Self::parse_link).collect())
    }

    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), HostNetError> {
        let b = LinkUnspec::new_with_index(index).mtu(mtu);
        let msg = if up { b.up().build() } else { b.build() };
        self.handle.link().set(msg).execute().await.map_err(nl("RTM_SETLINK"))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>, HostNetError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("RTM_GETADDR"))?;
        Ok(msgs
            .iter()
            .flat_map(|m| {
                let plen = m.header.prefix_len;
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Ipv4Net::new(*ip, plen).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds with IFA_F_NOPREFIXROUTE: the kernel would otherwise put the subnet route of a secondary ENI into
    /// main until ipamd removes it, and traffic routed out of that ENI meanwhile (replies to a NodePort or
    /// hostPort, say) fails the VPC's source check.
    async fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<(), HostNetError> {
        let mut req = self.handle.address().add(index, IpAddr::V4(addr.addr()), addr.prefix_len());
        req.message_mut().attributes.push(netlink_packet_route::address::AddressAttribute::Flags(
            netlink_packet_route::address::AddressFlags::Noprefixroute,
        ));
        req.execute().await.map_err(nl("RTM_NEWADDR"))
    }

    async fn routes(&self, table: u32) -> Result<Vec<Route>, HostNetError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().table_id(table).build();
        let msgs: Vec<_> = self.handle.route().get(req).execute().try_collect().await.map_err(nl("RTM_GETROUTE"))?;
        Ok(msgs.iter().filter_map(Self::parse_route).filter(|r| r.table == table).collect())
    }

    async fn add_route(&self, route: &Route) -> Result<(), HostNetError> {
        self.handle.route().add(Self::route_message(route)).replace().execute().await.map_err(nl("RTM_NEWROUTE"))
    }

    async fn del_route(&self, route: &Route) -> Result<(), HostNetError> {
        self.handle.route().del(Self::route_del_message(route)).execute().await.map_err(nl("RTM_DELROUTE"))
    }

    async fn rules(&self) -> Result<Vec<Rule>, HostNetError> {
        let msgs: Vec<_> =
            self.handle.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("RTM_GETRULE"))?;
        Ok(msgs.iter().filter_map(Self::parse_rule).collect())
    }

    async fn add_rule(&self, rule: &Rule) -> Result<(), HostNetError> {
        // Without an explicit action the kernel stores "lookup N none" and routing through it fails.
        let mut req =
            self.handle.rule().add().v4().priority(rule.priority).table_id(rule.table).action(RuleAction::ToTable);
        if let Some(src) = rule.src {
            req = req.source_prefix(src.addr(), src.prefix_len());
        }
        if let Some(dst) = rule.dst {
            req = req.destination_prefix(dst.addr(), dst.prefix_len());
        }
        if let Some((mark, mask)) = rule.fwmark {
            req.message_mut().attributes.push(RuleAttribute::FwMark(mark));
            req.message_mut().attributes.push(RuleAttribute::FwMask(mask));
        }
        req.message_mut().attributes.push(RuleAttribute::Protocol(RouteProtocol::from(rule.proto)));
        match req.execute().await {
            // The same rule already there (left by an earlier sandbox that had this IP) is what is wanted:
            // the kernel has no "replace" for rules, so EEXIST is success, not a failed ADD.
            Err(e) if errno_of(&e) == Some(errno::EEXIST) => Ok(()),
            other => other.map_err(nl("RTM_NEWRULE")),
        }
    }

    async fn del_rule(&self, rule: &Rule) -> Result<(), HostNetError> {
        self.handle.rule().del(Self::rule_del_message(rule)).execute().await.map_err(nl("RTM_DELRULE"))
    }
}

//! Pod wiring over netlink: the veth pair created with its peer directly in the pod
//! namespace (one RTM_NEWLINK), the pod side configured through a socket opened inside the pod namespace, the
//! host side through the plugin's own. ADD undoes what it did on failure; DEL goes on past errors and leaves
//! the host veth to the pod namespace's deletion.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use datapath::netlink::Netlink;
use datapath::podnet::{Holder, VethOwner};
use datapath::{HostNet, HostNetError, MAIN_TABLE, RTPROT_ANY, RTPROT_VPC_CNI, Route, Rule, host};
use futures::TryFutureExt;
use ipnet::Ipv4Net;

use crate::cni::{AddResult, CniError, Code};
use crate::log::Phases;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub use datapath::podnet::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};

/// What one pod attachment looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub host_veth: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    /// 254 (main) for the primary ENI, device number + 1 otherwise.
    pub table: u32,
    pub mtu: u32,
    /// Destinations a secondary-ENI pod reaches through its own ENI: `None` for all of them (external SNAT),
    /// else the VPC and SNAT-excluded CIDRs (the rest leaves by the primary ENI, SNATed to the node IP).
    pub via_eni: Option<Vec<Ipv4Net>>,
    /// Recorded on the host veth: whose it is.
    pub owner: VethOwner,
}

impl PodSpec {
    fn egress_rules(&self) -> Vec<Rule> {
        if self.table == MAIN_TABLE {
            return Vec::new();
        }
        let rule = |dst| Rule {
            priority: FROM_POD_RULE_PRIORITY,
            src: Some(host(self.ip)),
            dst,
            fwmark: None,
            table: self.table,
            proto: RTPROT_VPC_CNI,
        };
        match &self.via_eni {
            None => vec![rule(None)],
            Some(dsts) => dsts.iter().map(|d| rule(Some(*d))).collect(),
        }
    }
}

fn dp(step: &str) -> impl FnOnce(HostNetError) -> CniError + '_ {
    move |e| CniError::new(Code::Datapath, format!("datapath: {step}"), e.to_string())
}

fn to_pod_rule(ip: Ipv4Addr) -> Rule {
    Rule {
        priority: TO_POD_RULE_PRIORITY,
        src: None,
        dst: Some(host(ip)),
        fwmark: None,
        table: MAIN_TABLE,
        proto: RTPROT_VPC_CNI,
    }
}

fn host_route(ip: Ipv4Addr, index: u32) -> Route {
    Route { dst: host(ip), gateway: None, oif: Some(index), table: MAIN_TABLE, scope_link: true, proto: RTPROT_VPC_CNI }
}

fn pod_routes(index: u32) -> [Route; 2] {
    [
        Route {
            dst: host(GATEWAY),
            gateway: None,
            oif: Some(index),
            table: MAIN_TABLE,
            scope_link: true,
            proto: RTPROT_VPC_CNI,
        },
        Route {
            dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"),
            gateway: Some(GATEWAY),
            oif: Some(index),
            table: MAIN_TABLE,
            scope_link: false,
            proto: RTPROT_VPC_CNI,
        },
    ]
}

/// Wires the pod; on any failure removes whatever it had made before returning the error.
pub async fn add(nl: &Netlink, spec: &PodSpec, phases: &mut Phases) -> Result<AddResult, CniError> {
    let ns_file = std::fs::File::open(&spec.netns).map_err(|e| {
        CniError::new(Code::UnknownContainer, "cannot open the pod netns", format!("{}: {e}", spec.netns.display()))
    })?;
    match nl.add_veth_into(&spec.host_veth, &spec.ifname, spec.mtu, &ns_file).await {
        Err(HostNetError::Exists(_)) => {
            replace_stale_veth(nl, spec).await?;
            nl.add_veth_into(&spec.host_veth, &spec.ifname, spec.mtu, &ns_file).await.map_err(dp("create veth pair"))?
        }
        r => r.map_err(dp("create veth pair"))?,
    }
    phases.mark("veth");
    match wire(nl, spec).await {
        Ok(r) => {
            phases.mark("routes+rules");
            Ok(r)
        }
        Err(e) => {
            let mut leftovers = del(nl, Some(spec.ip), &spec.host_veth).await.errors;
            // This ADD made the veth: it goes too (the pod end with it).
            match nl.link_by_name(&spec.host_veth).await {
                Ok(Some(l)) => leftovers.extend(nl.del_link(l.index).await.err()),
                Ok(None) => {}
                Err(le) => leftovers.push(le),
            }
            if !leftovers.is_empty() {
                return Err(CniError::new(e.code, e.msg, format!("{}; clean-up: {leftovers:?}", e.details)));
            }
            Err(e)
        }
    }
}

/// The host veth name is taken. Replaced only when it is this pod's own: an earlier, interrupted ADD of it, or its
/// previous sandbox whose namespace the runtime has not deleted yet (DEL leaves the veth to it). Another pod's
/// (the names collide) is never touched: the ADD fails naming both. A link without an owner record is left too:
/// if it is a dying sandbox's the kernel removes it with its namespace, and the runtime's retry goes through.
/// Looked up only on a clash, so the usual ADD does not pay for it.
async fn replace_stale_veth(nl: &Netlink, spec: &PodSpec) -> Result<(), CniError> {
    let Some(stale) = nl.link_by_name(&spec.host_veth).await.map_err(dp("find stale host veth"))? else {
        return Ok(());
    };
    match spec.owner.holder(stale.alias.as_deref()) {
        Holder::SamePod => nl.del_link(stale.index).await.map_err(dp("remove stale host veth")),
        Holder::OtherPod(other) => Err(CniError::new(
            Code::VethTaken,
            "host veth name taken by another pod",
            format!(
                "{} belongs to pod {} (uid {}, sandbox {}); pod {} hashes to the same name: not replacing it",
                spec.host_veth, other.pod, other.uid, other.sandbox, spec.owner.pod
            ),
        )),
        Holder::Unknown => Err(CniError::new(
            Code::TryAgainLater,
            "host veth name taken by a link with no owner recorded",
            format!(
                "{} (index {}, alias {:?}) was not made by this version of vpc-cni for pod {}: not deleting it; \
                 a dying sandbox's goes with its namespace",
                spec.host_veth, stale.index, stale.alias, spec.owner.pod
            ),
        )),
    }
}

/// Everything after the veth pair exists. One netlink socket per namespace; on each socket the requests are
/// sent back to back and their answers awaited together (the kernel takes them in order, so the default route
/// still follows the gateway route it needs), and the pod side and the host side go at the same time.
async fn wire(nl: &Netlink, spec: &PodSpec) -> Result<AddResult, CniError> {
    let hl = nl
        .link_by_name(&spec.host_veth)
        .await
        .map_err(dp("find host veth"))?
        .ok_or_else(|| CniError::new(Code::Datapath, "datapath: host veth vanished", spec.host_veth.clone()))?;
    let pod = Netlink::in_netns(&spec.netns).map_err(dp("netlink in pod netns"))?;
    let pl = pod
        .link_by_name(&spec.ifname)
        .await
        .map_err(dp("find pod interface"))?
        .ok_or_else(|| CniError::new(Code::Datapath, "datapath: pod interface missing", spec.ifname.clone()))?;
    let [gw_route, default_route] = pod_routes(pl.index);
    let pod_side = async {
        futures::try_join!(
            pod.set_link(pl.index, spec.mtu, true).map_err(dp("pod interface up")),
            pod.add_address(pl.index, host(spec.ip)).map_err(dp("pod address")),
            pod.add_route(&gw_route).map_err(dp("pod gateway route")),
            pod.add_route(&default_route).map_err(dp("pod default route")),
            pod.add_permanent_neighbour(pl.index, GATEWAY, &hl.mac).map_err(dp("pod gateway neighbour")),
        )
    };
    let (egress, to_host, to_pod) = (spec.egress_rules(), host_route(spec.ip, hl.index), to_pod_rule(spec.ip));
    let alias = spec.owner.to_alias();
    let host_side = async {
        futures::try_join!(
            nl.set_alias(hl.index, &alias).map_err(dp("host veth owner")),
            nl.add_route(&to_host).map_err(dp("host route to pod")),
            nl.add_rule(&to_pod).map_err(dp("to-pod rule")),
            futures::future::try_join_all(egress.iter().map(|r| nl.add_rule(r).map_err(dp("from-pod rule")))),
        )
    };
    futures::try_join!(pod_side, host_side)?;
    Ok(AddResult {
        host_veth: spec.host_veth.clone(),
        host_mac: hl.mac,
        pod_ifname: spec.ifname.clone(),
        pod_mac: pl.mac,
        netns: spec.netns.display().to_string(),
        ip: spec.ip,
    })
}

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Teardown {
    pub errors: Vec<HostNetError>,
    /// The IP's host route goes to another link (this link index): the IP is a newer pod's now, and its
    /// rules, which look the same as this sandbox's were, are left alone.
    pub held_by: Option<u32>,
}

/// Removes the pod's rules and its host route, by exact match (no dump of the node's rules or routes, which
/// grow with its pods). Missing pieces are fine; errors do not stop the rest and are all returned.
///
/// The host veth stays: the runtime deletes the pod's namespace right after DEL and the kernel removes the
/// pair with it, in the background (deleting a veth synchronously costs ~20 ms of kernel time, most of a DEL).
/// Without its route and rules it carries nothing meanwhile. The name is reused only by the same pod's next
/// sandbox, whose ADD replaces a veth still there.
///
/// The host veth's name depends only on the pod's namespace/name, so a late DEL of an old sandbox finds the
/// veth of the pod's new sandbox under the same name: only the route `ip/32` through that veth is removed, and
/// a newer sandbox's route carries another IP, so it is left alone. And when ipamd has handed the IP itself to a
/// newer pod, the IP's host route goes to that pod's veth: its rules (the same as this sandbox's were) stay.
pub async fn del(nl: &Netlink, ip: Option<Ipv4Addr>, host_veth: &str) -> Teardown {
    let Some(ip) = ip else { return Teardown::default() };
    let mine = match nl.link_by_name(host_veth).await {
        Ok(l) => l.map(|l| l.index),
        Err(e) => return Teardown { errors: vec![e], held_by: None },
    };
    // A late or repeated DEL may name an IP ipamd has handed to a newer pod since: its host route then goes to
    // that pod's veth, and the rules by IP are that pod's.
    match nl.host_route_of(ip).await {
        Ok(route) => {
            if let Some(other) = route.and_then(|r| r.oif).filter(|o| Some(*o) != mine) {
                return Teardown { errors: Vec::new(), held_by: Some(other) };
            }
        }
        Err(e) => return Teardown { errors: vec![e], held_by: None },
    }
    let mut errors = Vec::new();
    // Any maker (RTPROT_ANY): a pod wired by aws-node or an older version before the switch goes the same way.
    let to_pod = Rule { table: 0, proto: RTPROT_ANY, ..to_pod_rule(ip) };
    // Table 0 matches any table: the egress rules of a secondary-ENI pod (one per VPC or excluded CIDR).
    let from_pod = Rule {
        priority: FROM_POD_RULE_PRIORITY,
        src: Some(host(ip)),
        dst: None,
        fwmark: None,
        table: 0,
        proto: RTPROT_ANY,
    };
    let route = async {
        match mine {
            Some(index) => nl.del_route_if_present(&Route { proto: RTPROT_ANY, ..host_route(ip, index) }).await,
            None => Ok(false),
        }
    };
    let from_pod_rules = async {
        // Each delete removes one matching rule; a pod has one per egress CIDR (a handful).
        for _ in 0..MAX_EGRESS_RULES {
            if !nl.del_rule_if_present(&from_pod).await? {
                break;
            }
        }
        Ok::<(), HostNetError>(())
    };
    let (r, t, f) = futures::join!(route, nl.del_rule_if_present(&to_pod), from_pod_rules);
    errors.extend(r.err());
    errors.extend(t.err());
    errors.extend(f.err());
    Teardown { errors, held_by: None }
}

/// More egress rules than any pod gets (VPC CIDRs + SNAT-excluded CIDRs): bounds the delete loop.
const MAX_EGRESS_RULES: usize = 256;

/// Compares the pod's networking with what ADD makes; returns every difference found.
pub async fn check(nl: &Netlink, spec: &PodSpec) -> Result<Vec<String>, HostNetError> {
    let mut wrong = Vec::new();
    let Some(hl) = nl.link_by_name(&spec.host_veth).await? else {
        return Ok(vec![format!("host veth {} missing", spec.host_veth)]);
    };
    if !hl.up {
        wrong.push(format!("host veth {} is down", spec.host_veth));
    }
    if let Holder::OtherPod(other) = spec.owner.holder(hl.alias.as_deref()) {
        wrong.push(format!("host veth {} belongs to pod {} (sandbox {})", spec.host_veth, other.pod, other.sandbox));
    }
    if !nl.routes(MAIN_TABLE).await?.contains(&host_route(spec.ip, hl.index)) {
        wrong.push(format!("host route {}/32 dev {} missing", spec.ip, spec.host_veth));
    }
    let rules = nl.rules().await?;
    if !rules.contains(&to_pod_rule(spec.ip)) {
        wrong.push(format!("rule {TO_POD_RULE_PRIORITY} to {} lookup main missing", spec.ip));
    }
    for r in spec.egress_rules().iter().filter(|r| !rules.contains(r)) {
        let to = r.dst.map(|d| format!(" to {d}")).unwrap_or_default();
        wrong.push(format!("rule {FROM_POD_RULE_PRIORITY} from {}{to} lookup {} missing", spec.ip, spec.table));
    }
    if !Path::new(&spec.netns).exists() {
        wrong.push(format!("netns {} missing", spec.netns.display()));
        return Ok(wrong);
    }
    let pod = Netlink::in_netns(&spec.netns)?;
    let Some(pl) = pod.link_by_name(&spec.ifname).await? else {
        wrong.push(format!("pod interface {} missing", spec.ifname));
        return Ok(wrong);
    };
    if !pod.addresses(pl.index).await?.contains(&host(spec.ip)) {
        wrong.push(format!("pod address {}/32 missing on {}", spec.ip, spec.ifname));
    }
    let routes = pod.routes(MAIN_TABLE).await?;
    for r in pod_routes(pl.index) {
        if !routes.contains(&r) {
            wrong.push(format!("pod route {} missing", r.dst));
        }
    }
    let gw_ok = pod.neighbours(pl.index).await?.iter().any(|n| n.ip == GATEWAY && n.permanent && n.mac == hl.mac);
    if !gw_ok {
        wrong.push(format!("pod neighbour {GATEWAY} → {} (permanent) missing", hl.mac));
    }
    if pl.mtu != spec.mtu {
        wrong.push(format!("pod MTU {} != {}", pl.mtu, spec.mtu));
    }
    Ok(wrong)
}

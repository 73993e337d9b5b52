//! Pod wiring per SPEC "Datapath" over netlink: the veth pair created with its peer directly in the pod
//! namespace (one RTM_NEWLINK), the pod side configured through a socket opened inside the pod namespace, the
//! host side through the plugin's own. ADD undoes what it did on failure; DEL goes on past errors.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use datapath::netlink::Netlink;
use datapath::{HostNet, HostNetError, MAIN_TABLE, Route, Rule, host};
use ipnet::Ipv4Net;

use crate::cni::{AddResult, CniError, Code};

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const TO_POD_RULE_PRIORITY: u32 = 512;
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;

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
    Rule { priority: TO_POD_RULE_PRIORITY, src: None, dst: Some(host(ip)), fwmark: None, table: MAIN_TABLE }
}

fn host_route(ip: Ipv4Addr, index: u32) -> Route {
    Route { dst: host(ip), gateway: None, oif: Some(index), table: MAIN_TABLE, scope_link: true }
}

fn pod_routes(index: u32) -> [Route; 2] {
    [
        Route { dst: host(GATEWAY), gateway: None, oif: Some(index), table: MAIN_TABLE, scope_link: true },
        Route {
            dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"),
            gateway: Some(GATEWAY),
            oif: Some(index),
            table: MAIN_TABLE,
            scope_link: false,
        },
    ]
}

/// Wires the pod; on any failure removes whatever it had made before returning the error.
pub async fn add(nl: &Netlink, spec: &PodSpec) -> Result<AddResult, CniError> {
    let ns_file = std::fs::File::open(&spec.netns).map_err(|e| {
        CniError::new(Code::UnknownContainer, "cannot open the pod netns", format!("{}: {e}", spec.netns.display()))
    })?;
    // A veth left by an earlier, interrupted ADD of the same pod would block the name.
    if let Some(stale) = nl.link_by_name(&spec.host_veth).await.map_err(dp("list links"))? {
        nl.del_link(stale.index).await.map_err(dp("remove stale host veth"))?;
    }
    nl.add_veth_into(&spec.host_veth, &spec.ifname, spec.mtu, &ns_file).await.map_err(dp("create veth pair"))?;
    match wire(nl, spec).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let leftovers = del(nl, Some(spec.ip), &spec.host_veth, true).await;
            if !leftovers.is_empty() {
                return Err(CniError::new(e.code, e.msg, format!("{}; clean-up: {leftovers:?}", e.details)));
            }
            Err(e)
        }
    }
}

async fn wire(nl: &Netlink, spec: &PodSpec) -> Result<AddResult, CniError> {
    let hl = nl
        .link_by_name(&spec.host_veth)
        .await
        .map_err(dp("find host veth"))?
        .ok_or_else(|| CniError::new(Code::Datapath, "datapath: host veth vanished", spec.host_veth.clone()))?;
    nl.set_link(hl.index, spec.mtu, true).await.map_err(dp("host veth up"))?;

    let pod = Netlink::in_netns(&spec.netns).map_err(dp("netlink in pod netns"))?;
    let pl = pod
        .link_by_name(&spec.ifname)
        .await
        .map_err(dp("find pod interface"))?
        .ok_or_else(|| CniError::new(Code::Datapath, "datapath: pod interface missing", spec.ifname.clone()))?;
    pod.set_link(pl.index, spec.mtu, true).await.map_err(dp("pod interface up"))?;
    pod.add_address(pl.index, host(spec.ip)).await.map_err(dp("pod address"))?;
    for r in pod_routes(pl.index) {
        pod.add_route(&r).await.map_err(dp("pod routes"))?;
    }
    pod.add_permanent_neighbour(pl.index, GATEWAY, &hl.mac).await.map_err(dp("pod gateway neighbour"))?;

    nl.add_route(&host_route(spec.ip, hl.index)).await.map_err(dp("host route to pod"))?;
    nl.add_rule(&to_pod_rule(spec.ip)).await.map_err(dp("to-pod rule"))?;
    for r in spec.egress_rules() {
        nl.add_rule(&r).await.map_err(dp("from-pod rule"))?;
    }
    Ok(AddResult {
        host_veth: spec.host_veth.clone(),
        host_mac: hl.mac,
        pod_ifname: spec.ifname.clone(),
        pod_mac: pl.mac,
        netns: spec.netns.display().to_string(),
        ip: spec.ip,
    })
}

/// Removes the pod's rules, host route and host veth (the pod end goes with it). Missing pieces are fine;
/// errors do not stop the rest and are all returned.
///
/// The host veth's name depends only on the pod's namespace/name, so a late DEL of an old sandbox finds the
/// veth of the pod's new sandbox under the same name: unless this call created it (`created_here`, an ADD
/// undoing itself), the veth is deleted only when it carries this pod's IP (its `ip/32` route goes through
/// it); otherwise it belongs to another sandbox and is left alone.
pub async fn del(nl: &Netlink, ip: Option<Ipv4Addr>, host_veth: &str, created_here: bool) -> Vec<HostNetError> {
    let mut errors = Vec::new();
    let mut carries_ip = false;
    let veth = match nl.link_by_name(host_veth).await {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if let Some(ip) = ip {
        match nl.rules().await {
            Ok(rules) => {
                let mine = |r: &&Rule| {
                    (r.priority == TO_POD_RULE_PRIORITY && r.dst == Some(host(ip)))
                        || (r.priority == FROM_POD_RULE_PRIORITY && r.src == Some(host(ip)))
                };
                for r in rules.iter().filter(mine) {
                    if let Err(e) = nl.del_rule(r).await {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        // Only the route through this pod's veth (the kernel drops it with the veth anyway).
        if let Some(l) = &veth {
            match nl.routes(MAIN_TABLE).await {
                Ok(routes) => {
                    for r in routes.iter().filter(|r| r.dst == host(ip) && r.oif == Some(l.index)) {
                        carries_ip = true;
                        if let Err(e) = nl.del_route(r).await {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some(l) = veth.filter(|_| created_here || carries_ip)
        && let Err(e) = nl.del_link(l.index).await
    {
        errors.push(e);
    }
    errors
}

/// Compares the pod's networking with what ADD makes; returns every difference found.
pub async fn check(nl: &Netlink, spec: &PodSpec) -> Result<Vec<String>, HostNetError> {
    let mut wrong = Vec::new();
    let Some(hl) = nl.link_by_name(&spec.host_veth).await? else {
        return Ok(vec![format!("host veth {} missing", spec.host_veth)]);
    };
    if !hl.up {
        wrong.push(format!("host veth {} is down", spec.host_veth));
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

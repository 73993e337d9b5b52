//! The node datapath, shared by ipamd and the `vpc-cni` plugin (neither links the other): netlink types and
//! the [`HostNet`] boundary, [`netlink::Netlink`] (sockets opened inside the target netns), pod host wiring
//! helpers ([`podnet`]), conntrack clean-up, and the deferred-DEL format ([`deferred`]).
//!
//! ipamd's host network setup for secondary ENIs: per non-primary ENI the link (found by
//! MAC) gets MTU and up, its primary IP with the subnet mask, table `device + 1` with `gw/32 scope link` and
//! `default via gw`, a rule `from <ENI primary IP> lookup <table>` (prio 32765), and the kernel's subnet route
//! for it is removed from main. Every step reads first and changes only what differs, so a second run makes
//! no change. [`HostNet`] is the netlink boundary; [`netlink::Netlink`] implements it.

pub mod conntrack;
pub mod deferred;
pub mod netlink;
pub mod podnet;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backoff::{Backoff, Jitter};
use ipnet::Ipv4Net;

pub const ENI_RULE_PRIORITY: u32 = 32765;
pub const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("netlink {op}: {message}")]
    Netlink { op: &'static str, message: String },
    #[error("no link with MAC {mac} appeared within {waited:?}")]
    LinkMissing { mac: String, waited: Duration },
    #[error("sysctl {path}: {source}")]
    Sysctl { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Io(std::io::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// IFLA_IFALIAS: a host veth's owner (see `podnet::VethOwner`).
    pub alias: Option<String>,
}

/// The rtm_protocol ipamd and the plugin put on every rule and route they add (`ip rule show proto 118`,
/// `ip route show table all proto 118`). Clean-up that works from a listing removes only entries carrying it:
/// another tool's rule at the same priority, or a route in a table it shares, is never ours to remove.
pub const RTPROT_VPC_CNI: u8 = 118;
/// In a delete request: any maker (the kernel's wildcard).
pub const RTPROT_ANY: u8 = 0;

/// Equality is what the kernel routes by; `proto` says who made the route and is left out of it (see
/// [`RTPROT_VPC_CNI`]), so the same route made by aws-node or an older version still counts as in place.
#[derive(Debug, Clone, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub scope_link: bool,
    pub proto: u8,
}

impl PartialEq for Route {
    fn eq(&self, o: &Self) -> bool {
        (self.dst, self.gateway, self.oif, self.table, self.scope_link)
            == (o.dst, o.gateway, o.oif, o.table, o.scope_link)
    }
}

/// Equality leaves `proto` out, as for [`Route`].
#[derive(Debug, Clone, Eq)]
pub struct Rule {
    pub priority: u32,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
    /// (mark, mask) of `fwmark MARK/MASK`.
    pub fwmark: Option<(u32, u32)>,
    pub table: u32,
    pub proto: u8,
}

impl PartialEq for Rule {
    fn eq(&self, o: &Self) -> bool {
        (self.priority, self.src, self.dst, self.fwmark, self.table) == (o.priority, o.src, o.dst, o.fwmark, o.table)
    }
}

impl Rule {
    pub fn ours(&self) -> bool {
        self.proto == RTPROT_VPC_CNI
    }
}

impl Route {
    pub fn ours(&self) -> bool {
        self.proto == RTPROT_VPC_CNI
    }
}

/// The default connmark bit (AWS_VPC_K8S_CNI_CONNMARK) for connections that entered through the primary ENI to
/// a local address (NodePort, hostPort): their replies from pods on secondary ENIs must leave through the
/// primary ENI too.
pub const NODEPORT_MARK: u32 = 0x80;
pub const NODEPORT_RULE_PRIORITY: u32 = 1024;

/// `fwmark <mark>/<mark> lookup main` at priority 1024, ahead of the pods' per-ENI rules.
pub fn nodeport_rule(mark: u32) -> Rule {
    Rule {
        priority: NODEPORT_RULE_PRIORITY,
        src: None,
        dst: None,
        fwmark: Some((mark, mark)),
        table: MAIN_TABLE,
        proto: RTPROT_VPC_CNI,
    }
}

/// Puts the NodePort rule for `mark` in place (`None`: NodePort support off, no such rule) and removes any other
/// rule of ours at its priority (an earlier mark, or support since turned off); returns whether anything changed.
pub async fn ensure_nodeport_rule(net: &impl HostNet, mark: Option<u32>) -> Result<bool, HostNetError> {
    let want: Vec<Rule> = mark.map(nodeport_rule).into_iter().collect();
    Ok(ensure_rules_at(net, NODEPORT_RULE_PRIORITY, &want).await? > 0)
}

/// Priority of the AWS_EXTERNAL_SERVICE_CIDRS rules: just ahead of the pods' `from <pod> lookup <ENI table>`
/// rules (1536), so traffic to those CIDRs leaves through the main table (the primary ENI) whichever ENI the
/// pod is on.
pub const EXTERNAL_SERVICE_RULE_PRIORITY: u32 = 1535;

/// `to <cidr> lookup main` at [`EXTERNAL_SERVICE_RULE_PRIORITY`] for each of `cidrs`; removes our other rules at
/// that priority (CIDRs since dropped from the setting). Returns how many rules were added or removed.
pub async fn ensure_external_service_rules(net: &impl HostNet, cidrs: &[Ipv4Net]) -> Result<usize, HostNetError> {
    let want: Vec<Rule> = cidrs
        .iter()
        .map(|c| Rule {
            priority: EXTERNAL_SERVICE_RULE_PRIORITY,
            src: None,
            dst: Some(*c),
            fwmark: None,
            table: MAIN_TABLE,
            proto: RTPROT_VPC_CNI,
        })
        .collect();
    ensure_rules_at(net, EXTERNAL_SERVICE_RULE_PRIORITY, &want).await
}

/// Makes `want` (rules at `priority`) exactly the rules of ours at that priority: adds the missing ones (an
/// identical rule another tool made counts as present), removes our others. Returns how many changed.
async fn ensure_rules_at(net: &impl HostNet, priority: u32, want: &[Rule]) -> Result<usize, HostNetError> {
    let rules = net.rules().await?;
    let mut changed = 0;
    for r in rules.iter().filter(|r| r.priority == priority && r.ours() && !want.contains(r)) {
        net.del_rule(r).await?;
        changed += 1;
    }
    for r in want.iter().filter(|r| !rules.contains(r)) {
        net.add_rule(r).await?;
        changed += 1;
    }
    Ok(changed)
}

/// One netlink operation per method.
pub trait HostNet: Send + Sync + 'static {
    fn links(&self) -> impl Future<Output = Result<Vec<Link>, HostNetError>> + Send;
    fn set_link(&self, index: u32, mtu: u32, up: bool) -> impl Future<Output = Result<(), HostNetError>> + Send;
    fn addresses(&self, index: u32) -> impl Future<Output = Result<Vec<Ipv4Net>, HostNetError>> + Send;
    fn add_address(&self, index: u32, addr: Ipv4Net) -> impl Future<Output = Result<(), HostNetError>> + Send;
    fn routes(&self, table: u32) -> impl Future<Output = Result<Vec<Route>, HostNetError>> + Send;
    fn add_route(&self, route: &Route) -> impl Future<Output = Result<(), HostNetError>> + Send;
    fn del_route(&self, route: &Route) -> impl Future<Output = Result<(), HostNetError>> + Send;
    fn rules(&self) -> impl Future<Output = Result<Vec<Rule>, HostNetError>> + Send;
    fn add_rule(&self, rule: &Rule) -> impl Future<Output = Result<(), HostNetError>> + Send;
    fn del_rule(&self, rule: &Rule) -> impl Future<Output = Result<(), HostNetError>> + Send;
}

/// What the node needs to know to wire one secondary ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNet {
    pub mac: String,
    pub device_number: u32,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub mtu: u32,
}

/// The policy-routing table of the ENI at `device_number`: main (254) for the primary ENI (device 0), device
/// number + 1 for the others (aws-vpc-cni's numbering). ipamd wires ENIs and answers the plugin with it.
pub fn eni_route_table(device_number: u32) -> u32 {
    if device_number == 0 { MAIN_TABLE } else { device_number.saturating_add(1) }
}

/// The highest device number whose table ([`eni_route_table`]) stays clear of the kernel's own tables (253
/// default, 254 main, 255 local). An ENI attached beyond it is not one ipamd can route.
pub const MAX_DEVICE_NUMBER: u32 = 251;

impl EniNet {
    pub fn table(&self) -> u32 {
        eni_route_table(self.device_number)
    }
    /// The VPC router's address in the subnet: base + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
    fn rule(&self) -> Rule {
        Rule {
            priority: ENI_RULE_PRIORITY,
            src: Some(host(self.primary_ip)),
            dst: None,
            fwmark: None,
            table: self.table(),
            proto: RTPROT_VPC_CNI,
        }
    }
    fn routes(&self, oif: u32) -> [Route; 2] {
        let gw = self.gateway();
        [
            Route {
                dst: host(gw),
                gateway: None,
                oif: Some(oif),
                table: self.table(),
                scope_link: true,
                proto: RTPROT_VPC_CNI,
            },
            Route {
                dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"),
                gateway: Some(gw),
                oif: Some(oif),
                table: self.table(),
                scope_link: false,
                proto: RTPROT_VPC_CNI,
            },
        ]
    }
}

/// `ip/32`.
pub fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32")
}

/// Runs `f` on a helper thread that has entered the network namespace at `netns` (e.g. /var/run/netns/NAME);
/// the caller's thread never changes namespace. Sockets `f` opens stay bound to that namespace.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
    use std::os::fd::AsFd;
    let target = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let own = std::fs::File::open("/proc/thread-self/ns/net")?;
            nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let r = f();
            // Leave the namespace before the thread ends, even though it is about to.
            let _ = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
            r
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns helper thread panicked")))
    })
}

/// Finds a link by MAC, waiting for it with backoff up to `wait` (a hot-plugged ENI takes a moment to appear).
pub async fn wait_for_link(net: &impl HostNet, mac: &str, wait: Duration) -> Result<Link, HostNetError> {
    let start = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).jitter(Jitter::None);
    loop {
        if let Some(l) = net.links().await?.into_iter().find(|l| l.mac.eq_ignore_ascii_case(mac)) {
            return Ok(l);
        }
        if start.elapsed() >= wait {
            return Err(HostNetError::LinkMissing { mac: mac.to_string(), waited: start.elapsed() });
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Wires one secondary ENI. Returns the number of changes made (0 when everything was already in place).
pub async fn setup_eni(net: &impl HostNet, eni: &EniNet, wait: Duration) -> Result<usize, HostNetError> {
    let link = wait_for_link(net, &eni.mac, wait).await?;
    let mut changes = 0;
    if link.mtu != eni.mtu || !link.up {
        net.set_link(link.index, eni.mtu, true).await?;
        changes += 1;
    }
    let addr = Ipv4Net::new(eni.primary_ip, eni.subnet.prefix_len()).expect("subnet prefix");
    if !net.addresses(link.index).await?.contains(&addr) {
        net.add_address(link.index, addr).await?;
        changes += 1;
    }
    // The kernel's prefix route would send subnet traffic out of this ENI with the wrong source.
    for r in net.routes(MAIN_TABLE).await? {
        if r.dst == eni.subnet && r.oif == Some(link.index) && r.gateway.is_none() {
            net.del_route(&r).await?;
            changes += 1;
        }
    }
    // Only our own routes in the table are stale when not wanted (a route another tool put there stays). A wanted
    // route in place but made by someone else (aws-node, before the switch) is made again as ours (a replace), so
    // that the clean-up after a detach removes it.
    let want = eni.routes(link.index);
    let have = net.routes(eni.table()).await?;
    for r in have.iter().filter(|r| r.ours() && !want.contains(r)) {
        net.del_route(r).await?;
        changes += 1;
    }
    // In order: the gateway's /32 must exist before the default route through it.
    for r in want.iter().filter(|r| !have.iter().any(|h| h == *r && h.ours())) {
        net.add_route(r).await?;
        changes += 1;
    }
    let rule = eni.rule();
    let rules = net.rules().await?;
    let stale = |r: &&Rule| r.ours() && r.priority == ENI_RULE_PRIORITY && r.table == eni.table() && **r != rule;
    for r in rules.iter().filter(stale) {
        net.del_rule(r).await?;
        changes += 1;
    }
    if !rules.iter().any(|r| *r == rule && r.ours()) {
        // The same rule by another maker is taken over: the kernel keeps rules that differ only by protocol apart.
        if let Some(theirs) = rules.iter().find(|r| **r == rule) {
            net.del_rule(theirs).await?;
        }
        net.add_rule(&rule).await?;
        changes += 1;
    }
    Ok(changes)
}

/// Removes our rules and routes of every ENI table not in `keep_tables` (ENIs detached, or left by an earlier
/// run): only what carries [`RTPROT_VPC_CNI`], in a table an ENI can have ([`eni_route_table`]), so another
/// tool's rule at the same priority, a boot rule without one, and main/default/local are never touched. Goes on
/// past errors and returns them all.
pub async fn remove_stale_tables(net: &impl HostNet, keep_tables: &[u32]) -> Result<usize, Vec<HostNetError>> {
    let rules = net.rules().await.map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut removed = 0;
    let eni_table = |t: u32| (eni_route_table(1)..=eni_route_table(MAX_DEVICE_NUMBER)).contains(&t);
    let stale: Vec<&Rule> = rules
        .iter()
        .filter(|r| {
            r.ours() && r.priority == ENI_RULE_PRIORITY && eni_table(r.table) && !keep_tables.contains(&r.table)
        })
        .collect();
    for rule in &stale {
        match net.del_rule(rule).await {
            Ok(()) => removed += 1,
            Err(e) => errors.push(e),
        }
        match net.routes(rule.table).await {
            Ok(routes) => {
                for r in routes.into_iter().filter(Route::ours) {
                    match net.del_route(&r).await {
                        Ok(()) => removed += 1,
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(removed) } else { Err(errors) }
}

/// Removes what a pod's wiring left on the host for `ip` (its `to`/`from` rules and its /32 route in main) after
/// its allocation was released without a CNI DEL. Goes on past errors and returns them all.
pub async fn forget_pod_ip(net: &impl HostNet, ip: Ipv4Addr) -> Result<usize, Vec<HostNetError>> {
    forget_pod_ips(net, &[ip]).await
}

/// [`forget_pod_ip`] for several IPs, reading the node's rules and main table once.
pub async fn forget_pod_ips(net: &impl HostNet, ips: &[Ipv4Addr]) -> Result<usize, Vec<HostNetError>> {
    let mine: std::collections::BTreeSet<Ipv4Net> = ips.iter().map(|ip| host(*ip)).collect();
    let is_mine = |n: &Option<Ipv4Net>| n.as_ref().is_some_and(|n| mine.contains(n));
    let mut errors = Vec::new();
    let mut removed = 0;
    match net.rules().await {
        Ok(rules) => {
            // The plugin's two rules (any maker: aws-node wired pods the same way), not another tool's for the IP.
            let pod_rule = |r: &&Rule| match r.priority {
                podnet::TO_POD_RULE_PRIORITY => is_mine(&r.dst) && r.src.is_none(),
                podnet::FROM_POD_RULE_PRIORITY => is_mine(&r.src),
                _ => false,
            };
            for rule in rules.iter().filter(|r| r.fwmark.is_none()).filter(pod_rule) {
                match net.del_rule(rule).await {
                    Ok(()) => removed += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match net.routes(MAIN_TABLE).await {
        Ok(routes) => {
            for r in routes.iter().filter(|r| mine.contains(&r.dst)) {
                match net.del_route(r).await {
                    Ok(()) => removed += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    if errors.is_empty() { Ok(removed) } else { Err(errors) }
}

/// The pods wired on this host, as the host's own state shows them: each `/32` route in main through a link
/// named with the pods' veth prefix, as (pod IP, host veth). What a lost checkpoint is rebuilt from.
pub async fn pod_ips(net: &impl HostNet, veth_prefix: &str) -> Result<Vec<(Ipv4Addr, String)>, HostNetError> {
    let veths: std::collections::BTreeMap<u32, String> =
        net.links().await?.into_iter().filter(|l| l.name.starts_with(veth_prefix)).map(|l| (l.index, l.name)).collect();
    let mut out: Vec<(Ipv4Addr, String)> = net
        .routes(MAIN_TABLE)
        .await?
        .into_iter()
        .filter(|r| r.dst.prefix_len() == 32 && r.gateway.is_none())
        .filter_map(|r| Some((r.dst.addr(), veths.get(&r.oif?)?.clone())))
        .collect();
    out.sort();
    Ok(out)
}

/// Writes the sysctl at `root/rel` (root normally /proc/sys, rel like `net/ipv4/ip_forward`) when it differs;
/// returns whether it changed.
pub fn ensure_sysctl(root: &Path, rel: &str, value: &str) -> Result<bool, HostNetError> {
    let path = root.join(rel);
    let err = |source| HostNetError::Sysctl { path: path.clone(), source };
    let current = std::fs::read_to_string(&path).map_err(err)?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value).map_err(err)?;
    Ok(true)
}

/// Node-wide settings: forwarding on, loose reverse-path filtering on the primary ENI (replies to pods on
/// secondary ENIs leave by another interface than the one their traffic came in on).
pub fn node_sysctls(root: &Path, primary_link: &str) -> Result<usize, HostNetError> {
    let mut changes = usize::from(ensure_sysctl(root, "net/ipv4/ip_forward", "1")?);
    changes += usize::from(ensure_sysctl(root, &format!("net/ipv4/conf/{primary_link}/rp_filter"), "2")?);
    Ok(changes)
}

#[cfg(test)]
mod fake_tests;

//! The warm-pool reconcile loop: observe the node's ENIs (from IMDS, asking EC2 only when [`Ec2Sync`] says
//! so), hand the observation to the pool actor, ask it for a plan, apply the plan through EC2, and requeue —
//! at once after a change, at the next cooldown expiry, when the actor kicks (a pod took an IP), or after the
//! idle interval. A failing round backs off exponentially (with jitter) and ignores kicks meanwhile, so a
//! burst of pods on an exhausted subnet cannot turn into a burst of EC2 calls.
//!
//! May use: cloud, state, planner, pool, k8s (ENIConfig placement, Events), node (SNAT), telemetry, tasks.

mod apply;
pub mod ec2sync;
#[cfg(test)]
mod foreign_tests;
#[cfg(test)]
mod host_tests;
mod placement;
#[cfg(test)]
mod prefix_tests;
#[cfg(test)]
mod provisioning_tests;
mod recovered;
pub mod snat_keeper;
pub mod subnets;
pub mod sweep;
#[cfg(test)]
mod testrig;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::Backoff;
use ipnet::Ipv4Net;
use moka::future::Cache;

use crate::cloud::ec2::{Ec2Api, Ec2Eni, Ec2Error, InstanceLimits, Subnet};
use crate::cloud::imds::{self, Metadata, NodeInfo};
use crate::k8s::{Kube, eniconfig::EniConfigSpec, events};
use crate::planner::Limits;
use crate::pool::PoolHandle;
use crate::state::datastore::ObservedEni;
use crate::tasks::Heartbeat;
use datapath::{EniNet, HostNet, HostNetError};
use ec2sync::{Ec2Sync, ImdsEnis};

pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
pub const TAG_CLUSTER: &str = "cluster.k8s.amazonaws.com/name";
/// aws-vpc-cni's opt-out tag: an ENI carrying it with value `true` is never touched.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";

/// The wait after the first failed round; it doubles with each failure in a row (see [`error_backoff`]).
pub const ERROR_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a failing round.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(120);
/// A round running longer than this counts as a stalled loop (one EC2 call with every retry takes under 2 min).
pub const ROUND_LIMIT: Duration = Duration::from_secs(600);
/// Between rounds the loop counts as stalled after this many times its wait without a new round.
const STALL_FACTOR: u32 = 10;
/// How soon to look at IMDS again while it has not caught up with ipamd's own EC2 actions.
const IMDS_CATCH_UP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    Imds(#[from] imds::ImdsError),
    #[error("{0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("host network: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    HostNet(Vec<HostNetError>),
    #[error("custom networking: {0}")]
    EniConfig(String),
    #[error("subnet discovery: {0}")]
    NoSubnet(String),
}

impl ReconcileError {
    /// EC2 or IMDS could not be reached or would not answer (as opposed to refusing a request): ipamd serves
    /// degraded from what it knows.
    pub fn unreachable(&self) -> bool {
        match self {
            ReconcileError::Ec2(e) => e.kind.unreachable(),
            ReconcileError::Imds(imds::ImdsError::Request { .. }) => true,
            _ => false,
        }
    }
}

/// Settings of the loop that come from the configuration.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub max_eni: Option<u32>,
    pub cluster_name: String,
    pub additional_tags: BTreeMap<String, String>,
    pub leaked_eni_cleanup: bool,
    /// Wait after a failed round before trying again (doubled per consecutive failure, up to 2 min).
    pub error_backoff: Duration,
    /// Full EC2 sync interval (IPAMD_EC2_RESYNC_INTERVAL); between syncs IMDS is compared with the EC2 view.
    pub ec2_resync: Duration,
    pub telemetry: crate::telemetry::Telemetry,
    /// Deferred DELs (see [`crate::pool::deferred`]), carried out every round.
    pub deferred_dir: std::path::PathBuf,
    /// Pod veth name prefix (AWS_VPC_K8S_CNI_VETHPREFIX), to read pods from host state.
    pub veth_prefix: String,
    /// Allocations were rebuilt from host state (corrupt checkpoint): release each once its pod is gone.
    pub recovered: bool,
    /// The VPC's CIDRs as new pods get them; refreshed from IMDS every round.
    pub vpc_cidrs: Arc<tokio::sync::watch::Sender<Vec<String>>>,
    /// MTU for secondary ENI links (AWS_VPC_ENI_MTU).
    pub eni_mtu: u32,
    /// How long to wait for a newly attached ENI's link to appear.
    pub link_wait: Duration,
    /// ENABLE_SUBNET_DISCOVERY.
    pub subnet_discovery: bool,
    /// The conntrack janitor's queue (host networking only): deferred DELs carried out here are released IPs too.
    pub released: Option<tokio::sync::mpsc::UnboundedSender<(std::net::Ipv4Addr, tokio::time::Instant)>>,
    /// false with DISABLE_NETWORK_RESOURCE_PROVISIONING or ENABLE_IMDS_ONLY_MODE: the pool is what is attached,
    /// no EC2 change is ever asked, and every attached ENI with an IPv4 address not tagged no_manage is served.
    pub provisioning: bool,
    /// AWS_MANAGE_ENIS_NON_SCHEDULABLE: keep changing the pool while the Node is cordoned.
    pub manage_cordoned: bool,
}

pub struct Reconciler<E: Ec2Api, M: Metadata, N: HostNet> {
    ec2: Arc<E>,
    imds: Arc<M>,
    /// `None` when ipamd must not touch the host network (IPAMD_HOST_NETWORK=false).
    hostnet: Option<Arc<N>>,
    node: Arc<NodeInfo>,
    pool: PoolHandle,
    settings: ReconcileSettings,
    kube: Kube,
    limits_cache: Cache<String, InstanceLimits>,
    subnet_cache: Cache<String, Subnet>,
    /// The ENIConfig (name, spec) new ENIs were last created from, to notice a change.
    last_eni_config: Option<(String, EniConfigSpec)>,
    /// Attached ENIs ipamd leaves alone (reported once each).
    foreign: BTreeSet<String>,
    /// What EC2 last said, and when to ask again.
    sync: Ec2Sync,
    /// ENIs created but not attached whose delete failed: retried each round.
    orphans: BTreeSet<String>,
    /// Leaked-ENI candidates without a createdAt tag: when each was first seen available (unix seconds).
    available_since: BTreeMap<String, i64>,
    /// The leaked-ENI sweep runs at start and once per full EC2 sync.
    sweep_due: bool,
    /// Consecutive failed rounds.
    failures: u32,
    /// The last good round ended with IMDS showing everything the EC2 view holds.
    settled: bool,
    /// ENIs whose host networking is known to be in place.
    configured: BTreeSet<String>,
    /// The SNAT ruleset last applied (re-applied when it would differ).
    /// Prefix mode: ENIs EC2 had no /28 for (InsufficientCidrBlocks); they grow by single IPs.
    prefix_fallback: BTreeSet<String>,
    /// Why the pool is held as it is (no EC2 change asked), as last reported.
    held: Option<String>,
}

impl<E: Ec2Api, M: Metadata, N: HostNet> Reconciler<E, M, N> {
    pub fn new(
        ec2: Arc<E>,
        imds: Arc<M>,
        hostnet: Option<Arc<N>>,
        node: Arc<NodeInfo>,
        pool: PoolHandle,
        settings: ReconcileSettings,
        kube: Kube,
    ) -> Self {
        Self {
            kube,
            last_eni_config: None,
            foreign: BTreeSet::new(),
            ec2,
            imds,
            hostnet,
            configured: BTreeSet::new(),
            prefix_fallback: BTreeSet::new(),
            node,
            pool,
            limits_cache: Cache::builder().time_to_live(Duration::from_secs(3600)).build(),
            subnet_cache: Cache::builder().max_capacity(64).build(),
            sync: Ec2Sync::new(settings.ec2_resync, Instant::now()),
            settings,
            orphans: BTreeSet::new(),
            available_since: BTreeMap::new(),
            sweep_due: true,
            failures: 0,
            settled: false,
            held: None,
        }
    }

    /// Runs forever; `on_first_success` fires once (health → SERVING).
    /// SERVING waits until the pool's IPs are usable (IMDS shows them), or at most [`ec2sync::SETTLE`]
    /// after the first good round if IMDS keeps disagreeing.
    /// Each round and each wait beats `heartbeat`, promising the next beat within [`ROUND_LIMIT`] during a
    /// round and within [`STALL_FACTOR`] × the wait (at least a second) between rounds.
    pub async fn run(mut self, on_first_success: impl FnOnce() + Send, heartbeat: Heartbeat) {
        let mut first = Some(on_first_success);
        let mut first_good: Option<Instant> = None;
        let between = |wait: Duration| wait.max(Duration::from_secs(1)) * STALL_FACTOR;
        loop {
            heartbeat.beat(ROUND_LIMIT);
            let started = Instant::now();
            let aws = self.settings.telemetry.clone();
            aws.awscni().in_progress("nodeIPPoolReconcile", 1);
            let result = self.reconcile_once().await;
            aws.awscni().in_progress("nodeIPPoolReconcile", -1);
            aws.reconcile(result.is_ok(), started.elapsed());
            if let Err(e) = &result {
                aws.awscni().round_failed(match e {
                    ReconcileError::Ec2(ec2) => Some(ec2.op),
                    _ => None,
                });
            }
            let requeue = match result {
                Ok(requeue) => {
                    self.failures = 0;
                    self.settings.telemetry.set_degraded(None);
                    let _ = self.pool.reconciled(None).await;
                    let since = *first_good.get_or_insert_with(Instant::now);
                    if (self.settled || since.elapsed() >= ec2sync::SETTLE)
                        && let Some(f) = first.take()
                    {
                        f();
                    }
                    requeue
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let wait = error_backoff(self.settings.error_backoff, self.failures);
                    tracing::warn!("reconcile failed ({} in a row, next try in {wait:.1?}): {e}", self.failures);
                    if let ReconcileError::Ec2(ec2) = &e
                        && let Some((reason, note)) = events::for_ec2_error(ec2)
                    {
                        self.kube.events.warning(reason, "ReconcileENIs", note);
                    }
                    let message =
                        format!("{e} (failed {} times in a row; next try in {}s)", self.failures, wait.as_secs());
                    if e.unreachable() {
                        // Pods keep getting IPs from what is known; SERVING even at start if the checkpoint
                        // holds a pool.
                        self.settings.telemetry.set_degraded(Some(e.to_string()));
                        if self.pool.degraded(message).await.unwrap_or(false)
                            && let Some(f) = first.take()
                        {
                            f();
                        }
                    } else {
                        let _ = self.pool.reconciled(Some(message)).await;
                    }
                    // Kicks (pods asking for IPs) do not cut a backoff short: that is how hot loops start.
                    heartbeat.beat(between(wait));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            heartbeat.beat(between(requeue));
            crate::tasks::fault::stall_point("reconcile").await;
            if !requeue.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(requeue) => {}
                    _ = self.pool.kick.notified() => {}
                }
            }
        }
    }

    /// The instance's limits after MAX_ENI, from DescribeInstanceTypes (cached).
    pub async fn limits(&self) -> Result<Limits, ReconcileError> {
        let ec2 = self.ec2.clone();
        let t = self.node.instance_type.clone();
        let l = self
            .limits_cache
            .try_get_with(t.clone(), async move { ec2.instance_limits(&t).await })
            .await
            .map_err(|e| ReconcileError::Ec2((*e).clone()))?;
        let max_enis = self.settings.max_eni.map_or(l.max_enis, |m| m.min(l.max_enis));
        Ok(Limits { max_enis, ips_per_eni: l.ipv4_per_eni - 1, vcpus: l.vcpus })
    }

    /// One observe → plan → apply round. Returns when to look again.
    pub async fn reconcile_once(&mut self) -> Result<Duration, ReconcileError> {
        let drained = crate::pool::deferred::drain(&self.settings.deferred_dir, &self.pool).await;
        if let Some(tx) = &self.settings.released {
            // Their conntrack entries go before the IPs are reused, as for any release.
            for (_, ip, asked) in drained.released {
                let _ = tx.send((ip, asked));
            }
        }
        if self.settings.recovered {
            self.release_recovered().await;
        }
        let limits = self.limits().await?;
        let (attached, mut host_errors, mut settled) = self.observe(limits).await?;
        let held = self.hold();
        if std::mem::take(&mut self.sweep_due) && self.settings.leaked_eni_cleanup && self.settings.provisioning {
            self.sweep_leaked_enis().await?;
        }
        let managed: Vec<Ec2Eni> = attached.iter().filter(|e| self.managed(e)).cloned().collect();
        if !held {
            self.repair(&managed).await?;
        }
        // The SNAT keeper (its own loop) follows the CIDRs from here.
        self.refresh_vpc_cidrs().await;
        let (mut actions, requeue) = self.pool.plan().await?;
        if held {
            // The plan is what the pool would want; nothing of it is asked of EC2.
            actions.clear();
        } else {
            let placement = self.placement(&attached).await;
            let mut used: BTreeSet<u32> = attached.iter().filter_map(|e| e.device_index).collect();
            for action in &actions {
                self.apply(action, &mut used, &placement).await?;
            }
        }
        if !actions.is_empty() {
            // The pool sees what was just done before the round counts as complete (health waits on it).
            let (_, mut more, now_settled) = self.observe(limits).await?;
            host_errors.append(&mut more);
            settled = now_settled;
        }
        if !host_errors.is_empty() {
            return Err(ReconcileError::HostNet(host_errors));
        }
        self.settled = settled;
        Ok(if !actions.is_empty() {
            Duration::ZERO
        } else if !settled {
            // New IPs wait for IMDS to show them; look again soon (IMDS only, no EC2 call).
            requeue.min(IMDS_CATCH_UP)
        } else {
            requeue
        })
    }

    /// Whether the pool is held as it is this round (no EC2 change): provisioning is off, or the Node is cordoned
    /// and AWS_MANAGE_ENIS_NON_SCHEDULABLE is false. A change of that is an event (`pool-held`, `pool-released`).
    fn hold(&mut self) -> bool {
        let why = if !self.settings.provisioning {
            Some("network resource provisioning is off: the pool is what is attached".to_string())
        } else if !self.settings.manage_cordoned && self.kube.node_cordoned() {
            Some("the node is cordoned (AWS_MANAGE_ENIS_NON_SCHEDULABLE=false): no ENI or IP attached or freed".into())
        } else {
            None
        };
        if why != self.held {
            match &why {
                Some(w) => self.pool.emit("pool-held", w.clone()),
                None => self.pool.emit("pool-released", "the pool follows its targets again".to_string()),
            }
            self.held.clone_from(&why);
        }
        why.is_some()
    }

    /// Whether ipamd manages `eni`: the primary ENI, or one it created for this instance (its instance tag) that
    /// is not opted out with `no_manage=true`, and either way one with a private IPv4 address. Anything else (a
    /// trunk, an EFA or EFA-only interface, one a user attached, an IPv6-only ENI) is left alone — except without
    /// provisioning, where what the operator attached is the pool: every ENI not tagged no_manage.
    fn managed(&self, eni: &Ec2Eni) -> bool {
        self.left_alone(eni).is_none()
    }

    /// Why ipamd leaves `eni` alone, or `None` when it manages it (see [`Self::managed`]).
    fn left_alone(&self, eni: &Ec2Eni) -> Option<String> {
        if eni.primary_ip.is_none() {
            return Some("no private IPv4 address (an EFA-only or IPv6-only interface)".into());
        }
        if eni.device_index.is_some_and(|d| d > datapath::MAX_DEVICE_NUMBER) {
            let max = datapath::MAX_DEVICE_NUMBER;
            return Some(format!("device index beyond {max} (its route table would be the kernel's)"));
        }
        let opted_out = eni.tags.get(TAG_NO_MANAGE).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let ours = eni.id == self.node.primary_eni_id
            || (!opted_out
                && (!self.settings.provisioning || eni.tags.get(TAG_INSTANCE_ID) == Some(&self.node.instance_id)));
        (!ours).then(|| format!("not created by this ipamd or tagged {TAG_NO_MANAGE}=true"))
    }

    /// Reads the node's ENIs (IMDS every time, EC2 only when [`Ec2Sync::due`]), wires the host networking of
    /// those ipamd manages, and hands them to the pool; ENIs it does not manage still take attachment slots,
    /// so the pool's ENI limit shrinks by them. Returns every attached ENI (device indexes in use), the host
    /// errors, and whether IMDS agrees with the EC2 view.
    async fn observe(&mut self, limits: Limits) -> Result<(Vec<Ec2Eni>, Vec<HostNetError>, bool), ReconcileError> {
        let imds = imds::interfaces(self.imds.as_ref()).await?;
        let now = Instant::now();
        if let Some(why) = self.sync.due(&imds, now) {
            tracing::debug!(why = why.as_str(), "asking EC2 for the node's ENIs");
            let enis = self.ec2.attached_enis(&self.node.instance_id).await?;
            self.sync.described(enis, &imds, now, why);
            if why == ec2sync::Why::FullSync {
                self.sweep_due = true;
            }
        }
        let settled = self.sync.confirmed(&imds);
        let attached = self.sync.enis().to_vec();
        let (mine, foreign): (Vec<Ec2Eni>, Vec<Ec2Eni>) = attached.iter().cloned().partition(|e| self.managed(e));
        for e in &foreign {
            if self.foreign.insert(e.id.clone()) {
                let why = self.left_alone(e).unwrap_or_default();
                let what = format!("{} at device {:?}: {why}; left alone, its slot counted", e.id, e.device_index);
                self.pool.emit("eni-ignored", what);
            }
        }
        self.foreign.retain(|id| foreign.iter().any(|e| &e.id == id));
        self.prefix_fallback.retain(|id| mine.iter().any(|e| &e.id == id));
        let mut observed = self.observed(&mine, &imds).await?;
        let seen: usize = observed.iter().map(|o| o.addresses().count()).sum();
        self.settings.telemetry.awscni().reconciled("eniDataStorePoolReconcileAdd", seen as u64);
        let host_errors = match self.hostnet.clone() {
            Some(net) => self.sync_host(net.as_ref(), &mut observed).await,
            None => Vec::new(),
        };
        self.pool.observe(observed, limits, foreign.len() as u32).await?;
        Ok((attached, host_errors, settled))
    }

    /// The VPC's CIDRs from IMDS (a CIDR associated after start shows up here): handed to new pods (their
    /// rules) and to the SNAT table. `None` when IMDS does not answer.
    async fn refresh_vpc_cidrs(&mut self) -> Option<Vec<Ipv4Net>> {
        let path = format!("network/interfaces/macs/{}/vpc-ipv4-cidr-blocks", self.node.primary_mac);
        let text = self.imds.get(&path).await.ok()?;
        let cidrs: Vec<Ipv4Net> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if cidrs.is_empty() {
            return None;
        }
        let texts: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        let changed = self.settings.vpc_cidrs.send_if_modified(|cur| {
            let differs = *cur != texts;
            if differs {
                cur.clone_from(&texts);
            }
            differs
        });
        if changed {
            self.pool.emit("vpc-cidrs", format!("VPC CIDRs for new pods: {}", texts.join(", ")));
        }
        Some(cidrs)
    }

    /// Wires every secondary ENI on the node and removes what detached ENIs left; marks each observed ENI
    /// ready only when its host networking is in place. Returns the errors, having gone on past them.
    async fn sync_host(&mut self, net: &N, observed: &mut [ObservedEni]) -> Vec<HostNetError> {
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for o in observed.iter_mut() {
            if o.id == self.node.primary_eni_id {
                continue;
            }
            o.ready = false;
            let eni = EniNet {
                mac: o.mac.clone(),
                device_number: o.device_number,
                primary_ip: o.primary_ip,
                subnet: o.subnet_cidr,
                mtu: self.settings.eni_mtu,
            };
            // EC2 says it is attached: its table stays even while IMDS does not list it (IMDS lags, or skips an
            // ENI for a round); its pods' traffic goes through that table.
            keep.push(eni.table());
            if o.mac.is_empty() {
                continue;
            }
            let wait = if self.configured.contains(&o.id) { Duration::ZERO } else { self.settings.link_wait };
            match datapath::setup_eni(net, &eni, wait).await {
                Ok(changes) => {
                    if changes > 0 {
                        self.pool.emit(
                            "eni-configured",
                            format!("{} on {} table {} ({changes} changes)", o.id, o.mac, eni.table()),
                        );
                    }
                    self.configured.insert(o.id.clone());
                    o.ready = true;
                }
                Err(e) => {
                    self.configured.remove(&o.id);
                    errors.push(e);
                }
            }
        }
        self.configured.retain(|id| observed.iter().any(|o| &o.id == id));
        if let Err(mut e) = datapath::remove_stale_tables(net, &keep).await {
            errors.append(&mut e);
        }
        errors
    }

    async fn observed(&mut self, attached: &[Ec2Eni], imds: &ImdsEnis) -> Result<Vec<ObservedEni>, ReconcileError> {
        let mut out = Vec::with_capacity(attached.len());
        for e in attached {
            // Never the case for a managed ENI (see `managed`).
            let Some(primary_ip) = e.primary_ip else { continue };
            let subnet_cidr = self.subnet(&e.subnet_id).await?.cidr;
            // An ENI IMDS does not show yet has no MAC: its link cannot be found, so it is not ready.
            let mac = imds.get(&e.id);
            out.push(ObservedEni {
                id: e.id.clone(),
                mac: mac.map(|m| m.mac.clone()).unwrap_or_default(),
                // Bounded: a number from IMDS alone is used only within what ipamd can route (see `managed`).
                device_number: e
                    .device_index
                    .or(mac.map(|m| m.device_number).filter(|d| *d <= datapath::MAX_DEVICE_NUMBER))
                    .unwrap_or(0),
                subnet_id: e.subnet_id.clone(),
                subnet_cidr,
                primary_ip,
                secondary_ips: e.secondary_ips.clone(),
                prefixes: e.prefixes.clone(),
                fallback: self.prefix_fallback.contains(&e.id),
                unconfirmed: Ec2Sync::unconfirmed(e, imds),
                // Without host networking to do, every ENI is usable as observed.
                ready: self.hostnet.is_none() || e.id == self.node.primary_eni_id,
            });
        }
        Ok(out)
    }

    /// A subnet's CIDR and zone (the node's own from IMDS, others from EC2 once, cached).
    async fn subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        if subnet_id == self.node.subnet_id {
            return Ok(Subnet { cidr: self.node.subnet_cidr, availability_zone: self.node.availability_zone.clone() });
        }
        let ec2 = self.ec2.clone();
        let id = subnet_id.to_string();
        self.subnet_cache.try_get_with(id.clone(), async move { ec2.subnet(&id).await }).await.map_err(|e| (*e).clone())
    }
}

/// The wait after the `failures`-th failed round in a row: `base` doubled per failure up to
/// [`MAX_ERROR_BACKOFF`], spread by ±20 % so that nodes failing together do not retry together.
fn error_backoff(base: Duration, failures: u32) -> Duration {
    Backoff::new(base, MAX_ERROR_BACKOFF).delay(failures.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_secs(2);
        for (failures, nominal) in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (7, 120.0), (40, 120.0)] {
            let w = error_backoff(base, failures).as_secs_f64();
            assert!(w >= nominal * 0.8 && w <= nominal * 1.2, "failure {failures}: {w}");
        }
    }
}

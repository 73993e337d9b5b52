//! The warm-pool reconcile loop: observe EC2 (and IMDS for MACs), hand the observation to the pool actor, ask
//! it for a plan, apply the plan through EC2, and requeue — at once after a change, at the next cooldown
//! expiry, when the actor kicks (a pod took an IP), or after the idle interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use moka::future::Cache;

use crate::datastore::ObservedEni;
use crate::ec2::{Ec2Api, Ec2Eni, Ec2Error, InstanceLimits, NewEni, Subnet};
use crate::hostnet::{self, EniNet, HostNet, HostNetError};
use crate::imds::{self, MacInfo, Metadata, NodeInfo};
use crate::k8s::{Kube, eniconfig::EniConfigSpec, events};
use crate::placement::Placement;
use crate::planner::{Action, Limits};
use crate::pool::PoolHandle;
use crate::snat::{self, SnatConfig};

pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
pub const TAG_CLUSTER: &str = "cluster.k8s.amazonaws.com/name";
/// aws-vpc-cni's opt-out tag: an ENI carrying it with value `true` is never touched.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";

/// How often leaked ENIs (created by this node, never attached, e.g. after a crash) are looked for.
const LEAK_SWEEP_EVERY: Duration = Duration::from_secs(300);

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
}

/// Settings of the loop that come from the configuration.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub max_eni: Option<u32>,
    pub cluster_name: String,
    pub additional_tags: BTreeMap<String, String>,
    pub leaked_eni_cleanup: bool,
    /// Wait after a failed round before trying again.
    pub error_backoff: Duration,
    /// MTU for secondary ENI links (AWS_VPC_ENI_MTU).
    pub eni_mtu: u32,
    /// How long to wait for a newly attached ENI's link to appear.
    pub link_wait: Duration,
    /// Node SNAT (only with host networking); its VPC CIDRs are refreshed from IMDS every round.
    pub snat: Option<SnatConfig>,
}

pub struct Reconciler<E: Ec2Api, M: Metadata, N: HostNet> {
    pub ec2: Arc<E>,
    pub imds: Arc<M>,
    /// `None` when ipamd must not touch the host network (IPAMD_HOST_NETWORK=false).
    pub hostnet: Option<Arc<N>>,
    pub node: Arc<NodeInfo>,
    pub pool: PoolHandle,
    pub settings: ReconcileSettings,
    pub kube: Kube,
    limits_cache: Cache<String, InstanceLimits>,
    subnet_cache: Cache<String, Subnet>,
    /// The ENIConfig (name, spec) new ENIs were last created from, to notice a change.
    pub(crate) last_eni_config: Option<(String, EniConfigSpec)>,
    /// Attached ENIs ipamd leaves alone (reported once each).
    foreign: BTreeSet<String>,
    macs: BTreeMap<String, MacInfo>,
    last_leak_sweep: Option<Instant>,
    /// ENIs whose host networking is known to be in place.
    configured: BTreeSet<String>,
    /// The SNAT ruleset last applied (re-applied when it would differ).
    snat_applied: Option<SnatConfig>,
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
            snat_applied: None,
            node,
            pool,
            settings,
            limits_cache: Cache::builder().time_to_live(Duration::from_secs(3600)).build(),
            subnet_cache: Cache::builder().max_capacity(64).build(),
            macs: BTreeMap::new(),
            last_leak_sweep: None,
        }
    }

    /// Runs forever; `on_first_success` fires once (health → SERVING).
    pub async fn run(mut self, on_first_success: impl FnOnce() + Send) {
        let mut first = Some(on_first_success);
        loop {
            let requeue = match self.reconcile_once().await {
                Ok(requeue) => {
                    let _ = self.pool.reconciled(None).await;
                    if let Some(f) = first.take() {
                        f();
                    }
                    requeue
                }
                Err(e) => {
                    tracing::warn!("reconcile failed: {e}");
                    if let ReconcileError::Ec2(ec2) = &e
                        && let Some((reason, note)) = events::for_ec2_error(ec2)
                    {
                        self.kube.events.warning(reason, "ReconcileENIs", note);
                    }
                    let _ = self.pool.reconciled(Some(e.to_string())).await;
                    self.settings.error_backoff
                }
            };
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
        Ok(Limits { max_enis, ips_per_eni: l.ipv4_per_eni - 1 })
    }

    /// One observe → plan → apply round. Returns when to look again.
    pub async fn reconcile_once(&mut self) -> Result<Duration, ReconcileError> {
        let limits = self.limits().await?;
        if self.settings.leaked_eni_cleanup && self.last_leak_sweep.is_none_or(|t| t.elapsed() >= LEAK_SWEEP_EVERY) {
            self.sweep_leaked_enis().await?;
            self.last_leak_sweep = Some(Instant::now());
        }
        let (attached, mut host_errors) = self.observe(limits).await?;
        if let Err(e) = self.sync_snat().await {
            host_errors.push(HostNetError::Netlink { op: "nftables", message: e });
        }
        let placement = self.placement(&attached).await;
        let (actions, requeue) = self.pool.plan().await?;
        let mut used: BTreeSet<u32> = attached.iter().filter_map(|e| e.device_index).collect();
        for action in &actions {
            self.apply(action, &attached, &mut used, &placement).await?;
        }
        if !actions.is_empty() {
            // The pool sees what was just done before the round counts as complete (health waits on it).
            let (_, mut more) = self.observe(limits).await?;
            host_errors.append(&mut more);
        }
        if !host_errors.is_empty() {
            return Err(ReconcileError::HostNet(host_errors));
        }
        Ok(if actions.is_empty() { requeue } else { Duration::ZERO })
    }

    /// Whether ipamd manages `eni`: the primary ENI, or one it created for this instance (its instance tag) that
    /// is not opted out with `no_manage=true`. Anything else (a trunk, an EFA, one a user attached) is left alone.
    pub(crate) fn managed(&self, eni: &Ec2Eni) -> bool {
        eni.id == self.node.primary_eni_id
            || (eni.tags.get(TAG_INSTANCE_ID) == Some(&self.node.instance_id)
                && eni.tags.get(TAG_NO_MANAGE).is_none_or(|v| !v.eq_ignore_ascii_case("true")))
    }

    /// Reads the node's ENIs from EC2, wires the host networking of those ipamd manages, and hands them to the
    /// pool; ENIs it does not manage still take attachment slots, so the pool's ENI limit shrinks by them.
    /// Returns every attached ENI (device indexes in use) and the host errors.
    async fn observe(&mut self, limits: Limits) -> Result<(Vec<Ec2Eni>, Vec<HostNetError>), ReconcileError> {
        let attached = self.ec2.attached_enis(&self.node.instance_id).await?;
        let (mine, foreign): (Vec<Ec2Eni>, Vec<Ec2Eni>) = attached.iter().cloned().partition(|e| self.managed(e));
        for e in &foreign {
            if self.foreign.insert(e.id.clone()) {
                self.pool.emit(
                    "eni-ignored",
                    format!(
                        "{} at device {:?}: not created by this ipamd or tagged {TAG_NO_MANAGE}=true; left alone",
                        e.id, e.device_index
                    ),
                );
            }
        }
        self.foreign.retain(|id| foreign.iter().any(|e| &e.id == id));
        let mut observed = self.observed(&mine).await?;
        let host_errors = match self.hostnet.clone() {
            Some(net) => self.sync_host(net.as_ref(), &mut observed).await,
            None => Vec::new(),
        };
        self.pool.observe(observed, limits, foreign.len() as u32).await?;
        Ok((attached, host_errors))
    }

    /// Keeps the SNAT table in step with the VPC's CIDRs (IMDS), rebuilding it atomically when they change.
    async fn sync_snat(&mut self) -> Result<(), String> {
        let Some(mut want) = self.settings.snat.clone() else { return Ok(()) };
        let path = format!("network/interfaces/macs/{}/vpc-ipv4-cidr-blocks", self.node.primary_mac);
        if let Ok(text) = self.imds.get(&path).await {
            let cidrs: Vec<Ipv4Net> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !cidrs.is_empty() {
                want.vpc_cidrs = cidrs;
            }
        }
        if self.snat_applied.as_ref() == Some(&want) {
            return Ok(());
        }
        let cfg = want.clone();
        tokio::task::spawn_blocking(move || snat::apply(&cfg))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.pool.emit(
            "snat-applied",
            format!(
                "table ip {} (VPC {:?}, external {}, {:?})",
                snat::TABLE,
                want.vpc_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                want.external,
                want.randomize
            ),
        );
        self.snat_applied = Some(want);
        Ok(())
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
            if o.mac.is_empty() {
                continue;
            }
            let eni = EniNet {
                mac: o.mac.clone(),
                device_number: o.device_number,
                primary_ip: o.primary_ip,
                subnet: o.subnet_cidr,
                mtu: self.settings.eni_mtu,
            };
            keep.push(eni.table());
            let wait = if self.configured.contains(&o.id) { Duration::ZERO } else { self.settings.link_wait };
            match hostnet::setup_eni(net, &eni, wait).await {
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
        if let Err(mut e) = hostnet::remove_stale_tables(net, &keep).await {
            errors.append(&mut e);
        }
        errors
    }

    async fn observed(&mut self, attached: &[Ec2Eni]) -> Result<Vec<ObservedEni>, ReconcileError> {
        if attached.iter().any(|e| !self.macs.contains_key(&e.id)) {
            self.macs = imds::interfaces(self.imds.as_ref()).await?;
        }
        let mut out = Vec::with_capacity(attached.len());
        for e in attached {
            let subnet_cidr = self.subnet(&e.subnet_id).await?.cidr;
            let mac = self.macs.get(&e.id);
            out.push(ObservedEni {
                id: e.id.clone(),
                mac: mac.map(|m| m.mac.clone()).unwrap_or_default(),
                device_number: e.device_index.or(mac.map(|m| m.device_number)).unwrap_or(0),
                subnet_id: e.subnet_id.clone(),
                subnet_cidr,
                primary_ip: e.primary_ip,
                secondary_ips: e.secondary_ips.clone(),
                // Without host networking to do, every ENI is usable as observed.
                ready: self.hostnet.is_none() || e.id == self.node.primary_eni_id,
            });
        }
        Ok(out)
    }

    /// A subnet's CIDR and zone (the node's own from IMDS, others from EC2 once, cached).
    pub(crate) async fn subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        if subnet_id == self.node.subnet_id {
            return Ok(Subnet { cidr: self.node.subnet_cidr, availability_zone: self.node.availability_zone.clone() });
        }
        let ec2 = self.ec2.clone();
        let id = subnet_id.to_string();
        self.subnet_cache.try_get_with(id.clone(), async move { ec2.subnet(&id).await }).await.map_err(|e| (*e).clone())
    }

    fn tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.settings.additional_tags.clone();
        tags.insert(TAG_INSTANCE_ID.into(), self.node.instance_id.clone());
        let created = crate::pool::now_ms() / 1000;
        tags.insert(TAG_CREATED_AT.into(), created.to_string());
        if !self.settings.cluster_name.is_empty() {
            tags.insert(TAG_CLUSTER.into(), self.settings.cluster_name.clone());
        }
        tags
    }

    async fn apply(
        &self,
        action: &Action,
        attached: &[Ec2Eni],
        used: &mut BTreeSet<u32>,
        placement: &Result<Placement, String>,
    ) -> Result<(), ReconcileError> {
        match action {
            Action::CreateEni { ip_count } => {
                let place = placement.clone().map_err(ReconcileError::EniConfig)?;
                let device_index = (1..).find(|d| !used.contains(d)).unwrap_or(1);
                let new = NewEni {
                    subnet_id: place.subnet_id,
                    security_groups: place.security_groups,
                    ip_count: *ip_count,
                    description: format!("aws-K8S-{}", self.node.instance_id),
                    tags: self.tags(),
                };
                let eni = self.ec2.create_eni(&new).await?;
                let attachment = match self.ec2.attach_eni(&eni.id, &self.node.instance_id, device_index).await {
                    Ok(a) => a,
                    Err(e) => {
                        // Do not leak it: an unattached ENI still costs an address per IP in the subnet.
                        if let Err(de) = self.ec2.delete_eni(&eni.id).await {
                            tracing::warn!("deleting unattached {} after a failed attach: {de}", eni.id);
                        }
                        return Err(e.into());
                    }
                };
                used.insert(device_index);
                self.ec2.set_delete_on_termination(&eni.id, &attachment).await?;
                self.pool.emit(
                    "eni-attached",
                    format!(
                        "{} at device {device_index} with {} IPs in {}",
                        eni.id,
                        eni.secondary_ips.len(),
                        eni.subnet_id
                    ),
                );
            }
            Action::AssignIps { eni_id, count } => {
                self.ec2.assign_ips(eni_id, *count).await?;
                self.pool.emit("ips-assigned", format!("{count} IPs to {eni_id}"));
            }
            Action::UnassignIps { eni_id, ips } => {
                self.ec2.unassign_ips(eni_id, ips).await?;
                self.pool.emit("ips-unassigned", format!("{} IPs from {eni_id}", ips.len()));
            }
            Action::DeleteEni { eni_id } => {
                if let Some(att) = attached.iter().find(|e| &e.id == eni_id).and_then(|e| e.attachment_id.clone()) {
                    self.ec2.detach_eni(&att).await?;
                }
                self.delete_with_retry(eni_id).await?;
                self.pool.emit("eni-deleted", format!("{eni_id} detached and deleted"));
            }
        }
        Ok(())
    }

    /// EC2 detaches asynchronously: deletion fails with InUse until the detach has finished.
    async fn delete_with_retry(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            match self.ec2.delete_eni(eni_id).await {
                Err(e) if e.code.contains("InUse") && attempts < 8 => {
                    attempts += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn sweep_leaked_enis(&self) -> Result<(), ReconcileError> {
        let leaked = self.ec2.unattached_tagged_enis(TAG_INSTANCE_ID, &self.node.instance_id).await?;
        for eni in leaked {
            match self.ec2.delete_eni(&eni.id).await {
                Ok(()) => {
                    self.pool.emit("eni-deleted", format!("{} leaked (created by this node, never attached)", eni.id))
                }
                Err(e) => tracing::warn!("leaked {}: {e}", eni.id),
            }
        }
        Ok(())
    }
}

//! Where the pool starts from. Our checkpoint when it can be trusted; when it is damaged (moved aside) or
//! missing, the host's pod routes say which IPs are in use: every `/32` route in main through a pod veth holds
//! its IP (network [`RECOVERED_NETWORK`], released once the route is gone: `reconcile::recovered`), so no new
//! pod is handed a live pod's IP. A missing `ipam.json` is never taken for an empty node while the host routes
//! pods.
//!
//! While the checkpoint's marker says the aws-node import is pending (there was no `ipam.json`), aws-node's
//! checkpoint is imported, checked as [`crate::state::migrate`] says, and its entries win for the IPs they name:
//! they carry the keys the plugin will send. Without our file a first start after aws-node and a start that lost
//! our file look the same, and in the second aws-node's file is old: an IP it names may be a newer pod's now.
//! So each entry must also be confirmed by the host, whose routes are the truth: its IP routed to a veth that no
//! vpc-cni plugin wired (ours carry their owner in the link's alias) and, when the entry names its pod, to that
//! pod's veth (aws-vpc-cni names it as the plugin does). An entry whose IP a pod of ours holds, or whose pod has
//! no route, is aws-node's past: skipped, and the route, if any, is held as recovered. Without host networking
//! (IPAMD_HOST_NETWORK=false) there are no routes to ask, and aws-node's file is taken as it passes the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use datapath::HostNet;
use datapath::podnet::VethOwner;

use super::DaemonError;
use crate::cloud::imds::{Metadata, NodeInfo};
use crate::config::Config;
use crate::state::checkpoint::{AwsNodeImport, Checkpoint, CheckpointError, Store};
use crate::state::datastore::{AllocKey, Allocation, RECOVERED_NETWORK};
use crate::state::migrate::{self, Imported, NodeAddresses};

/// IMDS reads for the import: as many as a first start's node bootstrap gets.
const IMDS_ATTEMPTS: u32 = 9;

/// What the state dir held.
pub(super) enum Loaded {
    Saved(Checkpoint),
    /// Unparsable or inconsistent: moved aside, and the allocations rebuilt from the host.
    Damaged(CheckpointError),
    Missing,
}

impl Loaded {
    /// Reads `ipam.json`. An I/O error or a newer version stops the start (a downgrade must not drop
    /// allocations); a damaged file never does (no crash loop).
    pub(super) fn read(store: &Store) -> Result<Self, DaemonError> {
        match store.read() {
            Ok(Some(cp)) => Ok(Self::Saved(cp)),
            Ok(None) => Ok(Self::Missing),
            Err(e) if e.damaged() => Ok(Self::Damaged(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// The node the checkpoint saved (served from when IMDS is down).
    pub(super) fn node(&self) -> Option<&NodeInfo> {
        match self {
            Self::Saved(cp) => cp.node.as_ref(),
            _ => None,
        }
    }
}

/// A pod as the host shows it: its IP routed in main to a host veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostPod {
    pub ip: Ipv4Addr,
    pub veth: String,
    /// The owner the plugin recorded on the veth; `None` on one aws-node (or a vpc-cni before owners) made.
    pub owner: Option<VethOwner>,
}

/// aws-node's checkpoint, and IMDS to check its addresses against.
pub(super) struct AwsNode<'a, M> {
    pub path: PathBuf,
    pub imds: &'a M,
    pub node: &'a NodeInfo,
}

/// The checkpoint to start from, and why it was rebuilt from the host, if it was (for the log, the event stream
/// and a Warning Event).
pub(super) async fn restore<M: Metadata>(
    cfg: &Config,
    store: &Store,
    loaded: Loaded,
    imds: &M,
    node: &NodeInfo,
) -> Result<(Checkpoint, Option<String>), DaemonError> {
    let settled = matches!(&loaded, Loaded::Saved(cp) if cp.aws_node_import == AwsNodeImport::Done);
    let host = if settled { None } else { host_pods(cfg).await };
    let aws_node = cfg.aws_node_checkpoint().map(|path| AwsNode { path, imds, node });
    settle(store, loaded, host.as_deref(), &cfg.aws_vpc_k8s_cni_vethprefix, aws_node).await
}

/// [`restore`] with the host's pods read (`None`: there is no host to ask).
pub(super) async fn settle<M: Metadata>(
    store: &Store,
    loaded: Loaded,
    host: Option<&[HostPod]>,
    veth_prefix: &str,
    aws_node: Option<AwsNode<'_, M>>,
) -> Result<(Checkpoint, Option<String>), DaemonError> {
    let now = crate::pool::now_ms() / 1000;
    let (mut cp, mut why) = match loaded {
        Loaded::Saved(cp) => (cp, None),
        Loaded::Damaged(e) => {
            let aside = store.move_aside()?;
            // It was ours: this node had its first start, and aws-node's file is its past.
            let mut cp = Checkpoint { aws_node_import: AwsNodeImport::Done, ..Checkpoint::default() };
            let n = recover(&mut cp, host.unwrap_or(&[]), now);
            let why =
                format!("{e}; moved aside to {}; {n} allocations rebuilt from the host's pod routes", aside.display());
            tracing::error!("{why}");
            store.save(&cp)?;
            (cp, Some(why))
        }
        Loaded::Missing => (Checkpoint::default(), None),
    };
    if cp.aws_node_import == AwsNodeImport::Pending {
        if let Some(src) = aws_node {
            import(&mut cp, src, host, veth_prefix, now).await?;
        }
        let n = recover(&mut cp, host.unwrap_or(&[]), now);
        if n > 0 {
            let w = format!(
                "no checkpoint at {}, but the host routes {n} pods no checkpoint names: their IPs are held \
                 (rebuilt from the host's pod routes) until their routes are gone",
                store.path().display()
            );
            tracing::warn!("{w}");
            why = Some(w);
        }
        cp.aws_node_import = AwsNodeImport::Done;
        store.save(&cp)?;
    }
    Ok((cp, why))
}

/// The pods the host routes to; `None` without host networking, or when the host cannot be read (logged).
async fn host_pods(cfg: &Config) -> Option<Vec<HostPod>> {
    if !cfg.ipamd_host_network {
        return None;
    }
    let read = async {
        let net = datapath::netlink::Netlink::current()?;
        let aliases: BTreeMap<String, Option<String>> =
            net.links().await?.into_iter().map(|l| (l.name, l.alias)).collect();
        let pods = datapath::pod_ips(&net, &cfg.aws_vpc_k8s_cni_vethprefix).await?;
        Ok::<_, datapath::HostNetError>(
            pods.into_iter()
                .map(|(ip, veth)| {
                    let owner = aliases.get(&veth).and_then(|a| a.as_deref()).and_then(VethOwner::from_alias);
                    HostPod { ip, veth, owner }
                })
                .collect(),
        )
    };
    match read.await {
        Ok(pods) => Some(pods),
        Err(e) => {
            tracing::error!("reading the pods from the host's routes: {e}; restoring without them");
            None
        }
    }
}

/// Holds the IP of every pod the host routes to that no allocation in `cp` holds (see
/// [`RECOVERED_NETWORK`]); returns how many.
fn recover(cp: &mut Checkpoint, host: &[HostPod], now: i64) -> usize {
    let mut held: BTreeSet<Ipv4Addr> = cp.allocations.values().map(|a| a.ip).collect();
    let mut n = 0;
    for p in host.iter().filter(|p| held.insert(p.ip)) {
        let key = AllocKey {
            network_name: RECOVERED_NETWORK.into(),
            container_id: format!("recovered-{}", p.ip),
            if_name: p.veth.clone(),
        };
        let a = Allocation {
            ip: p.ip,
            eni_id: String::new(),
            pod_namespace: String::new(),
            pod_name: p.veth.clone(),
            pod_uid: String::new(),
            allocated_unix: now,
        };
        cp.allocations.insert(key, a);
        n += 1;
    }
    if n > 0 {
        tracing::warn!(allocations = n, "allocations rebuilt from host state");
    }
    n
}

/// Imports aws-node's checkpoint into `cp` (its entries that pass the checks and, with `host`, that the host
/// confirms); an unreadable one stops the start (handing its IPs out twice would be worse).
async fn import<M: Metadata>(
    cp: &mut Checkpoint,
    src: AwsNode<'_, M>,
    host: Option<&[HostPod]>,
    veth_prefix: &str,
    now: i64,
) -> Result<(), DaemonError> {
    let path = src.path.as_path();
    let Some(bytes) = migrate::read(path).map_err(DaemonError::Migrate)? else {
        return Ok(());
    };
    let interfaces = super::startup::retry_imds(IMDS_ATTEMPTS, || crate::cloud::imds::interfaces(src.imds)).await?;
    let addresses = NodeAddresses::new(interfaces.values(), src.node.primary_ip);
    let mut imported = migrate::parse(path, &bytes, now, &addresses).map_err(DaemonError::Migrate)?;
    if let Some(host) = host {
        confirm_on_host(&mut imported, host, veth_prefix);
    }
    let held: BTreeSet<Ipv4Addr> = cp.allocations.values().map(|a| a.ip).collect();
    for s in &imported.skipped {
        tracing::warn!(path = %path.display(), "aws-node checkpoint entry not imported: {s}");
    }
    let mut n = 0;
    for (k, a) in imported.allocations {
        if !held.contains(&a.ip) && !cp.allocations.contains_key(&k) {
            cp.allocations.insert(k, a);
            n += 1;
        }
    }
    tracing::info!(
        path = %path.display(), allocations = n, skipped = imported.skipped.len(),
        "imported aws-node's checkpoint: its pods keep their IPs"
    );
    Ok(())
}

/// Keeps the entries the host confirms as pods aws-node wired (see the module's doc); the others are skipped.
fn confirm_on_host(imported: &mut Imported, host: &[HostPod], veth_prefix: &str) {
    let routes: BTreeMap<Ipv4Addr, &HostPod> = host.iter().map(|p| (p.ip, p)).collect();
    let mut skipped = Vec::new();
    imported.allocations.retain(|k, a| {
        let why = match routes.get(&a.ip) {
            None => Some("no pod route on the host: its pod is gone".to_string()),
            Some(HostPod { veth, owner: Some(o), .. }) => {
                Some(format!("routed to {veth}, which vpc-cni wired for {}: the entry is older", o.pod))
            }
            Some(HostPod { veth, owner: None, .. }) if !a.pod_name.is_empty() => {
                let theirs = datapath::podnet::host_veth_name(veth_prefix, &a.pod_namespace, &a.pod_name);
                (&theirs != veth)
                    .then(|| format!("routed to {veth}, not to {}/{}'s {theirs}", a.pod_namespace, a.pod_name))
            }
            Some(_) => None,
        };
        match why {
            Some(w) => {
                skipped.push(format!("{} for {}: {w}", a.ip, k.container_id));
                false
            }
            None => true,
        }
    });
    imported.skipped.extend(skipped);
}

#[cfg(test)]
mod tests;

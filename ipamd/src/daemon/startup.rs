//! Start-up steps of the daemon: the state-dir lock, restoring the checkpoint (or rebuilding it from the host
//! when it is damaged), the one-time import of aws-node's checkpoint, the node from IMDS, the node-wide host
//! settings, and the readiness-gated CNI install job.

use std::time::Duration;

use backoff::Backoff;
use datapath::netlink::Netlink;

use super::DaemonError;
use crate::cloud::imds::{AwsImds, ImdsError, NodeInfo};
use crate::config::Config;
use crate::node::install::Install;
use crate::pool::PoolHandle;
use crate::state::checkpoint::{Checkpoint, Store};

/// The checkpoint to start from, and why it was rebuilt from the host, if it was (a damaged file). A checkpoint that
/// cannot be trusted never causes a crash loop: it is kept aside for a post-mortem and the allocations are
/// rebuilt from the host's pod routes. An I/O error or a newer version still stops the start (a downgrade must
/// not drop allocations).
pub(super) async fn restore(cfg: &Config, store: &Store) -> Result<(Checkpoint, Option<String>), DaemonError> {
    let first_start = !store.path().exists();
    let (mut checkpoint, recovered) = match store.load() {
        Ok(cp) => (cp, None),
        Err(e) if e.damaged() => {
            let aside = store.move_aside()?;
            let why =
                format!("{e}; moved aside to {}; allocations rebuilt from the host's pod routes", aside.display());
            tracing::error!("{why}");
            let cp = rebuild_from_host(cfg).await;
            store.save(&cp)?;
            (cp, Some(why))
        }
        Err(e) => return Err(e.into()),
    };
    if first_start && let Some(path) = cfg.aws_node_checkpoint() {
        import_aws_node(&path, store, &mut checkpoint)?;
    }
    Ok((checkpoint, recovered))
}

/// Reads IMDS, retrying for a while: at node boot the metadata service can lag the daemon's start.
pub(super) async fn load_node(imds: &AwsImds, attempts: u32) -> Result<NodeInfo, ImdsError> {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match NodeInfo::load(imds).await {
            Ok(n) => return Ok(n),
            Err(e) if backoff.attempts() + 1 < attempts => {
                let delay = backoff.next_delay();
                tracing::warn!("IMDS not ready ({e}); retrying in {delay:.1?}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens netlink in ipamd's own namespace (the node's) and applies the node-wide sysctls on the primary ENI,
/// which is found by the MAC IMDS reports.
pub(super) async fn host_setup(node: &NodeInfo, proc_sys: &std::path::Path) -> Result<(Netlink, String), DaemonError> {
    let net = Netlink::current()?;
    let primary = datapath::wait_for_link(&net, &node.primary_mac, Duration::from_secs(10)).await?;
    let changes =
        datapath::node_sysctls(proc_sys, &primary.name)? + usize::from(datapath::ensure_nodeport_rule(&net).await?);
    tracing::info!(link = %primary.name, mac = %node.primary_mac, changes, "node sysctls: ip_forward=1, rp_filter=2");
    Ok((net, primary.name))
}

/// Takes `<state dir>/ipamd.lock` (flock, held for the process's life; the kernel drops it on any exit, kill -9
/// included) and writes this pid into it. A second ipamd on the same state dir stops here.
pub(super) fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("ipamd.lock");
    let state_err = |source| DaemonError::StateDir { path: path.display().to_string(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(state_err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)
                .and_then(|_| lock.rewind())
                .and_then(|_| write!(lock, "{}", std::process::id()))
                .map_err(state_err)?;
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(DaemonError::Locked { path: path.display().to_string(), holder: format!("pid {}", pid.trim()) })
        }
        Err((_, e)) => Err(state_err(e.into())),
    }
}

/// A checkpoint holding an allocation for every pod the host routes to (see
/// [`crate::state::datastore::RECOVERED_NETWORK`]); empty without host networking.
async fn rebuild_from_host(cfg: &Config) -> Checkpoint {
    use crate::state::datastore::{AllocKey, Allocation, RECOVERED_NETWORK};
    let mut cp = Checkpoint::default();
    if !cfg.ipamd_host_network {
        return cp;
    }
    let pods = match Netlink::current() {
        Ok(net) => datapath::pod_ips(&net, &cfg.aws_vpc_k8s_cni_vethprefix).await,
        Err(e) => Err(e),
    };
    match pods {
        Ok(pods) => {
            let now = crate::pool::now_ms() / 1000;
            for (ip, veth) in pods {
                let key = AllocKey {
                    network_name: RECOVERED_NETWORK.into(),
                    container_id: format!("recovered-{ip}"),
                    if_name: veth.clone(),
                };
                let a = Allocation {
                    ip,
                    eni_id: String::new(),
                    pod_namespace: String::new(),
                    pod_name: veth,
                    pod_uid: String::new(),
                    allocated_unix: now,
                };
                cp.allocations.insert(key, a);
            }
            tracing::warn!(allocations = cp.allocations.len(), "allocations rebuilt from host state");
        }
        Err(e) => tracing::error!("reading pods from host state: {e}; starting with no allocations"),
    }
    cp
}

/// Imports aws-node's checkpoint into ours (first start only) and persists the result at once, so the import
/// happens exactly once; an unreadable one stops the start (handing its IPs out twice would be worse).
fn import_aws_node(path: &std::path::Path, store: &Store, cp: &mut Checkpoint) -> Result<(), DaemonError> {
    let Some(imported) =
        crate::state::migrate::import(path, crate::pool::now_ms() / 1000).map_err(DaemonError::Migrate)?
    else {
        return Ok(());
    };
    for s in &imported.skipped {
        tracing::warn!(path = %path.display(), "aws-node checkpoint entry not imported: {s}");
    }
    let n = imported.allocations.len();
    cp.allocations.extend(imported.allocations);
    store.save(cp)?;
    tracing::info!(path = %path.display(), allocations = n, "imported aws-node's checkpoint: its pods keep their IPs");
    Ok(())
}

/// The readiness-gated install (see [`crate::node::install`]), retried until it succeeds: until then the node stays
/// NotReady, which is the safe side.
pub(super) async fn install_cni(install: Install, pool: PoolHandle) {
    loop {
        let job = install.clone();
        match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(Ok(changed)) => {
                let msg = format!(
                    "vpc-cni installed in {} and {} in {} ({changed} files changed)",
                    install.bin_dir.display(),
                    crate::node::install::CONFLIST,
                    install.conf_dir.display()
                );
                pool.emit("cni-installed", msg);
                return;
            }
            Ok(Err(e)) => pool.emit("cni-install-failed", format!("{e}; retrying in 10 s")),
            Err(e) => pool.emit("cni-install-failed", format!("install task: {e}; retrying in 10 s")),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

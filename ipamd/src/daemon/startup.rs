//! Start-up steps of the daemon: the state-dir lock, the node from IMDS, the node-wide host settings, and the
//! readiness-gated CNI install job (restoring the checkpoint is [`super::restore`]'s).

use std::time::Duration;

use backoff::Backoff;
use datapath::netlink::Netlink;

use super::DaemonError;
use crate::cloud::imds::{AwsImds, ImdsError, NodeInfo};
use crate::node::install::Install;
use crate::pool::PoolHandle;

/// Reads the node from IMDS, retrying for a while (see [`retry_imds`]).
pub(super) async fn load_node(imds: &AwsImds, attempts: u32) -> Result<NodeInfo, ImdsError> {
    retry_imds(attempts, || NodeInfo::load(imds)).await
}

/// Reads IMDS with `read`, retrying for a while: at node boot the metadata service can lag the daemon's start.
pub(super) async fn retry_imds<T, F>(attempts: u32, mut read: impl FnMut() -> F) -> Result<T, ImdsError>
where
    F: std::future::Future<Output = Result<T, ImdsError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match read().await {
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
/// which is found by the MAC IMDS reports; with DISABLE_TCP_EARLY_DEMUX also tcp_early_demux=0 (what
/// aws-vpc-cni's init container set).
pub(super) async fn host_setup(
    node: &NodeInfo,
    proc_sys: &std::path::Path,
    nodeport_mark: Option<u32>,
    no_early_demux: bool,
) -> Result<(Netlink, String), DaemonError> {
    let net = Netlink::current()?;
    let primary = datapath::wait_for_link(&net, &node.primary_mac, Duration::from_secs(10)).await?;
    let mut changes = datapath::node_sysctls(proc_sys, &primary.name)?
        + usize::from(datapath::ensure_nodeport_rule(&net, nodeport_mark).await?);
    if no_early_demux {
        changes += usize::from(datapath::ensure_sysctl(proc_sys, "net/ipv4/tcp_early_demux", "0")?);
    }
    tracing::info!(
        link = %primary.name, mac = %node.primary_mac, changes, no_early_demux,
        "node sysctls: ip_forward=1, rp_filter=2"
    );
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

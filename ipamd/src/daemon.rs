//! Wires the daemon together: IMDS bootstrap, EC2 client, checkpoint restore, pool actor, reconcile loop,
//! gRPC on the Unix socket, metrics; then waits for SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Server;
use tonic_health::ServingStatus;
use vpc_cni_proto::v1::{
    introspection_server::IntrospectionServer,
    ipam_server::{IpamServer, SERVICE_NAME as IPAM_SERVICE},
};

use crate::checkpoint::{CheckpointError, Store};
use crate::config::Config;
use crate::ec2::AwsEc2;
use crate::grpc::{
    self, PeerPolicy, ServeError,
    introspection::IntrospectionService,
    ipam::{IpamService, NetFacts},
};
use crate::hostnet::{self, HostNetError, netlink::Netlink};
use crate::imds::{AwsImds, ImdsError, NodeInfo};
use crate::install::Install;
use crate::k8s::{Kube, KubeSettings, podgc::PodGc};
use crate::planner::Targets;
use crate::pool::{self, PoolSettings};
use crate::reconcile::{ReconcileSettings, Reconciler};
use crate::snat::SnatConfig;
use crate::telemetry::Telemetry;
use tonic::service::interceptor::InterceptedService;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("node bootstrap from IMDS failed: {0}")]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0} (set IPAMD_AWS_NODE_CHECKPOINT=off to start without importing it)")]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("IPAMD_STATE_DIR {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error("another ipamd ({holder}) holds {path}: refusing to start rather than take over its socket and state")]
    Locked { path: String, holder: String },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("host network setup: {0}")]
    HostNet(#[from] HostNetError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("METRICS_BIND_ADDR {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
}

/// Reads IMDS, retrying for a while: at node boot the metadata service can lag the daemon's start.
async fn load_node(imds: &AwsImds, attempts: u32) -> Result<NodeInfo, ImdsError> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        match NodeInfo::load(imds).await {
            Ok(n) => return Ok(n),
            Err(e) if attempt + 1 < attempts => {
                tracing::warn!("IMDS not ready ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens netlink in ipamd's own namespace (the node's) and applies the node-wide sysctls on the primary ENI,
/// which is found by the MAC IMDS reports.
async fn host_setup(node: &NodeInfo, proc_sys: &std::path::Path) -> Result<(Netlink, String), DaemonError> {
    let net = Netlink::current()?;
    let primary = hostnet::wait_for_link(&net, &node.primary_mac, Duration::from_secs(10)).await?;
    let changes =
        hostnet::node_sysctls(proc_sys, &primary.name)? + usize::from(hostnet::ensure_nodeport_rule(&net).await?);
    tracing::info!(link = %primary.name, mac = %node.primary_mac, changes, "node sysctls: ip_forward=1, rp_filter=2");
    Ok((net, primary.name))
}

/// Takes `<state dir>/ipamd.lock` (flock, held for the process's life; the kernel drops it on any exit, kill -9
/// included) and writes this pid into it. A second ipamd on the same state dir stops here.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
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
/// [`crate::datastore::RECOVERED_NETWORK`]); empty without host networking.
async fn rebuild_from_host(cfg: &Config) -> crate::checkpoint::Checkpoint {
    use crate::datastore::{AllocKey, Allocation, RECOVERED_NETWORK};
    let mut cp = crate::checkpoint::Checkpoint::default();
    if !cfg.ipamd_host_network {
        return cp;
    }
    let pods = match Netlink::current() {
        Ok(net) => hostnet::pod_ips(&net, &cfg.aws_vpc_k8s_cni_vethprefix).await,
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
fn import_aws_node(
    path: &std::path::Path,
    store: &Store,
    cp: &mut crate::checkpoint::Checkpoint,
) -> Result<(), DaemonError> {
    let Some(imported) = crate::migrate::import(path, crate::pool::now_ms() / 1000)? else { return Ok(()) };
    for s in &imported.skipped {
        tracing::warn!(path = %path.display(), "aws-node checkpoint entry not imported: {s}");
    }
    let n = imported.allocations.len();
    cp.allocations.extend(imported.allocations);
    store.save(cp)?;
    tracing::info!(path = %path.display(), allocations = n, "imported aws-node's checkpoint: its pods keep their IPs");
    Ok(())
}

/// The readiness-gated install (see [`crate::install`]), retried until it succeeds: until then the node stays
/// NotReady, which is the safe side.
async fn install_cni(install: Install, pool: crate::pool::PoolHandle) {
    loop {
        let job = install.clone();
        match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(Ok(changed)) => {
                let msg = format!(
                    "vpc-cni installed in {} and {} in {} ({changed} files changed)",
                    install.bin_dir.display(),
                    crate::install::CONFLIST,
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

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.ipamd_state_dir)
        .map_err(|source| DaemonError::StateDir { path: cfg.ipamd_state_dir.display().to_string(), source })?;
    let _lock = lock_state_dir(&cfg.ipamd_state_dir)?;
    let store = Store::new(&cfg.ipamd_state_dir);
    let first_start = !store.path().exists();
    let (mut checkpoint, recovered) = match store.load() {
        Ok(cp) => (cp, false),
        // Never a crash loop on a damaged file: keep it for a post-mortem and rebuild from the host. An I/O
        // error or a newer version still stops the start (a downgrade must not drop allocations).
        Err(e @ crate::checkpoint::CheckpointError::Decode { .. }) => {
            let aside = store.move_aside()?;
            tracing::error!(
                "{e}; moved aside to {}; rebuilding allocations from the host's pod routes",
                aside.display()
            );
            let cp = rebuild_from_host(&cfg).await;
            store.save(&cp)?;
            (cp, true)
        }
        Err(e) => return Err(e.into()),
    };
    if first_start && let Some(path) = cfg.aws_node_checkpoint() {
        import_aws_node(&path, &store, &mut checkpoint)?;
    }

    let imds = AwsImds::from_env();
    // With a saved node there is something to serve from: do not wait long for IMDS.
    let attempts = if checkpoint.node.is_some() { 3 } else { 9 };
    let node = match (load_node(&imds, attempts).await, checkpoint.node.clone()) {
        (Ok(node), _) => node,
        // IMDS down at start: the node has not changed since the checkpoint was written (same instance, same
        // state dir), so serve from it; the reconcile loop reports DEGRADED until IMDS answers.
        (Err(e), Some(saved)) => {
            tracing::error!("IMDS unreachable ({e}); starting from the node saved in the checkpoint");
            saved
        }
        (Err(e), None) => return Err(e.into()),
    };
    let node = Arc::new(node);
    tracing::info!(
        instance = %node.instance_id, instance_type = %node.instance_type, eni = %node.primary_eni_id,
        subnet = %node.subnet_cidr, "node bootstrapped from IMDS"
    );
    let telemetry = Telemetry::default();
    let ec2 = Arc::new(AwsEc2::new(&node.region, cfg.ec2_api_qps, cfg.ec2_api_burst, telemetry.clone()).await);
    let kube = match cfg.node_name() {
        Some(node_name) => Kube::start(KubeSettings {
            node_name: node_name.to_string(),
            pod_name: cfg.my_pod_name.clone(),
            custom_networking: cfg.aws_vpc_k8s_cni_custom_network_cfg,
            label_def: cfg.eni_config_label_def.clone(),
            annotation_def: cfg.eni_config_annotation_def.clone(),
        }),
        None => Kube::disabled(),
    };
    tracing::info!(allocations = checkpoint.allocations.len(), path = %store.path().display(), "checkpoint restored");

    let pool = pool::spawn(
        PoolSettings {
            primary_eni_id: node.primary_eni_id.clone(),
            targets: Targets {
                warm_eni: cfg.warm_eni_target,
                warm_ip: cfg.warm_ip_target,
                minimum_ip: cfg.minimum_ip_target,
                warm_prefix: cfg.prefix_mode_target(),
                surge: 0,
            },
            cooldown: Duration::from_secs(cfg.ip_cooldown_period),
            reconcile_interval: Duration::from_secs(cfg.ipamd_reconcile_interval),
            primary_reserved: cfg.aws_vpc_k8s_cni_custom_network_cfg,
            surge: cfg.ipamd_surge,
            node: Some((*node).clone()),
        },
        store,
        checkpoint,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", IPAM_SERVICE] {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    let policy = PeerPolicy { allowed_uids: cfg.ipamd_allowed_uids.0.clone() };
    let released = cfg.ipamd_host_network.then(|| {
        crate::ctjanitor::start(Duration::from_secs(cfg.ip_cooldown_period), crate::ctjanitor::kernel_flush())
    });
    // DELs the plugin could not hand over while ipamd was down: carried out before the first request.
    let deferred_dir = crate::deferred::dir_for(&cfg.ipamd_socket);
    let drained = crate::deferred::drain(&deferred_dir, &pool).await;
    if !drained.released.is_empty() || drained.dropped > 0 {
        tracing::info!(released = drained.released.len(), dropped = drained.dropped, "deferred DELs carried out");
    }
    let (vpc_cidrs_tx, vpc_cidrs) =
        tokio::sync::watch::channel(node.vpc_cidrs.iter().map(ToString::to_string).collect());
    let ipam = IpamService {
        deferred_dir: deferred_dir.clone(),
        telemetry: telemetry.clone(),
        released: released.clone(),
        pool: pool.clone(),
        facts: NetFacts {
            vpc_cidrs,
            pod_mtu: cfg.effective_pod_mtu(),
            external_snat: cfg.aws_vpc_k8s_cni_externalsnat,
            exclude_snat_cidrs: cfg.aws_vpc_k8s_cni_exclude_snat_cidrs.0.iter().map(ToString::to_string).collect(),
        },
    };
    let introspection =
        IntrospectionService { pool: pool.clone(), node: node.clone(), config: cfg.entries(), kube: kube.clone() };
    let listener = grpc::bind(&cfg.ipamd_socket)?;
    let server = Server::builder()
        .add_service(InterceptedService::new(health_service, policy.interceptor()))
        // Requests are small (a GC list of a few thousand keys is well under this); larger ones are refused.
        .add_service(InterceptedService::new(
            IpamServer::new(ipam).max_decoding_message_size(1 << 20),
            policy.interceptor(),
        ))
        .add_service(InterceptedService::new(
            IntrospectionServer::new(introspection).max_decoding_message_size(64 << 10),
            policy.interceptor(),
        ))
        .serve_with_incoming(grpc::incoming(listener));
    tracing::info!(socket = %cfg.ipamd_socket.display(), "gRPC listening");
    let grpc_task = tokio::spawn(server);

    if let Some(addr) = cfg.metrics_bind_addr.0 {
        let (local, fut) = crate::metrics::serve(addr, pool.clone(), telemetry.clone(), kube.clone())
            .await
            .map_err(|source| DaemonError::Metrics { addr: addr.to_string(), source })?;
        tracing::info!(%local, "metrics listening");
        tokio::spawn(fut);
    }

    let (hostnet, snat) = if cfg.ipamd_host_network {
        let (net, primary_link) = host_setup(&node, &cfg.ipamd_proc_sys).await?;
        let snat = SnatConfig {
            primary_link,
            primary_ip: node.primary_ip,
            vpc_cidrs: node.vpc_cidrs.clone(),
            excluded: cfg.aws_vpc_k8s_cni_exclude_snat_cidrs.0.clone(),
            external: cfg.aws_vpc_k8s_cni_externalsnat,
            randomize: cfg.aws_vpc_k8s_cni_randomizesnat,
        };
        (Some(Arc::new(net)), Some(snat))
    } else {
        (None, None)
    };
    if kube.settings.is_some() {
        let gc = PodGc {
            pool: pool.clone(),
            grace: (cfg.ipamd_pod_gc_grace > 0).then(|| Duration::from_secs(cfg.ipamd_pod_gc_grace)),
            released,
            hostnet: hostnet.clone(),
        };
        tokio::spawn(gc.run(kube.clone()));
    } else {
        kube.update_status(|s| s.pod_gc = "off".into());
    }
    let reconciler = Reconciler::new(
        ec2.clone(),
        Arc::new(imds),
        hostnet,
        node.clone(),
        pool.clone(),
        ReconcileSettings {
            max_eni: cfg.max_eni,
            cluster_name: cfg.cluster_name.clone(),
            additional_tags: cfg.additional_eni_tags.0.clone(),
            leaked_eni_cleanup: !cfg.disable_leaked_eni_cleanup,
            error_backoff: Duration::from_secs(2),
            ec2_resync: Duration::from_secs(cfg.ipamd_ec2_resync_interval),
            telemetry: telemetry.clone(),
            deferred_dir,
            veth_prefix: cfg.aws_vpc_k8s_cni_vethprefix.clone(),
            vpc_cidrs: Arc::new(vpc_cidrs_tx),
            recovered,
            eni_mtu: cfg.aws_vpc_eni_mtu,
            snat,
            link_wait: Duration::from_secs(10),
            subnet_discovery: cfg.enable_subnet_discovery,
        },
        kube,
    );
    let install = Install::from_config(&cfg);
    let install_pool = pool.clone();
    let on_serving = move || {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tokio::spawn(async move {
            for name in ["", IPAM_SERVICE] {
                health.set_service_status(name, ServingStatus::Serving).await;
            }
            tracing::info!(elapsed_ms, "SERVING: first reconcile complete");
            if let Some(install) = install {
                install_cni(install, install_pool).await;
            }
        });
    };
    tokio::spawn(reconciler.run(on_serving));

    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(DaemonError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting (state is checkpointed)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting (state is checkpointed)"),
        r = grpc_task => match r {
            Ok(Err(e)) => return Err(DaemonError::Serve(e.into())),
            _ => tracing::error!("gRPC server stopped"),
        },
    }
    Ok(())
}

//! Wires the daemon together ([`startup`]: lock, IMDS, host settings; [`restore`]: the checkpoint), starts
//! every long-lived task under one [`Supervisor`], and then waits: for SIGTERM/SIGINT (graceful: the socket
//! stops taking requests, those in flight are answered, the pool commits, every task is joined, exit 0) or for
//! a task to die (health NOT_SERVING at once, an error naming the task, and an error return that makes the
//! process exit non-zero so the kubelet restarts it; every promise made to a pod is already in the checkpoint).
//!
//! May use: every other subsystem (this is the top).

mod node_ec2;
mod restore;
mod startup;

use node_ec2::NodeEc2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Server;
use tonic_health::ServingStatus;
use vpc_cni_proto::v1::{
    introspection_server::IntrospectionServer,
    ipam_server::{IpamServer, SERVICE_NAME as IPAM_SERVICE},
};

use datapath::HostNetError;
use tonic::service::interceptor::InterceptedService;

use crate::cloud::ec2::AwsEc2;
use crate::cloud::imds::{AwsImds, ImdsError};
use crate::cloud::imds_only::ImdsOnly;
use crate::config::Config;
use crate::grpc::{
    self, PeerPolicy, ServeError,
    introspection::IntrospectionService,
    ipam::{IpamService, NetFacts},
};
use crate::k8s::{Kube, KubeSettings, podgc::PodGc};
use crate::node::install::Install;
use crate::node::snat::SnatConfig;
use crate::planner::Targets;
use crate::pool::{self, PoolSettings};
use crate::reconcile::{ReconcileSettings, Reconciler};
use crate::state::checkpoint::{CheckpointError, Store};
use crate::tasks::{Ended, Supervisor};
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("node bootstrap from IMDS failed: {0}")]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0} (set IPAMD_AWS_NODE_CHECKPOINT=off to start without importing it)")]
    Migrate(crate::state::migrate::MigrateError),
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
    #[error("starting the pool actor's thread: {0}")]
    PoolThread(std::io::Error),
    #[error("{0}: ipamd is NOT_SERVING and exits so that it is restarted")]
    TaskDied(Ended),
}

/// Task names under the supervisor.
const GRPC_TASK: &str = "gRPC server";
const RECONCILE_TASK: &str = "reconcile loop";
const SNAT_TASK: &str = "SNAT keeper";
/// How long a dying ipamd keeps answering NOT_SERVING before it exits (well inside the 1 s it has).
const NOT_SERVING_LINGER: Duration = Duration::from_millis(100);
/// How long shutdown waits for the requests in flight (well inside the DaemonSet's 30 s grace period).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Before anything else: a signal handler that cannot be installed must stop the start, not a shutdown.
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(DaemonError::Signal)?;
    std::fs::create_dir_all(&cfg.ipamd_state_dir)
        .map_err(|source| DaemonError::StateDir { path: cfg.ipamd_state_dir.display().to_string(), source })?;
    let _lock = startup::lock_state_dir(&cfg.ipamd_state_dir)?;
    let store = Store::new(&cfg.ipamd_state_dir);
    let loaded = restore::Loaded::read(&store)?;

    let imds = AwsImds::from_env();
    // With a saved node there is something to serve from: do not wait long for IMDS.
    let attempts = if loaded.node().is_some() { 3 } else { 9 };
    let node = match (startup::load_node(&imds, attempts).await, loaded.node().cloned()) {
        (Ok(node), _) => node,
        // IMDS down at start: the node has not changed since the checkpoint was written (same instance, same
        // state dir), so serve from it; the reconcile loop reports DEGRADED until IMDS answers.
        (Err(e), Some(saved)) => {
            tracing::error!("IMDS unreachable ({e}); starting from the node saved in the checkpoint");
            saved
        }
        (Err(e), None) => return Err(e.into()),
    };
    let (checkpoint, rebuilt) = restore::restore(&cfg, &store, loaded, &imds, &node).await?;
    // Also when an earlier run rebuilt them and was restarted before their routes were gone.
    let recovered = rebuilt.is_some()
        || checkpoint.allocations.keys().any(|k| k.network_name == crate::state::datastore::RECOVERED_NETWORK);
    let node = Arc::new(node);
    let telemetry = Telemetry::default();
    telemetry.awscni().node_initialized(started.elapsed(), true);
    tracing::info!(
        instance = %node.instance_id, instance_type = %node.instance_type, eni = %node.primary_eni_id,
        subnet = %node.subnet_cidr, "node bootstrapped from IMDS"
    );
    let mut supervisor = Supervisor::new();
    let tasks = supervisor.tasks();
    let imds = Arc::new(imds);
    let ec2 = Arc::new(if cfg.enable_imds_only_mode {
        tracing::info!("ENABLE_IMDS_ONLY_MODE: the node's ENIs and IPs are read from IMDS; no EC2 call is made");
        NodeEc2::ImdsOnly(ImdsOnly::new(imds.clone(), node.clone()))
    } else {
        NodeEc2::Aws(
            AwsEc2::new(
                &node.region,
                cfg.aws_ec2_endpoint.as_deref(),
                cfg.ec2_api_qps,
                cfg.ec2_api_burst,
                Arc::new(telemetry.clone()),
            )
            .await,
        )
    });
    if !cfg.provisioning() {
        tracing::info!("network resource provisioning off: pods get the IPs already attached; EC2 is never changed");
    }
    let kube = match cfg.node_name() {
        Some(node_name) => Kube::start(
            KubeSettings {
                node_name: node_name.to_string(),
                pod_name: cfg.my_pod_name.clone(),
                custom_networking: cfg.aws_vpc_k8s_cni_custom_network_cfg,
                label_def: cfg.eni_config_label_def.clone(),
                annotation_def: cfg.eni_config_annotation_def.clone(),
                endpoint: cfg.cluster_endpoint.clone(),
                network_policy: cfg.enable_network_policy,
            },
            &tasks,
        ),
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
        &tasks,
    )
    .map_err(DaemonError::PoolThread)?;

    if let Some(why) = rebuilt {
        pool.emit("checkpoint-rebuilt", why.clone());
        kube.events.warning("CheckpointRebuilt", "RestoreCheckpoint", why);
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    // Alive from here until a task dies or the process stops (set_health NotServing below); the supervisor
    // ends the process when a loop dies or stalls.
    health.set_service_status(vpc_cni_proto::LIVENESS_SERVICE, ServingStatus::Serving).await;
    let policy = PeerPolicy { allowed_uids: cfg.ipamd_allowed_uids.0.clone() };
    let released = cfg.ipamd_host_network.then(|| {
        crate::node::ctjanitor::start(
            Duration::from_secs(cfg.ip_cooldown_period),
            crate::node::ctjanitor::kernel_flush(),
            &tasks,
        )
    });
    // DELs the plugin could not hand over while ipamd was down: carried out before the first request.
    let deferred_dir = crate::pool::deferred::dir_for(&cfg.ipamd_socket);
    let drained = crate::pool::deferred::drain(&deferred_dir, &pool).await;
    if !drained.released.is_empty() || drained.dropped > 0 {
        tracing::info!(released = drained.released.len(), dropped = drained.dropped, "deferred DELs carried out");
    }
    if let Some(tx) = &released {
        for (_, ip, asked) in &drained.released {
            let _ = tx.send((*ip, *asked));
        }
    }
    let (hostnet, snat) = if cfg.ipamd_host_network {
        let nodeport_mark = cfg.nodeport_mark();
        let (net, primary_link) =
            startup::host_setup(&node, &cfg.ipamd_proc_sys, nodeport_mark, cfg.disable_tcp_early_demux).await?;
        let snat = SnatConfig {
            primary_link,
            primary_ip: node.primary_ip,
            vpc_cidrs: node.vpc_cidrs.clone(),
            excluded: cfg.aws_vpc_k8s_cni_exclude_snat_cidrs.0.clone(),
            external: cfg.aws_vpc_k8s_cni_externalsnat,
            randomize: cfg.aws_vpc_k8s_cni_randomizesnat,
            nodeport_mark,
            external_service_cidrs: cfg.aws_external_service_cidrs.0.clone(),
        };
        (Some(Arc::new(net)), Some(snat))
    } else {
        (None, None)
    };
    let (vpc_cidrs_tx, vpc_cidrs) =
        tokio::sync::watch::channel(node.vpc_cidrs.iter().map(ToString::to_string).collect());
    let enforcer = cfg.enable_network_policy.then(|| {
        let prefix = cfg.aws_vpc_k8s_cni_vethprefix.clone();
        let strict = cfg.network_policy_enforcing_mode == crate::config::PolicyMode::Strict;
        crate::policy::Enforcer::start(kube.clone(), prefix, cfg.ipamd_host_network, strict, &tasks)
    });
    let ipam = IpamService {
        hostnet: hostnet.clone(),
        deferred_dir: deferred_dir.clone(),
        telemetry: telemetry.clone(),
        released: released.clone(),
        pool: pool.clone(),
        annotate: cfg.annotate_pod_ip.then(|| kube.clone()),
        policy: enforcer.clone(),
        facts: NetFacts {
            vpc_cidrs,
            pod_mtu: cfg.effective_pod_mtu(),
            external_snat: cfg.aws_vpc_k8s_cni_externalsnat,
            exclude_snat_cidrs: cfg.aws_vpc_k8s_cni_exclude_snat_cidrs.0.iter().map(ToString::to_string).collect(),
        },
    };
    let introspection = IntrospectionService {
        pool: pool.clone(),
        node: node.clone(),
        config: cfg.shown(|name| std::env::var(name).ok()),
        kube: kube.clone(),
        telemetry: telemetry.clone(),
        policy: enforcer.clone(),
    };
    let listener = grpc::bind(&cfg.ipamd_socket)?;
    let graceful = tasks.clone();
    let server = Server::builder()
        .add_service(InterceptedService::new(health_service, policy.interceptor()))
        // Requests are small (a GC list of a few thousand keys is well under this); larger ones are refused.
        .add_service(InterceptedService::new(
            IpamServer::new(ipam).max_decoding_message_size(1 << 20),
            policy.interceptor(),
        ))
        .add_optional_service((!cfg.disable_introspection).then(|| {
            InterceptedService::new(
                IntrospectionServer::new(introspection).max_decoding_message_size(64 << 10),
                policy.interceptor(),
            )
        }))
        // At shutdown: no new connections or requests; those in flight are answered.
        .serve_with_incoming_shutdown(grpc::incoming(listener), async move { graceful.shutdown_started().await });
    tracing::info!(socket = %cfg.ipamd_socket.display(), "gRPC listening");
    tasks.spawn(GRPC_TASK, server);

    if let Some(addr) = cfg.metrics_addr() {
        let (local, fut) = crate::telemetry::metrics::serve(addr, pool.clone(), telemetry.clone(), kube.clone())
            .await
            .map_err(|source| DaemonError::Metrics { addr: addr.to_string(), source })?;
        tracing::info!(%local, "metrics listening");
        tasks.spawn("metrics server", fut);
    }

    if kube.settings.is_some() {
        let gc = PodGc {
            pool: pool.clone(),
            grace: (cfg.ipamd_pod_gc_grace > 0).then(|| Duration::from_secs(cfg.ipamd_pod_gc_grace)),
            released: released.clone(),
            hostnet: hostnet.clone(),
        };
        let heartbeat = tasks.heartbeat("pod GC", crate::k8s::podgc::STALL_LIMIT);
        tasks.spawn_loop("pod GC", gc.run(kube.clone(), heartbeat));
    } else {
        kube.update_status(|s| s.pod_gc = "off".into());
    }
    if let (Some(net), Some(config)) = (&hostnet, snat) {
        let keeper = crate::reconcile::snat_keeper::SnatKeeper {
            config,
            vpc_cidrs: vpc_cidrs_tx.subscribe(),
            net: net.clone(),
            pool: pool.clone(),
            telemetry: telemetry.clone(),
            events: kube.events.clone(),
            interval: Duration::from_secs(cfg.ipamd_reconcile_interval).max(Duration::from_secs(1)),
            timeout: crate::node::snat::NFT_TIMEOUT,
        };
        let heartbeat = tasks.heartbeat(SNAT_TASK, crate::node::snat::NFT_TIMEOUT * 2 + Duration::from_secs(5));
        tasks.spawn_loop(SNAT_TASK, keeper.run(heartbeat));
    }
    let reconciler = Reconciler::new(
        ec2.clone(),
        imds,
        hostnet,
        node.clone(),
        pool.clone(),
        ReconcileSettings {
            max_eni: cfg.max_eni(),
            cluster_name: cfg.cluster_name.clone(),
            additional_tags: cfg.additional_eni_tags.0.clone(),
            leaked_eni_cleanup: !cfg.disable_leaked_eni_cleanup,
            error_backoff: crate::reconcile::ERROR_BACKOFF,
            ec2_resync: Duration::from_secs(cfg.ipamd_ec2_resync_interval),
            telemetry: telemetry.clone(),
            deferred_dir,
            veth_prefix: cfg.aws_vpc_k8s_cni_vethprefix.clone(),
            vpc_cidrs: Arc::new(vpc_cidrs_tx),
            recovered,
            eni_mtu: cfg.aws_vpc_eni_mtu,
            link_wait: Duration::from_secs(10),
            subnet_discovery: cfg.enable_subnet_discovery,
            released: released.clone(),
            provisioning: cfg.provisioning(),
            manage_cordoned: cfg.aws_manage_enis_non_schedulable,
        },
        kube,
    );
    let install = Install::from_config(&cfg);
    let (serving_health, serving_pool, serving_tasks) = (health.clone(), pool.clone(), tasks.clone());
    let with_api_server = cfg.node_name().is_some();
    let on_serving = move || {
        telemetry.awscni().started(started.elapsed(), with_api_server);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        serving_tasks.spawn_job("serving + CNI install", async move {
            set_health(&serving_health, ServingStatus::Serving).await;
            tracing::info!(elapsed_ms, "SERVING: first reconcile complete");
            if let Some(install) = install {
                startup::install_cni(install, serving_pool).await;
            }
        });
    };
    let heartbeat = tasks.heartbeat(RECONCILE_TASK, crate::reconcile::ROUND_LIMIT);
    tasks.spawn_loop(RECONCILE_TASK, reconciler.run(on_serving, heartbeat));

    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let watched = supervisor.watch(stop).await;
    set_health(&health, ServingStatus::NotServing).await;
    if let Err(ended) = watched {
        // A moment for health watchers (and a probe in flight) to see NOT_SERVING before the socket goes.
        tokio::time::sleep(NOT_SERVING_LINGER).await;
        return Err(DaemonError::TaskDied(ended));
    }
    shutdown(supervisor, &pool).await;
    Ok(())
}

/// The status the readiness probe (service "") and the plugin's service report; NotServing also ends liveness.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in ["", IPAM_SERVICE] {
        health.set_service_status(name, status).await;
    }
    if status == ServingStatus::NotServing {
        health.set_service_status(vpc_cni_proto::LIVENESS_SERVICE, status).await;
    }
}

/// Graceful stop: the gRPC server answers what is in flight and takes nothing new, the pool commits what came
/// before, then every other task is stopped and joined.
async fn shutdown(mut supervisor: Supervisor, pool: &pool::PoolHandle) {
    supervisor.begin_shutdown();
    match tokio::time::timeout(DRAIN_LIMIT, supervisor.ended(GRPC_TASK)).await {
        Ok(e) => tracing::info!("{e}: requests in flight answered"),
        Err(_) => tracing::warn!("requests still in flight after {DRAIN_LIMIT:?}: stopping anyway"),
    }
    if let Err(e) = pool.stop().await {
        tracing::warn!("pool actor at shutdown: {e}");
    }
    let stopped = supervisor.stop_all().await;
    tracing::info!(stopped = ?stopped, "every task joined; exiting (state is checkpointed)");
}

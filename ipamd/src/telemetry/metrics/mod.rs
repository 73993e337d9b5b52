//! Prometheus text on METRICS_BIND_ADDR at `/metrics`. The pool's gauges are the copy the pool actor publishes after
//! each batch ([`Gauges`]): consistent with each other, and a scrape never queues on the actor. ipamd's own series
//! (`ipamd_*`) come first, then every series aws-vpc-cni exports under its own names ([`crate::telemetry::awscni`]),
//! so aws-node's dashboards, alerts and cni-metrics-helper keep working. The listener is bounded: at most [`MAX_CONNECTIONS`] at once (more are closed on
//! accept), a connection that sends no request for [`IDLE_TIMEOUT`] is closed, and none lives longer than
//! [`MAX_CONNECTION_AGE`] — a port anyone on the node can reach must not hold ipamd's memory or file descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;

use crate::k8s::{Kube, KubeStatus};
use crate::pool::{Gauges, PoolHandle};
use crate::telemetry::Telemetry;

#[derive(Clone)]
struct Ctx {
    pool: PoolHandle,
    telemetry: Telemetry,
    kube: Kube,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Connections served at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends no (complete) request head for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection lives longer, whatever it does (a scraper reconnects).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Renders the exposition text for the pool's gauges (and the Kubernetes side's status, when it is on).
pub fn render(s: &Gauges, telemetry: &Telemetry, kube: Option<(bool, &KubeStatus)>) -> String {
    let mut reg = Registry::default();
    gauge(&mut reg, "ipamd_cooling_ip_addresses", "released IPs resting before reuse", s.stats.cooling as i64);
    gauge(&mut reg, "ipamd_free_ip_addresses", "IPs ready for the next pod", s.stats.free as i64);
    gauge(&mut reg, "ipamd_serving", "1 once the first reconcile completed", i64::from(s.serving));
    gauge(
        &mut reg,
        "ipamd_last_reconcile_timestamp_seconds",
        "unix time of the last good reconcile",
        s.last_reconcile_unix,
    );
    gauge(
        &mut reg,
        "ipamd_pending_ip_addresses",
        "IPs assigned in EC2 that IMDS does not show yet",
        s.stats.pending as i64,
    );
    gauge(&mut reg, "ipamd_prefixes", "/28 prefixes delegated to the node's ENIs (prefix mode)", s.prefixes as i64);
    gauge(
        &mut reg,
        "ipamd_prefix_fallback_enis",
        "ENIs taking single IPs because EC2 had no free /28 in their subnet (prefix mode)",
        s.fallback_enis as i64,
    );
    let writes = Counter::<u64>::default();
    writes.inc_by(s.checkpoint_writes);
    reg.register(
        "ipamd_checkpoint_writes",
        "ipam.json writes (one per batch of changes made durable together)",
        writes,
    );
    telemetry.register(&mut reg);
    if let Some((connected, k)) = kube {
        gauge(&mut reg, "ipamd_kube_api_connected", "1 while every watch is listed and healthy", i64::from(connected));
        gauge(
            &mut reg,
            "ipamd_unknown_pod_ips",
            "running pods on this node whose IP ipamd did not hand out",
            k.unknown_pod_ips.len() as i64,
        );
        let released = Counter::<u64>::default();
        released.inc_by(k.stale_released);
        reg.register("ipamd_stale_allocations_released", "IPs released because their pod no longer exists", released);
        gauge(
            &mut reg,
            "ipamd_eniconfig_problem",
            "1 while new ENIs cannot be placed from the ENIConfig",
            i64::from(!k.eni_config_problem.is_empty()),
        );
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    // aws-vpc-cni's families go before the end marker.
    let end = out.rfind("# EOF").unwrap_or(out.len());
    out.truncate(end);
    crate::telemetry::awscni::render(telemetry.awscni(), s, &mut out);
    out.push_str("# EOF\n");
    out
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let gauges = ctx.pool.gauges.borrow().clone();
    let status = ctx.kube.status();
    let connected = ctx.kube.view.borrow().healthy(ctx.kube.custom_networking());
    let kube = ctx.kube.settings.is_some().then_some((connected, &status));
    render(&gauges, &ctx.telemetry, kube)
}

/// Binds the listener (errors surface at start) and returns the serving future and the bound address.
pub async fn serve(
    addr: SocketAddr,
    pool: PoolHandle,
    telemetry: Telemetry,
    kube: Kube,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    serve_bounded(
        addr,
        Router::new().route("/metrics", get(metrics)).with_state(Ctx { pool, telemetry, kube }),
        Bounds::default(),
    )
    .await
}

/// The listener's limits (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub connections: usize,
    pub idle: Duration,
    pub age: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { connections: MAX_CONNECTIONS, idle: IDLE_TIMEOUT, age: MAX_CONNECTION_AGE }
    }
}

/// Serves `app` on `addr` within `bounds` (HTTP/1.1).
pub async fn serve_bounded(
    addr: SocketAddr,
    app: Router,
    bounds: Bounds,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(bounds.connections));
    let serving = async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait rather than spin; the listener stays.
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(bounds.idle)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(bounds.age, conn).await;
                drop(slot);
            });
        }
    };
    Ok((local, serving))
}

#[cfg(test)]
mod tests;

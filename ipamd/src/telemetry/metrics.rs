//! Prometheus text on METRICS_BIND_ADDR at `/metrics`. Gauges are read from one pool snapshot per scrape, so
//! they are always consistent with each other; names follow aws-vpc-cni's `awscni_*` where it has one.

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;

use crate::k8s::{Kube, KubeStatus};
use crate::pool::{PoolHandle, Snapshot};
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

/// Renders the exposition text for one snapshot (and the Kubernetes side's status, when it is on).
pub fn render(s: &Snapshot, telemetry: &Telemetry, kube: Option<(bool, &KubeStatus)>) -> String {
    let mut reg = Registry::default();
    gauge(&mut reg, "awscni_eni_allocated", "ENIs attached to the node", s.stats.enis as i64);
    gauge(&mut reg, "awscni_eni_max", "ENIs the node may attach", s.limits.map_or(0, |l| l.max_enis) as i64);
    gauge(&mut reg, "awscni_total_ip_addresses", "secondary IPs in the pool", s.stats.total as i64);
    gauge(&mut reg, "awscni_assigned_ip_addresses", "IPs held by pods", s.stats.assigned as i64);
    gauge(&mut reg, "awscni_ip_max", "pod IPs the node can hold", s.max_pods.map_or(0, |m| m.saturating_sub(2)) as i64);
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
    gauge(
        &mut reg,
        "ipamd_prefixes",
        "/28 prefixes delegated to the node's ENIs (prefix mode)",
        s.ds.prefix_count() as i64,
    );
    gauge(
        &mut reg,
        "ipamd_prefix_fallback_enis",
        "ENIs taking single IPs because EC2 had no free /28 in their subnet (prefix mode)",
        s.ds.fallback_enis().count() as i64,
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
    out
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    match ctx.pool.snapshot().await {
        Ok(s) => {
            let status = ctx.kube.status();
            let connected = ctx.kube.view.borrow().healthy(ctx.kube.custom_networking());
            let kube = ctx.kube.settings.is_some().then_some((connected, &status));
            (StatusCode::OK, render(&s, &ctx.telemetry, kube))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Binds the listener (errors surface at start) and returns the serving future and the bound address.
pub async fn serve(
    addr: SocketAddr,
    pool: PoolHandle,
    telemetry: Telemetry,
    kube: Kube,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(metrics)).with_state(Ctx { pool, telemetry, kube });
    Ok((local, async move { axum::serve(listener, app).await }))
}

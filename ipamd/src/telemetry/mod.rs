//! The counters and histograms operators graph (under ipamd's own names, and aws-vpc-cni's in [`awscni`]):
//! pod Add/Del requests and their latency by result, pods that found no IP, EC2 calls, errors and latency by
//! operation, reconcile rounds and their duration, ENI attach/detach counts, and the degraded state.
//! Long-lived and shared (cloning shares the same series); [`metrics`] serves them at `/metrics` next to the
//! gauges the pool publishes after each batch; [`logging`] sets up tracing.
//!
//! May use: config (log format), cloud (it counts EC2 calls as their [`CallMeter`]), pool and k8s (what
//! `/metrics` shows), planner and state (its tests build a pool).

pub mod awscni;
pub mod logging;
pub mod metrics;

/// ipamd's version, as `vpcctl status` and the build-info metric show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The compiler that built ipamd (`rustc --version`).
pub const RUSTC: &str = env!("IPAMD_RUSTC_VERSION");

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cloud::ec2::CallMeter;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Buckets from 0.5 ms to ~16 s: pod requests sit at the low end, EC2 calls and rounds at the high end.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
struct Inner {
    ec2_requests: Family<Labels, Counter>,
    ec2_errors: Family<Labels, Counter>,
    ec2_latency: Family<Labels, Histogram, fn() -> Histogram>,
    ec2_throttle_wait_ms: Counter,
    pod_requests: Family<Labels, Counter>,
    pod_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// aws-vpc-cni's series, fed by the same events.
    awscni: awscni::AwsCni,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    eni_changes: Family<Labels, Counter>,
    prefix_fallbacks: Counter,
    degraded: Gauge,
    degraded_reason: std::sync::Mutex<String>,
    degraded_since: AtomicI64,
    snat_broken: Gauge,
    /// What `GetStatus` says of node SNAT (empty: ipamd does not manage it).
    snat_state: std::sync::Mutex<String>,
}

#[derive(Debug, Clone)]
pub struct Telemetry(Arc<Inner>);

impl Default for Telemetry {
    fn default() -> Self {
        Self(Arc::new(Inner::new()))
    }
}

impl Inner {
    fn new() -> Self {
        Self {
            ec2_requests: Family::default(),
            ec2_errors: Family::default(),
            ec2_latency: Family::new_with_constructor(seconds_histogram),
            ec2_throttle_wait_ms: Counter::default(),
            pod_requests: Family::default(),
            pod_latency: Family::new_with_constructor(seconds_histogram),
            awscni: awscni::AwsCni::default(),
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(seconds_histogram),
            eni_changes: Family::default(),
            prefix_fallbacks: Counter::default(),
            degraded: Gauge::default(),
            degraded_reason: std::sync::Mutex::default(),
            degraded_since: AtomicI64::new(0),
            snat_broken: Gauge::default(),
            snat_state: std::sync::Mutex::default(),
        }
    }
}

impl CallMeter for Telemetry {
    /// One EC2 request (each attempt counts: that is what the account's budget sees).
    fn ec2_call(&self, op: &str, took: Duration, error_code: Option<&str>) {
        let op_l = labels(&[("op", op)]);
        self.0.ec2_requests.get_or_create(&op_l).inc();
        self.0.ec2_latency.get_or_create(&op_l).observe(took.as_secs_f64());
        if let Some(code) = error_code {
            self.0.ec2_errors.get_or_create(&labels(&[("op", op), ("code", code)])).inc();
        }
        self.0.awscni.ec2_call(op, took, error_code);
    }

    fn ec2_throttle_wait(&self, waited: Duration) {
        self.0.ec2_throttle_wait_ms.inc_by(waited.as_millis() as u64);
    }
}

impl Telemetry {
    /// EC2 requests made for `op` so far.
    pub fn ec2_requests(&self, op: &str) -> u64 {
        self.0.ec2_requests.get_or_create(&labels(&[("op", op)])).get()
    }

    /// A pod request over the socket: `op` add/del, `result` ok/no_ip/error.
    pub fn pod_request(&self, op: &str, result: &str, took: Duration) {
        let l = labels(&[("op", op), ("result", result)]);
        self.0.pod_requests.get_or_create(&l).inc();
        self.0.pod_latency.get_or_create(&l).observe(took.as_secs_f64());
        self.0.awscni.pod_request(op, result == "no_ip");
    }

    /// aws-vpc-cni's series (see [`awscni`]).
    pub fn awscni(&self) -> &awscni::AwsCni {
        &self.0.awscni
    }

    pub fn reconcile(&self, ok: bool, took: Duration) {
        let l = labels(&[("result", if ok { "ok" } else { "error" })]);
        self.0.reconciles.get_or_create(&l).inc();
        self.0.reconcile_duration.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// `change`: attached / detached.
    pub fn eni(&self, change: &str) {
        self.0.eni_changes.get_or_create(&labels(&[("change", change)])).inc();
        let function = if change == "attached" { "eniReconcileAdd" } else { "eniReconcileDel" };
        self.0.awscni.reconciled(function, 1);
    }

    /// Prefix mode: an ENI fell back to single IPs (EC2 had no free /28 in its subnet).
    pub fn prefix_fallback(&self) {
        self.0.prefix_fallbacks.inc();
    }

    /// Sets or clears the degraded state (EC2 or IMDS unreachable while serving from the checkpoint).
    pub fn set_degraded(&self, reason: Option<String>) {
        let mut r = self.0.degraded_reason.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(reason) => {
                if r.is_empty() {
                    self.0.degraded_since.store(crate::pool::now_ms() / 1000, Ordering::Relaxed);
                }
                *r = reason;
                self.0.degraded.set(1);
            }
            None => {
                r.clear();
                self.0.degraded.set(0);
                self.0.degraded_since.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Why ipamd is degraded and since when (unix seconds), if it is.
    pub fn degraded(&self) -> Option<(String, i64)> {
        let r = self.0.degraded_reason.lock().unwrap_or_else(|p| p.into_inner());
        (!r.is_empty()).then(|| (r.clone(), self.0.degraded_since.load(Ordering::Relaxed)))
    }

    /// Node SNAT's state: `Ok(what)` in place (e.g. "in place"), `Err(why)` broken.
    pub fn set_snat(&self, state: Result<String, String>) {
        let mut s = self.0.snat_state.lock().unwrap_or_else(|p| p.into_inner());
        self.0.snat_broken.set(i64::from(state.is_err()));
        *s = match state {
            Ok(what) => what,
            Err(why) => format!("broken: {why}"),
        };
    }

    /// What `GetStatus` says of node SNAT.
    pub fn snat(&self) -> String {
        self.0.snat_state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds every series to `reg`.
    pub fn register(&self, reg: &mut Registry) {
        let i = &self.0;
        reg.register("ipamd_ec2_requests", "EC2 API requests by operation (each attempt)", i.ec2_requests.clone());
        reg.register("ipamd_ec2_errors", "EC2 API errors by operation and error code", i.ec2_errors.clone());
        reg.register_with_unit(
            "ipamd_ec2_request_duration",
            "EC2 API request latency by operation",
            prometheus_client::registry::Unit::Seconds,
            i.ec2_latency.clone(),
        );
        reg.register(
            "ipamd_ec2_throttle_wait_milliseconds",
            "time EC2 calls waited on EC2_API_QPS",
            i.ec2_throttle_wait_ms.clone(),
        );
        reg.register("ipamd_pod_requests", "pod Add/Del requests by result (ok, no_ip, error)", i.pod_requests.clone());
        reg.register_with_unit(
            "ipamd_pod_request_duration",
            "pod Add/Del latency inside ipamd by result",
            prometheus_client::registry::Unit::Seconds,
            i.pod_latency.clone(),
        );
        reg.register("ipamd_reconciles", "warm-pool reconcile rounds by result", i.reconciles.clone());
        reg.register_with_unit(
            "ipamd_reconcile_duration",
            "warm-pool reconcile round duration by result",
            prometheus_client::registry::Unit::Seconds,
            i.reconcile_duration.clone(),
        );
        reg.register("ipamd_eni_changes", "ENIs attached or detached by ipamd", i.eni_changes.clone());
        reg.register(
            "ipamd_prefix_fallbacks",
            "ENIs switched to single IPs because EC2 had no free /28 prefix in their subnet",
            i.prefix_fallbacks.clone(),
        );
        reg.register(
            "ipamd_degraded",
            "1 while EC2 or IMDS is unreachable and ipamd serves from its checkpoint",
            i.degraded.clone(),
        );
        reg.register(
            "ipamd_snat_broken",
            "1 while the node's SNAT table cannot be put in place (GetStatus `snat` says why); pods still get IPs",
            i.snat_broken.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_show_up_in_the_exposition() {
        let t = Telemetry::default();
        t.ec2_call("AssignPrivateIpAddresses", Duration::from_millis(30), Some("RequestLimitExceeded"));
        t.pod_request("add", "no_ip", Duration::from_millis(2));
        t.reconcile(true, Duration::from_millis(80));
        t.eni("attached");
        t.prefix_fallback();
        t.set_degraded(Some("EC2 unreachable".into()));
        let mut reg = Registry::default();
        t.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "ipamd_ec2_requests_total{op=\"AssignPrivateIpAddresses\"} 1",
            "ipamd_ec2_errors_total{op=\"AssignPrivateIpAddresses\",code=\"RequestLimitExceeded\"} 1",
            "ipamd_ec2_request_duration_seconds_count{op=\"AssignPrivateIpAddresses\"} 1",
            "ipamd_pod_requests_total{op=\"add\",result=\"no_ip\"} 1",
            "ipamd_reconciles_total{result=\"ok\"} 1",
            "ipamd_eni_changes_total{change=\"attached\"} 1",
            "ipamd_prefix_fallbacks_total 1",
            "ipamd_degraded 1",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert_eq!(t.degraded().map(|d| d.0), Some("EC2 unreachable".to_string()));
        t.set_degraded(None);
        assert!(t.degraded().is_none());
    }
}

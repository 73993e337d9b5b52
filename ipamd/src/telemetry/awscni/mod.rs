//! aws-vpc-cni's `awscni_*` series, beside ipamd's own, so that dashboards, alerts and cni-metrics-helper
//! written for aws-node keep working: every family aws-vpc-cni v1.23 exports (the list is
//! tests/fixtures/aws-node/metrics.txt), with its name, type, labels and unit, fed by the same events as the
//! `ipamd_*` series. Written by hand in Prometheus text format 0.0.4 ([`text`]): aws' counters carry no `_total`
//! suffix and its latency is a summary, neither of which prometheus_client's OpenMetrics encoder writes. Every
//! family is written with its HELP and TYPE even before it has a sample.
//!
//! How ipamd's events map onto aws' label values where the two designs differ: `awscni_reconcile_count{fn}`
//! counts ENIs attached (`eniReconcileAdd`) and detached (`eniReconcileDel`) by ipamd, IPs given back
//! (`eniIPPoolReconcileDel`) and, each round, the IPs seen on the node's ENIs (`eniDataStorePoolReconcileAdd`);
//! `awscni_ipamd_error_count{fn}` names a failed round by the EC2 operation that failed (e.g.
//! `increaseIPPoolAllocENI` for CreateNetworkInterface/AttachNetworkInterface); DELs carry
//! `reason="PodDeleted"` (the plugin sends no reason); `awscni_build_info`'s `goversion` holds the Rust compiler.

mod text;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub use text::render;

/// Counters and observations fed by ipamd's events (the gauges come from the pool's published copy).
#[derive(Debug, Default)]
pub struct AwsCni(Mutex<State>);

#[derive(Debug, Default, Clone)]
struct State {
    add_requests: u64,
    del_requests: BTreeMap<String, u64>,
    no_ip: u64,
    ec2_requests: BTreeMap<String, u64>,
    ec2_errors: BTreeMap<String, u64>,
    /// (api, error, status) → (sum of ms, count).
    api_latency: BTreeMap<(String, String, String), (u64, u64)>,
    /// (api, error code) → count.
    api_errors: BTreeMap<(String, String), u64>,
    reconcile: BTreeMap<String, u64>,
    in_progress: BTreeMap<String, i64>,
    ipamd_errors: BTreeMap<String, u64>,
    connmark_backend: Option<&'static str>,
    connmark_reconciles: [u64; 2],
    /// Seconds, and whether the API server was used.
    startup: Option<(f64, bool)>,
    node_init: Option<(f64, bool)>,
}

impl AwsCni {
    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A copy taken under the lock, so that formatting never holds it (pod requests take it).
    fn snapshot(&self) -> State {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An AddNetwork or DelNetwork request (`op` add/del) and whether it found no IP.
    pub fn pod_request(&self, op: &str, no_ip: bool) {
        self.with(|s| {
            match op {
                "add" => s.add_requests += 1,
                _ => *s.del_requests.entry("PodDeleted".into()).or_default() += 1,
            }
            s.no_ip += u64::from(no_ip);
        });
    }

    /// One EC2 attempt: the operation, its latency, the error code when it failed.
    pub fn ec2_call(&self, op: &str, took: Duration, error_code: Option<&str>) {
        self.with(|s| {
            *s.ec2_requests.entry(op.into()).or_default() += 1;
            let (error, status) = match error_code {
                Some(code) => {
                    *s.ec2_errors.entry(op.into()).or_default() += 1;
                    *s.api_errors.entry((op.into(), code.into())).or_default() += 1;
                    ("true", code)
                }
                None => ("false", "200"),
            };
            let l = s.api_latency.entry((op.into(), error.into(), status.into())).or_default();
            l.0 += took.as_millis() as u64;
            l.1 += 1;
        });
    }

    /// `awscni_reconcile_count{fn}` += `n`.
    pub fn reconciled(&self, function: &str, n: u64) {
        if n > 0 {
            self.with(|s| *s.reconcile.entry(function.into()).or_default() += n);
        }
    }

    /// `awscni_ipamd_action_inprogress{fn}` += `delta` (+1 on entry, −1 on exit).
    pub fn in_progress(&self, function: &str, delta: i64) {
        self.with(|s| *s.in_progress.entry(function.into()).or_default() += delta);
    }

    /// A failed reconcile round, named by the EC2 operation that failed (None: not an EC2 failure).
    pub fn round_failed(&self, ec2_op: Option<&str>) {
        let function = match ec2_op {
            Some("CreateNetworkInterface" | "AttachNetworkInterface") => "increaseIPPoolAllocENI",
            Some("AssignPrivateIpAddresses") => "increaseIPPoolAllocIPAddressesFailed",
            Some("UnassignPrivateIpAddresses") => "decreaseIPPool",
            Some("DetachNetworkInterface" | "DeleteNetworkInterface") => "decreaseIPPoolFreeENIFailed",
            Some("ModifyNetworkInterfaceAttribute" | "CreateTags") => "eniReconcileAdd",
            _ => "reconcileFailedGetENIs",
        };
        self.with(|s| *s.ipamd_errors.entry(function.into()).or_default() += 1);
    }

    /// The node's SNAT and connmark rules were applied (`ok`) or could not be.
    pub fn connmark_reconciled(&self, ok: bool) {
        self.with(|s| {
            s.connmark_backend = Some("nftables");
            s.connmark_reconciles[usize::from(!ok)] += 1;
        });
    }

    /// Start to SERVING (once).
    pub fn started(&self, took: Duration, with_api_server: bool) {
        self.with(|s| {
            s.startup.get_or_insert((took.as_secs_f64(), with_api_server));
        });
    }

    /// Start to the node read from IMDS (once).
    pub fn node_initialized(&self, took: Duration, ok: bool) {
        self.with(|s| {
            s.node_init.get_or_insert((took.as_secs_f64(), ok));
        });
    }
}

#[cfg(test)]
mod tests;

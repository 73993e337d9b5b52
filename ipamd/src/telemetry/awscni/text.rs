//! The `awscni_*` families in Prometheus text format 0.0.4, in the order of aws-vpc-cni's list.

use std::fmt::Write;

use super::{AwsCni, State};
use crate::pool::Gauges;

/// client_golang's default histogram buckets, which aws-vpc-cni's startup histograms use.
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label values escaped as the text format wants (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out<'a>(&'a mut String);

impl Out<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let mut sorted = labels.to_vec();
            sorted.sort_by_key(|(k, _)| *k);
            let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one sample per key of `map`, labelled `label`.
    fn by<V: std::fmt::Display>(&mut self, name: &str, label: &str, map: impl IntoIterator<Item = (String, V)>) {
        for (k, v) in map {
            self.sample(name, &[(label, &k)], v);
        }
    }

    /// One observation of a default-bucket histogram.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], seconds: f64) {
        let bucket = format!("{name}_bucket");
        for le in DEFAULT_BUCKETS {
            let mut l = labels.to_vec();
            let le_text = le.to_string();
            l.push(("le", &le_text));
            self.sample(&bucket, &l, u8::from(seconds <= le));
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, 1);
        self.sample(&format!("{name}_sum"), labels, seconds);
        self.sample(&format!("{name}_count"), labels, 1);
    }
}

/// Appends every `awscni_*` family to `out`: the gauges from `g`, the rest from `aws`.
pub fn render(aws: &AwsCni, g: &Gauges, out: &mut String) {
    let s: State = aws.snapshot();
    let mut o = Out(out);
    let (max_enis, ips_per_eni) = g.limits.map_or((0, 0), |l| (l.max_enis, l.ips_per_eni));
    let eni_max = max_enis.saturating_sub(g.foreign);
    let per_slot = if g.prefix_mode { 16 } else { 1 };

    o.family("awscni_add_ip_req_count", "counter", "The number of pod IP add requests ipamd received");
    o.sample("awscni_add_ip_req_count", &[], s.add_requests);
    o.family("awscni_del_ip_req_count", "counter", "The number of pod IP delete requests ipamd received, by reason");
    o.by("awscni_del_ip_req_count", "reason", s.del_requests);
    o.family("awscni_no_available_ip_addresses", "counter", "The number of pod IP add requests that found no free IP");
    o.sample("awscni_no_available_ip_addresses", &[], s.no_ip);
    o.family("awscni_assigned_ip_addresses", "gauge", "The number of IPs assigned to pods");
    o.sample("awscni_assigned_ip_addresses", &[], g.stats.assigned);
    o.family("awscni_total_ip_addresses", "gauge", "The number of IPs in the pool (a /28 prefix counts 16)");
    o.sample("awscni_total_ip_addresses", &[], g.stats.total);
    o.family("awscni_total_ipv4_prefixes", "gauge", "The number of /28 prefixes in the pool");
    o.sample("awscni_total_ipv4_prefixes", &[], g.prefixes);
    o.family("awscni_eni_allocated", "gauge", "The number of ENIs in the pool");
    o.sample("awscni_eni_allocated", &[], g.stats.enis);
    o.family("awscni_eni_max", "gauge", "The number of ENIs the node may use (the limit less ENIs ipamd leaves alone)");
    o.sample("awscni_eni_max", &[], eni_max);
    o.family("awscni_ip_max", "gauge", "The number of IPs the node's usable ENIs can hold");
    o.sample("awscni_ip_max", &[], u64::from(eni_max) * u64::from(ips_per_eni) * per_slot);
    o.family("awscni_assigned_ip_per_cidr", "gauge", "The number of pod IPs per /28 prefix or single /32");
    o.by("awscni_assigned_ip_per_cidr", "cidr", g.assigned_per_cidr.iter().cloned());
    o.family("awscni_assigned_ip_per_eni", "gauge", "The number of pod IPs per ENI");
    o.by("awscni_assigned_ip_per_eni", "eni", g.assigned_per_eni.iter().cloned());
    o.family(
        "awscni_force_removed_enis",
        "counter",
        "The number of ENIs that left the node while pods held IPs on them",
    );
    o.sample("awscni_force_removed_enis", &[], g.force_removed.enis);
    o.family("awscni_force_removed_ips", "counter", "The number of pod IPs taken away outside ipamd");
    o.sample("awscni_force_removed_ips", &[], g.force_removed.ips);
    o.family("awscni_reconcile_count", "counter", "The number of reconcile actions, by kind");
    o.by("awscni_reconcile_count", "fn", s.reconcile);
    o.family("awscni_ipamd_action_inprogress", "gauge", "The number of ipamd actions in progress, by kind");
    o.by("awscni_ipamd_action_inprogress", "fn", s.in_progress);
    o.family("awscni_ipamd_error_count", "counter", "The number of ipamd errors, by the step that failed");
    o.by("awscni_ipamd_error_count", "fn", s.ipamd_errors);
    o.family("awscni_pod_eni_error_count", "counter", "The number of security-groups-for-pods errors (not built)");
    o.family("awscni_ec2api_req_count", "counter", "The number of EC2 API requests, by operation");
    o.by("awscni_ec2api_req_count", "fn", s.ec2_requests);
    o.family("awscni_ec2api_error_count", "counter", "The number of failed EC2 API requests, by operation");
    o.by("awscni_ec2api_error_count", "fn", s.ec2_errors);
    o.family("awscni_aws_api_latency_ms", "summary", "EC2 API request latency in milliseconds");
    for ((api, error, status), (sum, count)) in &s.api_latency {
        let l = [("api", api.as_str()), ("error", error.as_str()), ("status", status.as_str())];
        o.sample("awscni_aws_api_latency_ms_sum", &l, sum);
        o.sample("awscni_aws_api_latency_ms_count", &l, count);
    }
    o.family("awscni_aws_api_error_count", "counter", "The number of EC2 API errors, by operation and error code");
    for ((api, error), n) in &s.api_errors {
        o.sample("awscni_aws_api_error_count", &[("api", api), ("error", error)], n);
    }
    o.family("awscni_aws_utils_error_count", "counter", "The number of ENI clean-up errors (none: ipamd retries)");
    o.family("awscni_ipamd_startup_duration_seconds", "histogram", "Time from start to serving");
    if let Some((secs, api)) = s.startup {
        let l = [("success", "true"), ("with_api_server", if api { "true" } else { "false" }), ("failure_reason", "")];
        o.histogram("awscni_ipamd_startup_duration_seconds", &l, secs);
    }
    o.family("awscni_ipamd_node_initialization_duration_seconds", "histogram", "Time to read the node from IMDS");
    if let Some((secs, ok)) = s.node_init {
        let l = [("success", if ok { "true" } else { "false" })];
        o.histogram("awscni_ipamd_node_initialization_duration_seconds", &l, secs);
    }
    o.family("awscni_connmark_backend", "gauge", "1 for the firewall backend of the SNAT and connmark rules");
    if let Some(b) = s.connmark_backend {
        o.sample("awscni_connmark_backend", &[("backend", b)], 1);
    }
    o.family("awscni_connmark_reconcile_total", "counter", "The number of SNAT and connmark rule updates, by result");
    o.sample("awscni_connmark_reconcile_total", &[("result", "success")], s.connmark_reconciles[0]);
    o.sample("awscni_connmark_reconcile_total", &[("result", "error")], s.connmark_reconciles[1]);
    o.family("awscni_build_info", "gauge", "ipamd's version and the compiler that built it (as goversion)");
    o.sample("awscni_build_info", &[("version", crate::telemetry::VERSION), ("goversion", crate::telemetry::RUSTC)], 1);
}

//! /metrics of a live ipamd (LocalStack behind the fault proxy, its Kubernetes side on against the real API
//! server): every `awscni_*` family aws-vpc-cni exports (tests/fixtures/aws-node/metrics.txt, taken from its
//! utils/prometheusmetrics/prometheusmetrics.go and pkg/version/info.go) is there with aws' type, each family is
//! described once, the exposition ends with one `# EOF`; and every series the Grafana dashboard in
//! deploy/grafana/ queries (panels and template variables) has samples.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vpc_sim::fixture::{NodeFixture, add, eventually, free_port, http_get};
use vpc_sim::kubeapi::{self, KubeEnv};

const WAIT: Duration = Duration::from_secs(60);

fn fixture() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(kubeapi::repo_root().join("tests/fixtures/aws-node/metrics.txt")).expect("fixture");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

/// Every string under an `expr`, `query` or `definition` key, anywhere in the dashboard.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The series names a PromQL text names (ipamd's and aws-vpc-cni's prefixes).
fn series(q: &str) -> BTreeSet<String> {
    q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("ipamd_") || w.starts_with("awscni_"))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn aws_families_are_exported_and_every_dashboard_query_finds_its_series() {
    let env = KubeEnv::discover().expect("API server env (make test starts it)");
    let admin = kubeapi::client(&env.admin).await.expect("admin client");
    kubeapi::install_deploy_basics(&admin).await.expect("RBAC");
    let fx = NodeFixture::behind_proxy("metrics-names", "t3.medium").await;
    let node = format!("metrics-{}", fx.instance_id());
    kubeapi::put_node(&admin, &node, &BTreeMap::new(), None).await.unwrap();
    let proxy = fx.proxy.as_ref().expect("proxy");
    // The first attach is throttled, so that the error and ENI-change series have samples.
    proxy.fail("AttachNetworkInterface", 503, "RequestLimitExceeded", "Request limit exceeded.");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let sa = env.service_account.display().to_string();
    let mut ipamd = fx.spawn_ipamd(&[
        ("METRICS_BIND_ADDR", &bind),
        ("MY_NODE_NAME", &node),
        ("KUBECONFIG", &sa),
        ("WARM_ENI_TARGET", "2"),
        ("IPAMD_RECONCILE_INTERVAL", "1"),
    ]);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    eventually(WAIT, "a throttled attach", || async { (proxy.calls("AttachNetworkInterface") > 0).then_some(()) })
        .await;
    proxy.heal("AttachNetworkInterface");
    eventually(WAIT, "the second ENI", || async { (fx.enis().await.len() == 2).then_some(()) }).await;
    add(&ipamd, "c1").await.expect("a pod");
    // The attach is counted when it is made; the pool counts the ENI once a later round has observed it.
    let text = eventually(WAIT, "the Kubernetes side connected and an ENI attached and in the pool", || async {
        let t = http_get(port, "/metrics").await.ok()?;
        let at_least = |series: &str, n: f64| vpc_sim::fixture::metric(&t, series).is_some_and(|v| v >= n);
        // WARM_ENI_TARGET=2 may go on to a third ENI: counts are lower bounds.
        (at_least("ipamd_kube_api_connected", 1.0)
            && at_least("ipamd_eni_changes_total{change=\"attached\"}", 1.0)
            && at_least("awscni_eni_allocated", 2.0))
        .then_some(t)
    })
    .await;

    // Families: aws' with aws' types; every family described once; one end marker, last.
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (n, t) = l.split_once(' ').unwrap();
        assert!(types.insert(n.into(), t.into()).is_none(), "TYPE {n} twice");
    }
    let helps: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
    assert_eq!(helps.len(), helps.iter().collect::<BTreeSet<_>>().len(), "a HELP twice");
    let aws: BTreeMap<String, String> =
        types.iter().filter(|(n, _)| n.starts_with("awscni_")).map(|(n, t)| (n.clone(), t.clone())).collect();
    assert_eq!(aws, fixture(), "awscni_* families on /metrics vs aws-vpc-cni's list");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.trim_end().ends_with("# EOF"), "# EOF last");
    for (series, min) in
        [("awscni_add_ip_req_count", 1.0), ("awscni_eni_allocated", 2.0), ("awscni_assigned_ip_addresses", 1.0)]
    {
        let v = vpc_sim::fixture::metric(&text, series).unwrap_or(-1.0);
        assert!(v >= min, "{series} = {v}, want at least {min}");
    }
    let errors = text.lines().find(|l| l.starts_with("awscni_ec2api_error_count{fn=\"AttachNetworkInterface\"}"));
    assert!(errors.is_some(), "the throttled attach counted under aws' name");

    // The dashboard: every series any query names has a sample.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(kubeapi::repo_root().join("deploy/grafana/vpc-cni-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut qs = Vec::new();
    queries(&dash, &mut qs);
    assert!(qs.len() > 20, "queries found: {}", qs.len());
    let named: BTreeSet<String> = qs.iter().flat_map(|q| series(q)).collect();
    let sampled =
        |s: &str| text.lines().any(|l| l.strip_prefix(s).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')));
    let missing: Vec<&String> = named.iter().filter(|s| !sampled(s)).collect();
    assert!(missing.is_empty(), "the dashboard queries series a live ipamd does not export: {missing:?}");
    ipamd.terminate().await;
    kubeapi::delete_node(&admin, &node).await;
    fx.cleanup().await;
}

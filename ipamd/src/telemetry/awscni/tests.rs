//! The families against aws-vpc-cni's list, and their values against the events that feed them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::planner::Limits;
use crate::pool::Gauges;

/// (name, type) of each family in tests/fixtures/aws-node/metrics.txt (taken from aws-vpc-cni's source).
fn fixture() -> BTreeMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/aws-node/metrics.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

/// (name, type) of each `# TYPE` line.
pub(crate) fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn gauges() -> Gauges {
    Gauges {
        limits: Some(Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }),
        foreign: 1,
        assigned_per_eni: vec![("eni-a".into(), 2)],
        assigned_per_cidr: vec![("10.0.1.16/28".into(), 2), ("10.0.1.7/32".into(), 1)],
        ..Gauges::default()
    }
}

#[test]
fn every_aws_family_is_exported_with_its_type_even_before_a_sample() {
    let mut out = String::new();
    render(&AwsCni::default(), &gauges(), &mut out);
    let ours = families(&out);
    assert_eq!(ours, fixture(), "awscni_* families and types differ from aws-vpc-cni's list");
    // No suffix of the OpenMetrics encoder's: aws' counters are named as registered.
    assert!(value(&out, "awscni_add_ip_req_count").is_some() && !out.contains("awscni_add_ip_req_count_total"));
    for l in out.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(l.split(' ').count() > 3, "a HELP without text: {l}");
    }
}

#[test]
fn values_follow_the_events() {
    let aws = AwsCni::default();
    aws.pod_request("add", false);
    aws.pod_request("add", true);
    aws.pod_request("del", false);
    aws.ec2_call("AssignPrivateIpAddresses", Duration::from_millis(40), None);
    aws.ec2_call("AssignPrivateIpAddresses", Duration::from_millis(20), Some("RequestLimitExceeded"));
    aws.reconciled("eniReconcileAdd", 1);
    aws.in_progress("nodeIPPoolReconcile", 1);
    aws.round_failed(Some("AttachNetworkInterface"));
    aws.connmark_reconciled(true);
    aws.started(Duration::from_millis(300), false);
    let mut out = String::new();
    render(&aws, &gauges(), &mut out);
    for (series, want) in [
        ("awscni_add_ip_req_count", 2.0),
        ("awscni_del_ip_req_count{reason=\"PodDeleted\"}", 1.0),
        ("awscni_no_available_ip_addresses", 1.0),
        ("awscni_ec2api_req_count{fn=\"AssignPrivateIpAddresses\"}", 2.0),
        ("awscni_ec2api_error_count{fn=\"AssignPrivateIpAddresses\"}", 1.0),
        ("awscni_aws_api_latency_ms_sum{api=\"AssignPrivateIpAddresses\",error=\"false\",status=\"200\"}", 40.0),
        (
            "awscni_aws_api_latency_ms_count{api=\"AssignPrivateIpAddresses\",error=\"true\",status=\"RequestLimitExceeded\"}",
            1.0,
        ),
        ("awscni_aws_api_error_count{api=\"AssignPrivateIpAddresses\",error=\"RequestLimitExceeded\"}", 1.0),
        ("awscni_reconcile_count{fn=\"eniReconcileAdd\"}", 1.0),
        ("awscni_ipamd_action_inprogress{fn=\"nodeIPPoolReconcile\"}", 1.0),
        ("awscni_ipamd_error_count{fn=\"increaseIPPoolAllocENI\"}", 1.0),
        ("awscni_connmark_reconcile_total{result=\"success\"}", 1.0),
        ("awscni_connmark_backend{backend=\"nftables\"}", 1.0),
        // 3 ENIs less the one left alone, 9 IPs each.
        ("awscni_eni_max", 2.0),
        ("awscni_ip_max", 18.0),
        ("awscni_assigned_ip_per_eni{eni=\"eni-a\"}", 2.0),
        ("awscni_assigned_ip_per_cidr{cidr=\"10.0.1.16/28\"}", 2.0),
        (
            "awscni_ipamd_startup_duration_seconds_bucket{failure_reason=\"\",le=\"0.25\",success=\"true\",with_api_server=\"false\"}",
            0.0,
        ),
        (
            "awscni_ipamd_startup_duration_seconds_bucket{failure_reason=\"\",le=\"0.5\",success=\"true\",with_api_server=\"false\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&out, series), Some(want), "{series} in\n{out}");
    }
}

#[test]
fn label_values_are_escaped() {
    let aws = AwsCni::default();
    aws.ec2_call("Op", Duration::ZERO, Some("a\"b\\c\nd"));
    let mut out = String::new();
    render(&aws, &Gauges::default(), &mut out);
    assert!(out.contains(r#"awscni_aws_api_error_count{api="Op",error="a\"b\\c\nd"} 1"#), "{out}");
}

//! The JSON `vpcctl -o json` prints for each view (stable, documented), also what the support bundle stores.

use serde_json::{Value, json};
use vpc_cni_proto::v1 as pb;

pub fn key_json(k: &Option<pb::AllocationKey>) -> Value {
    match k {
        Some(k) => {
            json!({"network_name": k.network_name, "container_id": k.container_id, "if_name": k.if_name})
        }
        None => Value::Null,
    }
}

pub fn status(s: &pb::GetStatusReply) -> Value {
    json!({
        "instance_id": s.instance_id, "instance_type": s.instance_type, "serving": s.serving,
        "max_enis": s.max_enis, "ips_per_eni": s.ips_per_eni, "max_pods": s.max_pods,
        "enis": s.enis, "total_ips": s.total_ips, "assigned_ips": s.assigned_ips,
        "cooling_ips": s.cooling_ips, "free_ips": s.free_ips,
        "last_reconcile_unix": s.last_reconcile_unix,
        "reconcile_rounds": s.reconcile_rounds, "last_error": s.last_error,
        "degraded": s.degraded, "pending_ips": s.pending_ips,
        "max_pods_source": s.max_pods_source, "kube_api": s.kube_api,
        "custom_networking": s.custom_networking, "eni_config": s.eni_config,
        "eni_config_source": s.eni_config_source, "eni_config_subnet": s.eni_config_subnet,
        "eni_config_security_groups": s.eni_config_security_groups,
        "eni_config_problem": s.eni_config_problem,
        "enis_from_other_eni_config": s.enis_from_other_eni_config,
        "unknown_pod_ips": s.unknown_pod_ips,
        "stale_allocations_released": s.stale_allocations_released, "pod_gc": s.pod_gc,
        "prefix_delegation": s.prefix_delegation, "prefixes": s.prefixes,
        "prefix_fallback_enis": s.prefix_fallback_enis, "snat": s.snat, "version": s.version,
    })
}

pub fn enis(r: &pb::ListEnisReply) -> Value {
    let enis: Vec<Value> = r
        .enis
        .iter()
        .map(|e| {
            let ips: Vec<Value> = e
                .ips
                .iter()
                .map(|i| {
                    json!({"address": i.address, "state": i.state, "key": key_json(&i.key),
                    "pod_namespace": i.k8s_pod_namespace, "pod_name": i.k8s_pod_name,
                    "cooldown_until_unix": i.cooldown_until_unix})
                })
                .collect();
            json!({"eni_id": e.eni_id, "mac": e.mac, "device_number": e.device_number,
            "primary": e.primary, "subnet_id": e.subnet_id, "subnet_cidr": e.subnet_cidr,
            "primary_ip": e.primary_ip, "ips": ips, "prefixes": e.prefixes,
            "prefix_fallback": e.prefix_fallback})
        })
        .collect();
    Value::Array(enis)
}

pub fn pods(r: &pb::ListAllocationsReply) -> Value {
    let v: Vec<Value> = r
        .allocations
        .iter()
        .map(|a| {
            json!({"key": key_json(&a.key), "ipv4_addr": a.ipv4_addr, "eni_id": a.eni_id,
            "pod_namespace": a.k8s_pod_namespace, "pod_name": a.k8s_pod_name,
            "allocated_unix": a.allocated_unix, "policy_generation": a.policy_generation})
        })
        .collect();
    Value::Array(v)
}

pub fn config(r: &pb::GetConfigReply) -> Value {
    let m: serde_json::Map<String, Value> =
        r.entries.iter().map(|e| (e.name.clone(), json!({"value": e.value, "fate": e.fate}))).collect();
    Value::Object(m)
}

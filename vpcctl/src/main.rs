//! `vpcctl`: introspection CLI for ipamd over its Unix socket.
//!
//! `vpcctl [--socket PATH] [-o table|wide|json] <status|enis|pods|config|events|health>`;
//! `health` exits 0 only when ipamd reports SERVING (the readiness probe), and says DEGRADED with the reason
//! while ipamd serves from its last known pool; `health --live` exits 0 while ipamd's process and loops are
//! alive, SERVING or not yet (the liveness probe: a node missing an IAM permission is unready, not restarted).
//!
//! `vpcctl max-pods …` runs `vpcctl-max-pods` (beside this binary, or on PATH), as git and kubectl run their
//! plugins: it asks EC2 (DescribeInstanceTypes), and the AWS SDK stays out of this binary, which runs on every
//! node and talks to nothing but ipamd's socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use vpc_cni_proto::v1 as pb;
use vpc_cni_proto::v1::introspection_client::IntrospectionClient;

#[derive(Parser)]
#[command(name = "vpcctl", version, about = "Inspect the ipamd warm pool")]
struct Cli {
    /// ipamd's gRPC socket.
    #[arg(long, env = "IPAMD_SOCKET", default_value = "/run/vpc-cni/ipamd.sock", global = true)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Node, limits and pool counts.
    Status,
    /// ENIs and their IPs.
    Enis,
    /// Pod allocations.
    Pods,
    /// Effective configuration.
    Config,
    /// Follow pool events.
    Events,
    /// Exit 0 when ipamd is SERVING (readiness); with --live, when its process and loops are alive (liveness:
    /// true before the first reconcile too, e.g. while an IAM permission is missing).
    Health {
        #[arg(long)]
        live: bool,
    },
    /// Max pods for an instance type, as EKS computes it (runs vpcctl-max-pods; `vpcctl max-pods --help`).
    #[command(disable_help_flag = true)]
    MaxPods {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The helper binary of `vpcctl max-pods`.
const MAX_PODS_BIN: &str = "vpcctl-max-pods";

/// Replaces this process with `vpcctl-max-pods args…`; returns only if that cannot be run.
fn exec_max_pods(args: &[String], output: Output) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(MAX_PODS_BIN)));
    let bin = beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(MAX_PODS_BIN));
    let mut cmd = std::process::Command::new(&bin);
    if output == Output::Json {
        cmd.args(["-o", "json"]);
    }
    let err = cmd.args(args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "vpcctl max-pods runs {MAX_PODS_BIN} (it holds the AWS SDK, which vpcctl does not link), found neither \
             beside vpcctl nor on PATH; install it from the same release as vpcctl"
        )
    } else {
        anyhow::anyhow!("vpcctl max-pods: cannot run {}: {err}", bin.display())
    }
}

fn key_json(k: &Option<pb::AllocationKey>) -> Value {
    match k {
        Some(k) => {
            json!({"network_name": k.network_name, "container_id": k.container_id, "if_name": k.if_name})
        }
        None => Value::Null,
    }
}

fn short(id: &str, wide: bool) -> &str {
    if wide || id.len() <= 12 { id } else { &id[..12] }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::MaxPods { args } = &cli.cmd {
        return Err(exec_max_pods(args, cli.output));
    }
    let channel = vpc_cni_proto::uds::connect(&cli.socket, Some(Duration::from_secs(5)))
        .await
        .with_context(|| format!("cannot reach ipamd at {}", cli.socket.display()))?;
    let wide = cli.output == Output::Wide;
    let as_json = cli.output == Output::Json;
    if let Cmd::Health { live } = cli.cmd {
        let service = if live { vpc_cni_proto::LIVENESS_SERVICE.to_string() } else { String::new() };
        let r = HealthClient::new(channel.clone())
            .check(HealthCheckRequest { service })
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?;
        let serving = r.into_inner().status == ServingStatus::Serving as i32;
        // The detail is best effort: the probe's answer is the health status alone.
        let degraded = match IntrospectionClient::new(channel).get_status(pb::GetStatusRequest {}).await {
            Ok(s) => s.into_inner().degraded,
            Err(_) => String::new(),
        };
        if as_json {
            println!("{}", json!({"serving": serving, "degraded": degraded}));
        } else {
            let state = match (live, serving) {
                (true, true) => "ALIVE",
                (true, false) => "NOT_ALIVE",
                (false, true) => "SERVING",
                (false, false) => "NOT_SERVING",
            };
            match degraded.as_str() {
                "" => println!("{state}"),
                why => println!("{state} (DEGRADED: {why})"),
            }
        }
        std::process::exit(if serving { 0 } else { 1 });
    }
    let mut client = IntrospectionClient::new(channel);
    let rpc = |s: tonic::Status| anyhow::anyhow!("{}: {}", s.code(), s.message());
    match cli.cmd {
        Cmd::Status => {
            let s = client.get_status(pb::GetStatusRequest {}).await.map_err(rpc)?.into_inner();
            let v = json!({
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
                "prefix_fallback_enis": s.prefix_fallback_enis, "snat": s.snat,
            });
            if as_json {
                println!("{v:#}");
            } else {
                println!("instance   {} ({})", s.instance_id, s.instance_type);
                println!("serving    {}", s.serving);
                println!(
                    "limits     {} ENIs x {} IPs, max pods {} (from {})",
                    s.max_enis, s.ips_per_eni, s.max_pods, s.max_pods_source
                );
                println!("kube api   {}", s.kube_api);
                if s.custom_networking {
                    if s.eni_config.is_empty() {
                        println!("eniconfig  none usable");
                    } else {
                        let sgs = if s.eni_config_security_groups.is_empty() {
                            "node's security groups".to_string()
                        } else {
                            s.eni_config_security_groups.join(",")
                        };
                        println!(
                            "eniconfig  {} (from {}): subnet {}, {}",
                            s.eni_config, s.eni_config_source, s.eni_config_subnet, sgs
                        );
                    }
                    if !s.eni_config_problem.is_empty() {
                        println!("  problem  {}", s.eni_config_problem);
                    }
                    for e in &s.enis_from_other_eni_config {
                        println!("  earlier  {e} (from an earlier ENIConfig; replaced when the node is recycled)");
                    }
                }
                if !s.pod_gc.is_empty() {
                    println!("pod gc     {}, {} stale allocations released", s.pod_gc, s.stale_allocations_released);
                }
                for p in &s.unknown_pod_ips {
                    println!("unknown    {p} (a running pod whose IP ipamd did not hand out)");
                }
                println!(
                    "pool       {} ENIs, {} IPs: {} assigned, {} cooling, {} free",
                    s.enis, s.total_ips, s.assigned_ips, s.cooling_ips, s.free_ips
                );
                if s.prefix_delegation {
                    println!("prefixes   {} /28 prefixes delegated", s.prefixes);
                }
                for e in &s.prefix_fallback_enis {
                    println!(
                        "fallback   {e} takes single IPs: EC2 had no free /28 in its subnet (InsufficientCidrBlocks)"
                    );
                }
                if s.pending_ips > 0 {
                    println!("pending    {} IPs assigned in EC2, waiting for IMDS to show them", s.pending_ips);
                }
                if !s.degraded.is_empty() {
                    println!("DEGRADED   serving from the last known pool: {}", s.degraded);
                }
                if !s.snat.is_empty() {
                    println!("snat       {}", s.snat);
                }
                if !s.last_error.is_empty() {
                    println!("last error {}", s.last_error);
                }
            }
        }
        Cmd::Enis => {
            let r = client.list_enis(pb::ListEnisRequest {}).await.map_err(rpc)?.into_inner();
            if as_json {
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
                println!("{:#}", Value::Array(enis));
            } else {
                println!(
                    "{:<22} {:>3} {:<17} {:<15} {:>5} {:>8} {:>7} {:>5}",
                    "ENI", "DEV", "MAC", "PRIMARY-IP", "IPS", "ASSIGNED", "COOLING", "FREE"
                );
                for e in &r.enis {
                    let count = |s: &str| e.ips.iter().filter(|i| i.state == s).count();
                    println!(
                        "{:<22} {:>3} {:<17} {:<15} {:>5} {:>8} {:>7} {:>5}",
                        e.eni_id,
                        e.device_number,
                        e.mac,
                        e.primary_ip,
                        e.ips.len(),
                        count("assigned"),
                        count("cooling"),
                        count("free")
                    );
                    if !e.prefixes.is_empty() || e.prefix_fallback {
                        let fallback = if e.prefix_fallback { " (fallback: single IPs, no free /28)" } else { "" };
                        println!("    prefixes {}{fallback}", e.prefixes.join(" "));
                    }
                    if wide {
                        for i in &e.ips {
                            let who = if i.k8s_pod_name.is_empty() {
                                String::new()
                            } else {
                                format!("{}/{}", i.k8s_pod_namespace, i.k8s_pod_name)
                            };
                            println!("    {:<15} {:<9} {who}", i.address, i.state);
                        }
                    }
                }
            }
        }
        Cmd::Pods => {
            let r = client.list_allocations(pb::ListAllocationsRequest {}).await.map_err(rpc)?.into_inner();
            if as_json {
                let v: Vec<Value> = r
                    .allocations
                    .iter()
                    .map(|a| {
                        json!({"key": key_json(&a.key), "ipv4_addr": a.ipv4_addr, "eni_id": a.eni_id,
                        "pod_namespace": a.k8s_pod_namespace, "pod_name": a.k8s_pod_name,
                        "allocated_unix": a.allocated_unix})
                    })
                    .collect();
                println!("{:#}", Value::Array(v));
            } else {
                println!("{:<30} {:<15} {:<22} {:<14} IFNAME", "POD", "IP", "ENI", "CONTAINER");
                for a in &r.allocations {
                    let k = a.key.clone().unwrap_or_default();
                    println!(
                        "{:<30} {:<15} {:<22} {:<14} {}",
                        format!("{}/{}", a.k8s_pod_namespace, a.k8s_pod_name),
                        a.ipv4_addr,
                        a.eni_id,
                        short(&k.container_id, wide),
                        k.if_name
                    );
                }
            }
        }
        Cmd::Config => {
            let r = client.get_config(pb::GetConfigRequest {}).await.map_err(rpc)?.into_inner();
            if as_json {
                let m: serde_json::Map<String, Value> =
                    r.entries.into_iter().map(|e| (e.name, json!({"value": e.value, "fate": e.fate}))).collect();
                println!("{:#}", Value::Object(m));
            } else {
                for e in r.entries {
                    println!("{:<38} {:<24} {}", e.name, e.value, e.fate);
                }
            }
        }
        Cmd::Events => {
            let mut stream = client.watch_events(pb::WatchEventsRequest {}).await.map_err(rpc)?.into_inner();
            while let Some(ev) = stream.message().await.map_err(rpc)? {
                if as_json {
                    println!("{}", json!({"unix_millis": ev.unix_millis, "kind": ev.kind, "message": ev.message}));
                } else {
                    println!("{} {:<16} {}", ev.unix_millis, ev.kind, ev.message);
                }
            }
        }
        Cmd::Health { .. } | Cmd::MaxPods { .. } => unreachable!("handled above"),
    }
    Ok(())
}

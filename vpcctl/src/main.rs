//! `vpcctl`: introspection CLI for ipamd over its Unix socket.
//!
//! `vpcctl [--socket PATH] [-o table|wide|json] <status|enis|pods|config|events|health|policy|support-bundle>`;
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
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use vpc_cni_proto::v1 as pb;
use vpc_cni_proto::v1::introspection_client::IntrospectionClient;

mod bundle;
mod policy;
mod views;

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
    /// NetworkPolicy on this node: `status`, or `explain NS/POD NS/POD tcp/80`.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// One tar.gz for a support case: ipamd's views, metrics, checkpoint, the host's SNAT table, rules, routes
    /// and links, log tails, versions; credentials redacted. Exits 1 when nothing could be collected.
    SupportBundle {
        /// Where to write it (`-` for stdout; default vpc-cni-support-<unix time>.tar.gz here).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
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

/// `vpcctl support-bundle`: writes the bundle and says on stderr what it holds and what it could not collect.
async fn support_bundle(socket: &std::path::Path, file: Option<&std::path::Path>) -> Result<()> {
    let b = bundle::collect(socket).await;
    let bytes = b.tar_gz(&bundle::Redactor::from_env(std::env::vars())).context("writing the bundle")?;
    let failures = b.failures();
    if b.collected() == 0 {
        anyhow::bail!("nothing could be collected:\n  {}", failures.join("\n  "));
    }
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let path = file.map_or_else(|| PathBuf::from(format!("vpc-cni-support-{unix}.tar.gz")), PathBuf::from);
    if path.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(&bytes).context("writing to stdout")?;
    } else {
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
    }
    eprintln!("{} files collected", b.collected());
    for f in failures {
        eprintln!("  not collected: {f}");
    }
    Ok(())
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
    if let Cmd::SupportBundle { file } = &cli.cmd {
        return support_bundle(&cli.socket, file.as_deref()).await;
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
    if let Cmd::Policy { cmd } = cli.cmd {
        return policy::run(client, cmd, as_json).await;
    }
    let rpc = |s: tonic::Status| anyhow::anyhow!("{}: {}", s.code(), s.message());
    match cli.cmd {
        Cmd::Status => {
            let s = client.get_status(pb::GetStatusRequest {}).await.map_err(rpc)?.into_inner();
            let v = views::status(&s);
            if as_json {
                println!("{v:#}");
            } else {
                println!("instance   {} ({})", s.instance_id, s.instance_type);
                println!("ipamd      {}", s.version);
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
                println!("{:#}", views::enis(&r));
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
                println!("{:#}", views::pods(&r));
            } else {
                // POLICY: the NetworkPolicy table generation in force when the pod's ADD returned (with
                // ENABLE_NETWORK_POLICY=true; "default": the lists were not in and the mode's default applied).
                let policy = r.allocations.iter().any(|a| a.policy_generation.is_some());
                let column = |a: &pb::Allocation| match (policy, a.policy_generation) {
                    (false, _) => String::new(),
                    (true, None) => format!(" {:<8}", "-"),
                    (true, Some(0)) => format!(" {:<8}", "default"),
                    (true, Some(g)) => format!(" {g:<8}"),
                };
                let head = if policy { format!(" {:<8}", "POLICY") } else { String::new() };
                println!("{:<30} {:<15} {:<22} {:<14}{head} IFNAME", "POD", "IP", "ENI", "CONTAINER");
                for a in &r.allocations {
                    let k = a.key.clone().unwrap_or_default();
                    println!(
                        "{:<30} {:<15} {:<22} {:<14}{} {}",
                        format!("{}/{}", a.k8s_pod_namespace, a.k8s_pod_name),
                        a.ipv4_addr,
                        a.eni_id,
                        short(&k.container_id, wide),
                        column(a),
                        k.if_name
                    );
                }
            }
        }
        Cmd::Config => {
            let r = client.get_config(pb::GetConfigRequest {}).await.map_err(rpc)?.into_inner();
            if as_json {
                println!("{:#}", views::config(&r));
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
        Cmd::Health { .. } | Cmd::MaxPods { .. } | Cmd::SupportBundle { .. } | Cmd::Policy { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

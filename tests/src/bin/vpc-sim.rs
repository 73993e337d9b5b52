//! `vpc-sim`: local VPC emulation on LocalStack EC2.
//!
//! `vpc-sim up` builds a multi-node VPC in network namespaces (see `vpc_sim::sim`), prints `vpc-sim ready`
//! once every node's ipamd is SERVING, and on SIGINT/SIGTERM removes everything it made. `vpc-sim status`
//! shows what a running sim manages. `vpc-sim ipamd-demo` runs one node's ipamd against a throw-away VPC in LocalStack with the IMDS emulator,
//! shows the warm pool through `vpcctl`, hands out a few pod IPs, shows the pool again and cleans up.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use vpc_sim::fixture::{add_retrying, del};
use vpc_sim::imds::ImdsEmulator;
use vpc_sim::ipamd_proc::{Ipamd, sibling_binary};
use vpc_sim::localstack::{self, TestVpc};
use vpc_sim::netns::ip_in;
use vpc_sim::sim::{Sim, SimConfig, pods::Pod, record::SimRecord};

#[derive(Parser)]
#[command(name = "vpc-sim", version, about = "Local VPC emulation on LocalStack EC2")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the VPC, nodes and fabric; run ipamd on each node; stay in the foreground.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value = "t3.medium")]
        instance_type: String,
        #[arg(long, default_value_t = 1)]
        subnets: usize,
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
        /// Namespace name prefix: <prefix>-fabric, <prefix>-internet, <prefix>-node-<i>.
        #[arg(long, default_value = "vpcsim")]
        prefix: String,
        /// Extra ipamd settings for every node, KEY=VALUE (repeatable).
        #[arg(long = "ipamd-env")]
        ipamd_env: Vec<String>,
    },
    /// Run pods through the real CNI plugin chain, as a container runtime does.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Nodes, ENIs, links, rules and routes of a running sim.
    Status {
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
    },
    /// One node's ipamd on LocalStack: warm pool, a few allocations, clean-up.
    IpamdDemo {
        #[arg(long, default_value = "m5.large")]
        instance_type: String,
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Extra ipamd settings, KEY=VALUE (repeatable).
        #[arg(long = "ipamd-env")]
        ipamd_env: Vec<String>,
    },
}

#[derive(clap::Args)]
struct PodArgs {
    #[arg(long)]
    node: usize,
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "/run/vpc-sim")]
    state_dir: PathBuf,
}

impl PodArgs {
    fn pod(&self) -> Pod {
        Pod {
            state_dir: self.state_dir.clone(),
            node: self.node,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create the pod's sandbox and run CNI ADD; prints the result.
    Add(PodArgs),
    /// Run CNI DEL and remove the sandbox.
    Del(PodArgs),
    /// Run CNI CHECK.
    Check(PodArgs),
    /// Run a command inside the pod: `vpc-sim pod exec --node 0 --name web -- ping 10.0.0.9`.
    Exec {
        #[command(flatten)]
        pod: PodArgs,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

fn pod_cmd(cmd: PodCmd) -> Result<()> {
    match cmd {
        PodCmd::Add(a) => println!("{:#}", a.pod().add()?),
        PodCmd::Del(a) => a.pod().del(false)?,
        PodCmd::Check(a) => a.pod().check()?,
        PodCmd::Exec { pod, argv } => {
            let status = pod.pod().exec(&argv)?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}

fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--ipamd-env takes KEY=VALUE, got '{kv}'"))
        })
        .collect()
}

async fn up(cfg: SimConfig) -> Result<()> {
    if cfg.prefix.len() > 8 || !cfg.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--prefix must be 1-8 letters or digits, got '{}'", cfg.prefix);
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let sim = tokio::select! {
        r = Sim::up(cfg) => r?,
        _ = term.recv() => bail!("interrupted while starting (leftovers are removed by the next run)"),
        _ = int.recv() => bail!("interrupted while starting (leftovers are removed by the next run)"),
    };
    for (i, s) in sim.ipamd_sockets().iter().enumerate() {
        eprintln!("vpc-sim: node {i}: {} ipamd socket {}", sim.record.vpc.instance_ids[i], s.display());
    }
    println!("vpc-sim ready");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("vpc-sim: shutting down");
    sim.down().await;
    eprintln!("vpc-sim: removed every namespace, process and EC2 resource");
    Ok(())
}

fn status(state_dir: &std::path::Path) -> Result<()> {
    let rec = SimRecord::load(state_dir).with_context(|| format!("no running sim in {}", state_dir.display()))?;
    let names = vpc_sim::sim::fabric::Names { prefix: rec.prefix.clone() };
    println!("VPC {} ({}), subnets {:?}", rec.vpc.vpc_id, rec.vpc.vpc_cidr, rec.vpc.subnet_ids);
    for (i, inst) in rec.vpc.instance_ids.iter().enumerate() {
        let ns = names.node(i);
        println!("\n== node {i}: {inst} (netns {ns}, ipamd pid {:?})", rec.pids.get(i));
        for args in [&["-br", "link"][..], &["-br", "-4", "addr"], &["rule"], &["route", "show", "table", "all"]] {
            let out = ip_in(&ns, args).unwrap_or_else(|e| e.to_string());
            println!("-- ip {}", args.join(" "));
            for l in out.lines().filter(|l| !l.starts_with("local ") && !l.starts_with("broadcast ")) {
                println!("   {l}");
            }
        }
    }
    println!("\n== fabric ({}): routes", names.fabric());
    print!("{}", ip_in(&names.fabric(), &["route"]).unwrap_or_else(|e| e.to_string()));
    Ok(())
}

fn vpcctl(ipamd: &Ipamd, args: &[&str]) -> Result<()> {
    println!("\n$ vpcctl {}", args.join(" "));
    let status = Command::new(sibling_binary("vpcctl")).arg("--socket").arg(&ipamd.socket).args(args).status()?;
    if !status.success() {
        bail!("vpcctl {} failed: {status}", args.join(" "));
    }
    Ok(())
}

async fn ipamd_demo(instance_type: &str, pods: usize, env: &[String]) -> Result<()> {
    let ec2 = localstack::ec2_client();
    let tag = format!("demo-{}", std::process::id());
    let vpc = TestVpc::create(&ec2, &tag, "10.0.0.0/16", &["10.0.0.0/20"], instance_type, 1)
        .await
        .context("creating the demo VPC (is LocalStack running? scripts/localstack.sh start)")?;
    println!("LocalStack: {} with instance {} ({instance_type})", vpc.vpc_id, vpc.instance_ids[0]);
    let result = run_node(&ec2, &vpc, pods, env).await;
    let errors = vpc.destroy(&ec2).await;
    if !errors.is_empty() {
        eprintln!("clean-up left errors: {errors:?}");
    }
    println!("\ncleaned up {}", vpc.vpc_id);
    result
}

async fn run_node(ec2: &aws_sdk_ec2::Client, vpc: &TestVpc, pods: usize, env: &[String]) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let imds = ImdsEmulator::serve(listener, ec2.clone(), &vpc.instance_ids[0], localstack::REGION)?;
    let dir = tempfile::Builder::new().prefix("vpcsim-demo-").tempdir()?;
    let env = parse_env(env)?;
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut ipamd = Ipamd::spawn(dir.path(), &imds.endpoint(), &env)?;
    let took = ipamd.wait_serving(Duration::from_secs(60)).await?;
    println!("ipamd SERVING {} ms after start (IMDS emulator {})", took.as_millis(), imds.addr);
    vpcctl(&ipamd, &["status"])?;
    vpcctl(&ipamd, &["enis"])?;
    println!();
    for i in 0..pods {
        let r = add_retrying(&ipamd, &format!("demo-{i}"), Duration::from_secs(30)).await?;
        println!(
            "AddNetwork default/pod-demo-{i} -> {} on {} (device {}, route table {})",
            r.ipv4_addr, r.eni_id, r.device_number, r.route_table
        );
    }
    // The first pod left less than one ENI of free IPs: give the warm ENI a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    vpcctl(&ipamd, &["enis", "-o", "wide"])?;
    vpcctl(&ipamd, &["pods"])?;
    let r = del(&ipamd, "demo-0").await?;
    println!("\nDelNetwork pod-demo-0 -> released {} (cooling before reuse)", r.ipv4_addr);
    vpcctl(&ipamd, &["status"])?;
    ipamd.terminate().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up { nodes, instance_type, subnets, state_dir, prefix, ipamd_env } => {
            let ipamd_env = parse_env(&ipamd_env)?;
            up(SimConfig { nodes, instance_type, subnets, state_dir, prefix, ipamd_env }).await
        }
        Cmd::Status { state_dir } => status(&state_dir),
        Cmd::Pod { cmd } => pod_cmd(cmd),
        Cmd::IpamdDemo { instance_type, pods, ipamd_env } => ipamd_demo(&instance_type, pods, &ipamd_env).await,
    }
}

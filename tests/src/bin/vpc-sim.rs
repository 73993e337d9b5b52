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
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use vpc_sim::fixture::{add_retrying, del};
use vpc_sim::imds::ImdsEmulator;
use vpc_sim::ipamd_proc::{Ipamd, sibling_binary};
use vpc_sim::localstack::{self, TestVpc};
use vpc_sim::netns::ip_in;
use vpc_sim::sim::pods::{Pod, concurrently, percentiles, pod_ip};
use vpc_sim::sim::probe::Port;
use vpc_sim::sim::{Sim, SimConfig, record::SimRecord};

#[derive(Parser)]
#[command(name = "vpc-sim", version, about = "Local VPC emulation on LocalStack EC2")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the VPC, nodes and fabric; run ipamd on each node; stay in the foreground.
    Up(SimConfig),
    /// Run pods through the real CNI plugin chain, as a container runtime does.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Add N pods to one node of a running sim at once, then delete them at once; print ADD/DEL p50/p99.
    Bench {
        #[arg(long, default_value_t = 30)]
        pods: usize,
        #[arg(long, default_value_t = 0)]
        node: usize,
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
    },
    /// Whether a connection from one pod to another is answered (within 3 tries): exit 0 when it is, 1 when not
    /// (`--port tcp/80` or `udp/53`; the destination serves it with `pod add --serve` or a named port).
    Probe {
        /// NAMESPACE/POD
        #[arg(long)]
        from: String,
        /// NAMESPACE/POD
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "tcp/80")]
        port: Port,
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
    },
    /// The admin kubeconfig of a sim started with `up --kube` (or `--network-policy`).
    Kubeconfig {
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
    },
    /// (Internal) serve ports inside a pod's namespace until killed; `pod add --serve` starts it.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        port: Vec<Port>,
    },
    /// Nodes, ENIs, links, rules and routes of a running sim.
    Status {
        #[arg(long, default_value = "/run/vpc-sim")]
        state_dir: PathBuf,
    },
    /// The whole story on a fresh 2-node sim: pods on both nodes, cross-node pings, what the VPC fabric saw,
    /// what the internet host saw, the pools; then everything is removed.
    Demo {
        #[arg(long, default_value = "/run/vpc-sim-demo")]
        state_dir: PathBuf,
        #[arg(long, default_value = "vpcdemo")]
        prefix: String,
    },
    /// One node's ipamd on LocalStack: warm pool, a few allocations, clean-up.
    IpamdDemo {
        #[arg(long, default_value = "m5.large")]
        instance_type: String,
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Extra ipamd settings, KEY=VALUE (repeatable).
        #[arg(long = "ipamd-env", value_parser = vpc_sim::sim::parse_env_pair)]
        ipamd_env: Vec<(String, String)>,
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
    /// hostPort:containerPort (TCP) handed to portmap (repeatable).
    #[arg(long)]
    port: Vec<String>,
    /// With `up --kube`: the Pod object's labels, k=v,k=v.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    labels: std::collections::BTreeMap<String, String>,
    /// With `up --kube`: a named container port, name=port/proto (tcp or udp; repeatable). Served in the pod.
    #[arg(long = "named-port", value_parser = parse_named_port)]
    named_port: Vec<(String, u16, String)>,
    /// A port the pod serves ("ok" to each connection or datagram), tcp/80 or udp/53 (repeatable).
    #[arg(long)]
    serve: Vec<Port>,
}

fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("'{kv}' is not k=v"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn parse_named_port(s: &str) -> Result<(String, u16, String), String> {
    let bad = || format!("'{s}' is not name=port/proto (e.g. http=8080/tcp)");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port.parse().map_err(|_| bad())?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        _ => return Err(bad()),
    };
    Ok((name.to_string(), port, proto.to_string()))
}

impl PodArgs {
    fn pod(&self) -> Pod {
        let ports: Vec<Value> = self
            .port
            .iter()
            .filter_map(|p| {
                let (h, c) = p.split_once(':')?;
                let (h, c) = (h.parse::<u16>().ok()?, c.parse::<u16>().ok()?);
                Some(serde_json::json!({ "hostPort": h, "containerPort": c, "protocol": "tcp" }))
            })
            .collect();
        let runtime_config = if ports.is_empty() { Value::Null } else { serde_json::json!({ "portMappings": ports }) };
        Pod {
            state_dir: self.state_dir.clone(),
            node: self.node,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            runtime_config,
            sandbox: 0,
            labels: self.labels.clone(),
            named_ports: self.named_port.clone(),
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
        PodCmd::Add(a) => {
            let pod = a.pod();
            println!("{:#}", pod.add()?);
            let mut ports = a.serve.clone();
            ports.extend(a.named_port.iter().map(|(_, n, proto)| Port { udp: proto == "UDP", number: *n }));
            if !ports.is_empty() {
                start_servers(&pod, &ports)?;
            }
        }
        PodCmd::Del(a) => {
            stop_servers(&a.pod());
            a.pod().del(false)?
        }
        PodCmd::Check(a) => a.pod().check()?,
        PodCmd::Exec { pod, argv } => {
            let status = pod.pod().exec(&argv)?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}

/// Where a pod's server process id is kept.
fn servers_file(pod: &Pod) -> PathBuf {
    pod.state_dir.join(format!("node-{}/pods/{}_{}.servers", pod.node, pod.namespace, pod.name))
}

/// Serves `ports` in the pod from a process of its own (it outlives this command; `pod del` stops it).
fn start_servers(pod: &Pod, ports: &[Port]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--netns", &pod.netns()?]);
    for p in ports {
        cmd.args(["--port", &p.to_string()]);
    }
    // No inherited pipe: whoever reads this command's output must not wait on the server's.
    let null = std::process::Stdio::null;
    let child = cmd.stdin(null()).stdout(null()).stderr(null()).process_group(0).spawn()?;
    std::fs::write(servers_file(pod), child.id().to_string())?;
    let ns = pod.netns()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ports.iter().all(|p| vpc_sim::sim::probe::listening(&ns, *p)) {
        if std::time::Instant::now() > deadline {
            bail!("the pod's servers did not start listening on {ports:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn stop_servers(pod: &Pod) {
    let file = servers_file(pod);
    if let Some(pid) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let _ = std::fs::remove_file(file);
}

/// The pod `ns/name` of a running sim, on whichever node its namespace is.
fn find_pod(state_dir: &std::path::Path, key: &str) -> Result<Pod> {
    let (namespace, name) = key.split_once('/').with_context(|| format!("'{key}' is not NAMESPACE/POD"))?;
    let rec = SimRecord::load(state_dir).with_context(|| format!("no running sim in {}", state_dir.display()))?;
    for node in 0..rec.vpc.instance_ids.len() {
        let pod = Pod {
            state_dir: state_dir.to_path_buf(),
            node,
            namespace: namespace.into(),
            name: name.into(),
            ..Pod::default()
        };
        if vpc_sim::netns::exists(&pod.netns()?) {
            return Ok(pod);
        }
    }
    bail!("no pod {key} in the sim in {}", state_dir.display())
}

fn probe(state_dir: &std::path::Path, from: &str, to: &str, port: Port) -> Result<bool> {
    let (from, to) = (find_pod(state_dir, from)?, find_pod(state_dir, to)?);
    let addr = ip_in(&to.netns()?, &["-4", "-o", "addr", "show", "dev", "eth0"])?;
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .with_context(|| format!("{} has no IPv4 address", to.name))?
        .to_string();
    // Three tries, as a client would retry: a connection lost once right after a pod starts is not "unreachable".
    let netns = from.netns()?;
    let reached = (0..3).any(|i| {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        vpc_sim::sim::probe::reaches(&netns, &ip, port)
    });
    println!(
        "{} {port} from {}/{} to {}/{} ({ip})",
        if reached { "reached" } else { "not reached" },
        from.namespace,
        from.name,
        to.namespace,
        to.name
    );
    Ok(reached)
}

async fn demo(state_dir: PathBuf, prefix: String) -> Result<()> {
    let started = std::time::Instant::now();
    let cfg = SimConfig {
        nodes: 2,
        instance_type: "t3.medium".into(),
        subnets: 1,
        state_dir: state_dir.clone(),
        prefix,
        chain: true,
        ..SimConfig::default()
    };
    println!("== vpc-sim: 2 × t3.medium in a LocalStack VPC, one network namespace per node + the VPC fabric");
    let sim = Sim::up(cfg).await?;
    let result = demo_body(&sim, &state_dir).await;
    println!("\n== clean-up");
    sim.down().await;
    println!("removed every namespace, process and EC2 resource ({:.1} s in all)", started.elapsed().as_secs_f64());
    result
}

async fn demo_body(sim: &Sim, state_dir: &std::path::Path) -> Result<()> {
    let names = sim.cfg.names();
    let node_ips: Vec<String> = {
        let mut v = Vec::new();
        for i in &sim.record.vpc.instance_ids {
            v.push(localstack::node_enis(&sim.ec2, i).await?[0].primary_ip.clone());
        }
        v
    };
    println!("nodes: {} (node 0), {} (node 1); every ipamd SERVING", node_ips[0], node_ips[1]);
    println!("\n== 3 pods per node through the real vpc-cni plugin (chained with portmap and bandwidth)");
    let mut pods = Vec::new();
    for node in 0..2 {
        for i in 0..3 {
            let p = Pod {
                state_dir: state_dir.to_path_buf(),
                node,
                namespace: "demo".into(),
                name: format!("web-{node}-{i}"),
                ..Pod::default()
            };
            let r = p.add_retrying(Duration::from_secs(30))?;
            let ip = pod_ip(&r);
            println!(
                "  node {node}  demo/{:<9} {ip:<12} host veth {}",
                p.name,
                r["interfaces"][0]["name"].as_str().unwrap_or_default()
            );
            pods.push((p, ip));
        }
    }
    println!("\n== pod → pod across nodes (no overlay, no NAT)");
    for (a, b) in [(0, 3), (1, 4), (5, 2)] {
        let ok = vpc_sim::testkit::ping(&pods[a].0.netns()?, &pods[b].1);
        println!(
            "  {} ({}) → {} ({}): {}",
            pods[a].0.name,
            pods[a].1,
            pods[b].0.name,
            pods[b].1,
            if ok { "reply" } else { "LOST" }
        );
    }
    println!("\n== what the VPC fabric forwarded (its flow log): pod IPs, as VPC flow logs would show them");
    let pod_ips: Vec<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    for (s, d) in vpc_sim::sim::fabric::flows(&names)?.iter().filter(|(s, _)| pod_ips.contains(&s.to_string().as_str()))
    {
        println!("  {s:<12} → {d}");
    }
    println!("\n== pod → internet host {}", vpc_sim::sim::fabric::INTERNET_HOST);
    for (p, ip) in [&pods[0], &pods[3]] {
        let seen = vpc_sim::testkit::tcp_peer_seen(&names.internet(), vpc_sim::sim::fabric::INTERNET_HOST, &p.netns()?)
            .map_err(anyhow::Error::msg)?;
        println!("  {} ({ip}): the internet host sees {seen} (node {} primary IP, SNAT)", p.name, p.node);
    }
    for (i, socket) in sim.ipamd_sockets().iter().enumerate() {
        println!("\n== node {i} pool");
        let status = Command::new(sibling_binary("vpcctl")).arg("--socket").arg(socket).args(["enis"]).status()?;
        if !status.success() {
            bail!("vpcctl failed on node {i}");
        }
    }
    for (p, _) in &pods {
        p.del(false)?;
    }
    Ok(())
}

fn bench(pods: usize, node: usize, state_dir: PathBuf) -> Result<()> {
    let pods: Vec<Pod> = (0..pods)
        .map(|i| Pod {
            state_dir: state_dir.clone(),
            node,
            namespace: "bench".into(),
            name: format!("b{i}"),
            ..Pod::default()
        })
        .collect();
    let patience = Duration::from_secs(60);
    let start = std::time::Instant::now();
    let added = concurrently(&pods, patience, Pod::add);
    let add_wall = start.elapsed();
    let failed: Vec<String> = added.iter().filter_map(|(_, r)| r.as_ref().err().map(ToString::to_string)).collect();
    let (a50, a99, amax) = percentiles(added.iter().map(|(d, _)| *d).collect());
    let start = std::time::Instant::now();
    let deleted = concurrently(&pods, patience, |p| p.del(false));
    let del_wall = start.elapsed();
    let (d50, d99, dmax) = percentiles(deleted.iter().map(|(d, _)| *d).collect());
    println!("pods {} on node {node}", pods.len());
    println!(
        "ADD  p50 {a50:.1} ms  p99 {a99:.1} ms  max {amax:.1} ms  wall {:.1} ms  failed {}",
        add_wall.as_secs_f64() * 1e3,
        failed.len()
    );
    println!("DEL  p50 {d50:.1} ms  p99 {d99:.1} ms  max {dmax:.1} ms  wall {:.1} ms", del_wall.as_secs_f64() * 1e3);
    if !failed.is_empty() {
        bail!("{} ADDs failed, first: {}", failed.len(), failed[0]);
    }
    Ok(())
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

async fn ipamd_demo(instance_type: &str, pods: usize, env: &[(String, String)]) -> Result<()> {
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

async fn run_node(ec2: &aws_sdk_ec2::Client, vpc: &TestVpc, pods: usize, env: &[(String, String)]) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let imds = ImdsEmulator::serve(listener, ec2.clone(), &vpc.instance_ids[0], localstack::REGION)?;
    let dir = tempfile::Builder::new().prefix("vpcsim-demo-").tempdir()?;
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
        Cmd::Up(cfg) => up(cfg).await,
        Cmd::Status { state_dir } => status(&state_dir),
        Cmd::Pod { cmd } => pod_cmd(cmd),
        Cmd::Probe { from, to, port, state_dir } => {
            let reached = probe(&state_dir, &from, &to, port)?;
            std::process::exit(if reached { 0 } else { 1 });
        }
        Cmd::Kubeconfig { state_dir } => {
            let rec =
                SimRecord::load(&state_dir).with_context(|| format!("no running sim in {}", state_dir.display()))?;
            let kube = rec.kube.context("this sim runs without an API server (start it with `up --kube`)")?;
            println!("{}", kube.admin.display());
            Ok(())
        }
        Cmd::Serve { netns, port } => {
            let _servers: Vec<_> =
                port.iter().map(|p| vpc_sim::sim::probe::serve(&netns, *p)).collect::<Result<_, _>>()?;
            loop {
                std::thread::park();
            }
        }
        Cmd::Demo { state_dir, prefix } => demo(state_dir, prefix).await,
        Cmd::Bench { pods, node, state_dir } => bench(pods, node, state_dir),
        Cmd::IpamdDemo { instance_type, pods, ipamd_env } => ipamd_demo(&instance_type, pods, &ipamd_env).await,
    }
}

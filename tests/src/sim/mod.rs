//! `vpc-sim up`: a multi-node VPC on one Linux box. LocalStack holds the EC2 control plane; network namespaces
//! hold the nodes, the VPC fabric and an internet host; the sim keeps the namespaces in step with EC2 (ENI
//! hot-plug, VPC routes), serves IMDS and proxies EC2 inside each node, and runs the real ipamd in each node.

pub mod cluster;
pub mod fabric;
pub mod node;
pub mod pods;
pub mod probe;
pub mod record;
pub mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use ipnet::Ipv4Net;
use tokio::sync::Mutex;

use crate::ipamd_proc::Ipamd;
use crate::localstack::{self, TestVpc};
use crate::mac::mac_for_eni;
use fabric::{AttachedEni, FabricState, Names};
use record::SimRecord;

/// `vpc-sim up`'s settings (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    #[arg(long, default_value = "t3.medium")]
    pub instance_type: String,
    /// Node subnets (at least one per zone).
    #[arg(long, default_value_t = 1)]
    pub subnets: usize,
    #[arg(long, default_value = "/run/vpc-sim")]
    pub state_dir: PathBuf,
    /// Namespace name prefix: <prefix>-fabric, <prefix>-internet, <prefix>-node-<i>.
    #[arg(long, default_value = "vpcsim")]
    pub prefix: String,
    /// Extra ipamd settings for every node, KEY=VALUE (repeatable).
    #[arg(long = "ipamd-env", value_parser = parse_env_pair)]
    pub ipamd_env: Vec<(String, String)>,
    /// Chain portmap and bandwidth after vpc-cni in the nodes' conflist.
    #[arg(long)]
    pub chain: bool,
    /// Availability zones: node `i` is in zone `i % zones` (each zone has its own node subnet).
    #[arg(long, default_value_t = 1)]
    pub zones: usize,
    /// Start the local Kubernetes API server (scripts/kube-apiserver.sh), register a Node per sim node and point
    /// every ipamd at it as the DaemonSet's ServiceAccount; `pod add|del` keep Pod objects in step.
    #[arg(long)]
    pub kube: bool,
    /// Custom networking (implies --kube): per zone a pod subnet, a security group and an ENIConfig named after
    /// the zone, selected with ENI_CONFIG_LABEL_DEF=topology.kubernetes.io/zone.
    #[arg(long)]
    pub custom_networking: bool,
    /// NetworkPolicy enforcement on every node (implies --kube): ipamd's ENABLE_NETWORK_POLICY=true.
    #[arg(long)]
    pub network_policy: bool,
    /// ipamd installs the plugin and the conflist itself once SERVING (into `node-<i>/cni/bin` and
    /// `node-<i>/cni/net.d`, as the DaemonSet does on a node) instead of the sim writing the conflist.
    #[arg(long)]
    pub install_cni: bool,
    /// Milliseconds an IP or prefix must have been in EC2 before the node's IMDS lists it (EC2's IMDS takes
    /// seconds after an assign; 0: at once).
    #[arg(long, default_value_t = 0)]
    pub imds_lag_ms: u64,
}

/// KEY=VALUE.
pub fn parse_env_pair(kv: &str) -> Result<(String, String), String> {
    kv.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("takes KEY=VALUE, got '{kv}'"))
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 2,
            instance_type: "t3.medium".into(),
            subnets: 1,
            state_dir: "/run/vpc-sim".into(),
            prefix: "vpcsim".into(),
            ipamd_env: Vec::new(),
            chain: false,
            zones: 1,
            kube: false,
            custom_networking: false,
            network_policy: false,
            install_cni: false,
            imds_lag_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    LocalStack(#[from] localstack::LsError),
    #[error(transparent)]
    Ipamd(#[from] crate::ipamd_proc::ProcError),
    #[error("{0}")]
    Other(String),
}

impl SimConfig {
    pub fn names(&self) -> Names {
        Names { prefix: self.prefix.clone() }
    }
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.state_dir.join(format!("node-{i}"))
    }
    fn zones(&self) -> usize {
        self.zones.clamp(1, 6)
    }
    fn node_subnets(&self) -> usize {
        self.subnets.max(self.zones()).max(1)
    }
    pub fn zone(&self, z: usize) -> String {
        format!("{}{}", localstack::REGION, (b'a' + (z % self.zones()) as u8) as char)
    }
    /// (CIDR, zone) of every subnet: the node subnets (subnet `k` in zone `k % zones`), then with custom
    /// networking one pod subnet per zone.
    fn subnet_layout(&self) -> Vec<(String, String)> {
        let nodes = self.node_subnets();
        let pods = if self.custom_networking { self.zones() } else { 0 };
        (0..nodes + pods)
            .map(|k| (format!("10.0.{}.0/20", 16 * k), self.zone(if k < nodes { k } else { k - nodes })))
            .collect()
    }
}

/// What EC2 says is attached to the sim's instances, in fabric terms.
pub async fn desired(
    ec2: &aws_sdk_ec2::Client,
    vpc: &TestVpc,
    subnets: &BTreeMap<String, Ipv4Net>,
) -> Result<Vec<AttachedEni>, localstack::LsError> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(&vpc.vpc_id).build())
        .send()
        .await
        .map_err(|e| localstack::LsError { op: "DescribeNetworkInterfaces", message: format!("{e:?}") })?;
    let mut want = Vec::new();
    for ni in out.network_interfaces() {
        let Some(att) = ni.attachment() else { continue };
        let Some(node) = vpc.instance_ids.iter().position(|i| Some(i.as_str()) == att.instance_id()) else {
            continue;
        };
        let (Some(id), Some(subnet)) = (ni.network_interface_id(), ni.subnet_id().and_then(|s| subnets.get(s))) else {
            continue;
        };
        let Some(primary_ip) = ni.private_ip_address().and_then(|s| s.parse().ok()) else { continue };
        want.push(AttachedEni {
            node,
            device: att.device_index().unwrap_or(0) as u32,
            eni_id: id.to_string(),
            mac: mac_for_eni(id),
            subnet: *subnet,
            primary_ip,
            // A delegated /28's addresses are routed to its ENI like secondary IPs.
            ips: ni
                .private_ip_addresses()
                .iter()
                .filter_map(|p| p.private_ip_address()?.parse().ok())
                .chain(
                    ni.ipv4_prefixes()
                        .iter()
                        .filter_map(|p| p.ipv4_prefix()?.parse::<Ipv4Net>().ok())
                        .flat_map(|p| ipamd::state::datastore::prefix_addresses(&p)),
                )
                .collect(),
        });
    }
    Ok(want)
}

/// Removes what a previous run with this state dir and prefix left behind (it may have crashed).
pub async fn clean_leftovers(cfg: &SimConfig, ec2: &aws_sdk_ec2::Client) {
    if let Some(rec) = SimRecord::load(&cfg.state_dir) {
        eprintln!("vpc-sim: cleaning up a previous run ({})", rec.vpc.vpc_id);
        rec.kill_processes();
        if let Some(k) = &rec.kube {
            k.teardown().await;
        }
        let _ = rec.vpc.destroy(ec2).await;
    }
    for ns in crate::netns::list(&cfg.prefix) {
        let _ = crate::netns::delete(&ns);
    }
    SimRecord::remove(&cfg.state_dir);
}

/// A running simulation.
pub struct Sim {
    pub cfg: SimConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub record: SimRecord,
    nodes: Vec<node::NodeRuntime>,
    ipamds: Vec<Ipamd>,
    /// Each node's ipamd once SERVING, restarted when it exits.
    supervised: Vec<supervisor::Supervised>,
    launches: Vec<supervisor::Launch>,
    sync_task: Option<tokio::task::JoinHandle<()>>,
    pub fabric: Arc<Mutex<FabricState>>,
    /// Every EC2 request of the sim and its nodes goes through it: it adds the prefix delegation LocalStack lacks.
    ec2_proxy: crate::ec2faults::Ec2FaultProxy,
}

impl Sim {
    /// Builds everything and returns once every ipamd is SERVING.
    pub async fn up(cfg: SimConfig) -> Result<Self, SimError> {
        let ec2_proxy = crate::ec2faults::Ec2FaultProxy::to_localstack()
            .await
            .map_err(|e| SimError::Other(format!("EC2 proxy: {e}")))?;
        let ec2 = localstack::ec2_client_at(&ec2_proxy.endpoint);
        clean_leftovers(&cfg, &ec2).await;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| SimError::Other(format!("state dir: {e}")))?;
        let layout = cfg.subnet_layout();
        let subnet_cidrs: Vec<String> = layout.iter().map(|(c, _)| c.clone()).collect();
        let zoned: Vec<(&str, String)> = layout.iter().map(|(c, z)| (c.as_str(), z.clone())).collect();
        let node_subnets: Vec<usize> = (0..cfg.nodes).map(|i| i % cfg.zones()).collect();
        let vpc =
            TestVpc::create_zoned(&ec2, &cfg.prefix, "10.0.0.0/16", &zoned, &cfg.instance_type, &node_subnets).await?;
        let names = cfg.names();
        let record = SimRecord { prefix: cfg.prefix.clone(), vpc, pids: Vec::new(), kube: None };
        record.save(&cfg.state_dir);
        let mut sim = Self {
            cfg: cfg.clone(),
            ec2: ec2.clone(),
            record,
            nodes: Vec::new(),
            ipamds: Vec::new(),
            supervised: Vec::new(),
            launches: Vec::new(),
            sync_task: None,
            fabric: Arc::default(),
            ec2_proxy,
        };
        if let Err(e) = sim.build(&names, &subnet_cidrs).await {
            sim.down().await;
            return Err(e);
        }
        sim.record.pids = sim.ipamds.iter().filter_map(Ipamd::pid).collect();
        sim.record.save(&cfg.state_dir);
        let launches = std::mem::take(&mut sim.launches);
        sim.supervised = sim.ipamds.drain(..).zip(launches).map(|(p, l)| supervisor::Supervised::new(p, l)).collect();
        Ok(sim)
    }

    /// The Kubernetes side (`--kube`): API server, Nodes, and with custom networking per zone a pod subnet,
    /// a security group and an ENIConfig.
    async fn build_kube(&mut self) -> Result<(), SimError> {
        let cfg = self.cfg.clone();
        let mut zone_pods = Vec::new();
        if cfg.custom_networking {
            let first_pod_subnet = cfg.node_subnets();
            for z in 0..cfg.zones() {
                let sg_name = format!("{}-pods-{}", cfg.prefix, cfg.zone(z));
                let sg = self.record.vpc.add_security_group(&self.ec2, &sg_name).await?;
                self.record.save(&cfg.state_dir);
                zone_pods.push(cluster::ZonePods {
                    zone: cfg.zone(z),
                    subnet_id: self.record.vpc.subnet_ids[first_pod_subnet + z].clone(),
                    security_group: sg,
                });
            }
        }
        let node_zones: Vec<String> = (0..cfg.nodes).map(|i| cfg.zone(i)).collect();
        let k = cluster::SimKube::setup(&cfg.prefix, &node_zones, &cfg.instance_type, &zone_pods)
            .await
            .map_err(|e| SimError::Other(format!("--kube: {e}")))?;
        self.record.kube = Some(k);
        self.record.save(&cfg.state_dir);
        Ok(())
    }

    async fn build(&mut self, names: &Names, subnet_cidrs: &[String]) -> Result<(), SimError> {
        let vpc = self.record.vpc.clone();
        fabric::create(names)?;
        let subnets: BTreeMap<String, Ipv4Net> =
            vpc.subnet_ids.iter().cloned().zip(subnet_cidrs.iter().map(|c| c.parse().expect("subnet CIDR"))).collect();
        if self.cfg.kube || self.cfg.custom_networking || self.cfg.network_policy {
            self.build_kube().await?;
        }
        // Inside each node, LocalStack's address leads to the sim's EC2 proxy.
        let host = |url: &str| url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let mut upstreams = vec![(host(&localstack::endpoint()), host(&self.ec2_proxy.endpoint))];
        upstreams.extend(self.record.kube.as_ref().map(|k| (k.server_addr.clone(), k.server_addr.clone())));
        for (i, instance) in vpc.instance_ids.iter().enumerate() {
            let node = node::NodeRuntime::start(names, i, instance, &self.ec2, &upstreams).await?;
            node.imds.set_address_lag(Duration::from_millis(self.cfg.imds_lag_ms));
            self.nodes.push(node);
        }
        // Plug the primary ENIs before ipamd looks for them, then keep following EC2.
        let want = desired(&self.ec2, &vpc, &subnets).await?;
        self.fabric.lock().await.sync(names, &want)?;
        self.sync_task =
            Some(tokio::spawn(sync_loop(self.ec2.clone(), vpc.clone(), subnets, names.clone(), self.fabric.clone())));
        for i in 0..vpc.instance_ids.len() {
            let dir = self.cfg.node_dir(i);
            std::fs::create_dir_all(&dir).map_err(|e| SimError::Other(format!("{}: {e}", dir.display())))?;
            let mut env: Vec<(&str, String)> = vec![
                ("IPAMD_HOST_NETWORK", "true".into()),
                ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:4566".into()),
                ("METRICS_BIND_ADDR", "127.0.0.1:61678".into()),
            ];
            if self.cfg.install_cni {
                env.extend([
                    ("CNI_INSTALL_BIN_DIR", dir.join(node::CNI_BIN).display().to_string()),
                    ("CNI_INSTALL_CONF_DIR", dir.join(node::CNI_CONF).display().to_string()),
                    ("AWS_VPC_K8S_PLUGIN_LOG_FILE", dir.join("plugin.log").display().to_string()),
                    ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "debug".into()),
                    ("ENABLE_BANDWIDTH_PLUGIN", self.cfg.chain.to_string()),
                ]);
            } else {
                node::write_conflist(&dir, self.cfg.chain).map_err(|e| SimError::Other(format!("conflist: {e}")))?;
            }
            if let Some(k) = &self.record.kube {
                env.extend(k.ipamd_env(i, self.cfg.custom_networking, self.cfg.network_policy));
            }
            env.extend(self.cfg.ipamd_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let ns = names.node(i);
            let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let launch = supervisor::Launch { node: i, netns: ns, dir, env };
            self.ipamds.push(launch.spawn()?);
            self.launches.push(launch);
        }
        for ipamd in &mut self.ipamds {
            ipamd.wait_serving(Duration::from_secs(90)).await?;
        }
        if self.cfg.install_cni {
            // ipamd installs right after SERVING; "ready" means a pod can be added.
            for i in 0..self.ipamds.len() {
                let conflist = self.cfg.node_dir(i).join(node::CNI_CONF).join(ipamd::node::install::CONFLIST);
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !conflist.exists() {
                    if std::time::Instant::now() > deadline {
                        return Err(SimError::Other(format!("ipamd did not install {}", conflist.display())));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    }

    pub fn ipamd_sockets(&self) -> Vec<PathBuf> {
        self.supervised.iter().map(|s| s.socket.clone()).chain(self.ipamds.iter().map(|i| i.socket.clone())).collect()
    }

    /// Stops everything and removes every namespace, process and EC2 resource the sim made.
    pub async fn down(mut self) {
        if let Some(t) = self.sync_task.take() {
            t.abort();
        }
        for s in self.supervised.drain(..) {
            s.stop().await;
        }
        for ipamd in self.ipamds.drain(..) {
            ipamd.terminate().await;
        }
        self.nodes.clear();
        let names = self.cfg.names();
        let mut namespaces: BTreeSet<String> = crate::netns::list(&self.cfg.prefix).into_iter().collect();
        namespaces.extend([names.fabric(), names.internet()]);
        for ns in namespaces {
            if let Err(e) = crate::netns::delete(&ns) {
                eprintln!("vpc-sim: {e}");
            }
        }
        if let Some(k) = &self.record.kube {
            k.teardown().await;
        }
        for e in self.record.vpc.destroy(&self.ec2).await {
            eprintln!("vpc-sim: clean-up: {e}");
        }
        SimRecord::remove(&self.cfg.state_dir);
    }
}

async fn sync_loop(
    ec2: aws_sdk_ec2::Client,
    vpc: TestVpc,
    subnets: BTreeMap<String, Ipv4Net>,
    names: Names,
    fabric: Arc<Mutex<FabricState>>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match desired(&ec2, &vpc, &subnets).await {
            Ok(want) => {
                let mut f = fabric.lock().await;
                match f.sync(&names, &want) {
                    Ok((0, 0)) => {}
                    Ok((added, removed)) => {
                        eprintln!("vpc-sim: hot-plug: {added} ENI link(s) added, {removed} removed")
                    }
                    Err(e) => eprintln!("vpc-sim: fabric sync: {e}"),
                }
            }
            Err(e) => eprintln!("vpc-sim: {e}"),
        }
    }
}

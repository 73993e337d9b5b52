//! ipamd configuration: every setting is an environment variable (names shared with aws-vpc-cni where the
//! concept is shared) and also a `--kebab-case` flag. Invalid values are rejected at start with an error that
//! names the variable and the accepted values.
//!
//! May use: nothing else of ipamd.

use std::path::PathBuf;

use clap::Parser;

pub mod aws;
mod values;

use values::*;
pub use values::{BindAddr, CidrList, LogFile, LogFormat, Mark, PolicyMode, RandomizeSnat, Tags, UidList};

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "ipamd", version, about = "VPC-native pod IP address management daemon")]
pub struct Config {
    /// Keep this many ENIs' worth of free IPs (ignored when WARM_IP_TARGET or MINIMUM_IP_TARGET is set).
    #[arg(long, env = "WARM_ENI_TARGET", default_value_t = 1, value_parser = parse_count)]
    pub warm_eni_target: u32,
    /// Keep this many free IPs; overrides WARM_ENI_TARGET.
    #[arg(long, env = "WARM_IP_TARGET", value_parser = parse_count)]
    pub warm_ip_target: Option<u32>,
    /// Keep at least this many IPs in total.
    #[arg(long, env = "MINIMUM_IP_TARGET", value_parser = parse_count)]
    pub minimum_ip_target: Option<u32>,
    /// Whole free /28 prefixes to keep (prefix mode; default 1; WARM_IP_TARGET / MINIMUM_IP_TARGET override it).
    #[arg(long, env = "WARM_PREFIX_TARGET", value_parser = parse_count)]
    pub warm_prefix_target: Option<u32>,
    /// Allocate /28 prefixes instead of single secondary IPs.
    #[arg(long, env = "ENABLE_PREFIX_DELEGATION", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_prefix_delegation: bool,
    /// Cap on ENIs (default: the instance type's limit; 0 or less is no cap, as in aws-vpc-cni).
    #[arg(long, env = "MAX_ENI", value_parser = parse_max_eni, allow_negative_numbers = true)]
    pub max_eni: Option<i64>,
    /// Surge: when pods ask for IPs faster than the warm pool refills, ask EC2 for all of them in one step
    /// (bounded by the ENIs' free slots and the instance limit), then decay back to the targets.
    #[arg(long, env = "IPAMD_SURGE", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ipamd_surge: bool,
    /// Seconds a released IP rests before it is handed out again.
    #[arg(long, env = "IP_COOLDOWN_PERIOD", default_value_t = 30, value_parser = parse_seconds)]
    pub ip_cooldown_period: u64,
    /// MTU of the ENIs.
    #[arg(long, env = "AWS_VPC_ENI_MTU", default_value_t = 9001, value_parser = parse_mtu)]
    pub aws_vpc_eni_mtu: u32,
    /// MTU of pod interfaces (default: AWS_VPC_ENI_MTU).
    #[arg(long, env = "POD_MTU", value_parser = parse_mtu)]
    pub pod_mtu: Option<u32>,
    /// No SNAT on the node for traffic leaving the VPC.
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXTERNALSNAT", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub aws_vpc_k8s_cni_externalsnat: bool,
    /// Comma list of CIDRs never SNATed (an entry that is not an IPv4 CIDR is skipped with a warning, as
    /// aws-vpc-cni does).
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", default_value = "", value_parser = parse_cidr_list)]
    pub aws_vpc_k8s_cni_exclude_snat_cidrs: CidrList,
    /// SNAT source-port selection.
    #[arg(long, env = "AWS_VPC_K8S_CNI_RANDOMIZESNAT", value_enum, default_value = "prng", ignore_case = true)]
    pub aws_vpc_k8s_cni_randomizesnat: RandomizeSnat,
    /// Route replies of connections that came in through the primary ENI (NodePort, hostPort) back out of it,
    /// for pods on secondary ENIs too (a connmark and a `fwmark lookup main` rule at priority 1024).
    #[arg(long, env = "AWS_VPC_CNI_NODE_PORT_SUPPORT", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub aws_vpc_cni_node_port_support: bool,
    /// The connmark bit of those connections (0x80; decimal, 0x hex, 0o octal or 0b binary, 1 to 0xffffffff):
    /// change it when another component (kube-proxy 0xc000, Calico 0xffff0000) uses 0x80.
    #[arg(long, env = "AWS_VPC_K8S_CNI_CONNMARK", default_value = "0x80", value_parser = parse_mark)]
    pub aws_vpc_k8s_cni_connmark: Mark,
    /// Comma list of CIDRs pods reach through the primary ENI whichever ENI they are on (`to <cidr> lookup main`
    /// at priority 1535); an entry that is not an IPv4 CIDR is skipped with a warning, as aws-vpc-cni does.
    #[arg(long, env = "AWS_EXTERNAL_SERVICE_CIDRS", default_value = "", value_parser = parse_cidr_list)]
    pub aws_external_service_cidrs: CidrList,
    /// Take pods' ENIs from the node's ENIConfig.
    #[arg(long, env = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub aws_vpc_k8s_cni_custom_network_cfg: bool,
    /// New ENIs go to the subnet with the most free addresses among the node's own and those of its VPC and zone
    /// tagged `kubernetes.io/role/cni=1`; a subnet tagged `kubernetes.io/role/cni=0` is never used. Custom
    /// networking (an ENIConfig) takes precedence.
    #[arg(long, env = "ENABLE_SUBNET_DISCOVERY", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_subnet_discovery: bool,
    /// Node label naming the node's ENIConfig (operators often use topology.kubernetes.io/zone).
    #[arg(long, env = "ENI_CONFIG_LABEL_DEF", default_value = "k8s.amazonaws.com/eniConfig")]
    pub eni_config_label_def: String,
    /// Node annotation naming the node's ENIConfig (looked at before ENI_CONFIG_LABEL_DEF).
    #[arg(long, env = "ENI_CONFIG_ANNOTATION_DEF", default_value = "k8s.amazonaws.com/eniConfig")]
    pub eni_config_annotation_def: String,
    /// This node's name (downward API); the Kubernetes features need it.
    #[arg(long, env = "MY_NODE_NAME")]
    pub my_node_name: Option<String>,
    /// This ipamd pod's name (downward API): the reporting instance of its Events.
    #[arg(long, env = "MY_POD_NAME")]
    pub my_pod_name: Option<String>,
    /// Seconds an allocation's pod must be gone from the API server before its IP is released (0: never).
    #[arg(long, env = "IPAMD_POD_GC_GRACE", default_value_t = 120, value_parser = parse_seconds)]
    pub ipamd_pod_gc_grace: u64,
    /// Host veth name prefix written into the conflist (1 to 4 letters or digits; not eth, lo or vlan).
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni", value_parser = parse_veth_prefix)]
    pub aws_vpc_k8s_cni_vethprefix: String,
    /// The plugin's log file, written into the conflist.
    #[arg(long, env = "AWS_VPC_K8S_PLUGIN_LOG_FILE", default_value = "/var/log/vpc-cni/plugin.log")]
    pub aws_vpc_k8s_plugin_log_file: PathBuf,
    /// The plugin's log level, written into the conflist.
    #[arg(long, env = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL", default_value = "info", value_parser = parse_plugin_log_level)]
    pub aws_vpc_k8s_plugin_log_level: String,
    /// Chain the reference bandwidth plugin (pod ingress/egress shaping annotations).
    #[arg(long, env = "ENABLE_BANDWIDTH_PLUGIN", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_bandwidth_plugin: bool,
    /// Host CNI bin directory the plugin is installed into once ipamd is SERVING (unset: no install).
    #[arg(long, env = "CNI_INSTALL_BIN_DIR")]
    pub cni_install_bin_dir: Option<PathBuf>,
    /// Host CNI conf directory the conflist is written into once the plugin is installed (unset: no install).
    #[arg(long, env = "CNI_INSTALL_CONF_DIR")]
    pub cni_install_conf_dir: Option<PathBuf>,
    /// aws-vpc-cni's name for CNI_INSTALL_BIN_DIR (with it alone, the conflist goes to /host/etc/cni/net.d,
    /// aws-vpc-cni's default).
    #[arg(long, env = "HOST_CNI_BIN_PATH")]
    pub host_cni_bin_path: Option<PathBuf>,
    /// aws-vpc-cni's name for CNI_INSTALL_CONF_DIR (with it alone, the plugin goes to /host/opt/cni/bin).
    #[arg(long, env = "HOST_CNI_CONFDIR_PATH")]
    pub host_cni_confdir_path: Option<PathBuf>,
    /// Where the reference plugins chained after vpc-cni (portmap, bandwidth) are copied from.
    #[arg(long, env = "CNI_PLUGINS_SOURCE_DIR", default_value = "/usr/lib/cni")]
    pub cni_plugins_source_dir: PathBuf,
    /// Cluster name: tagged on ENIs, scopes leaked-ENI cleanup.
    #[arg(long, env = "CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    /// JSON map of extra tags for the ENIs ipamd creates.
    #[arg(long, env = "ADDITIONAL_ENI_TAGS", default_value = "{}", value_parser = parse_tags)]
    pub additional_eni_tags: Tags,
    /// Do not delete ENIs this node created and left unattached (e.g. after a crash).
    #[arg(long, env = "DISABLE_LEAKED_ENI_CLEANUP", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub disable_leaked_eni_cleanup: bool,
    /// EC2's address (aws-vpc-cni's name; a proxy or a private endpoint), e.g. https://ec2.us-east-1.amazonaws.com;
    /// wins over the AWS SDK's AWS_ENDPOINT_URL_EC2.
    #[arg(long, env = "AWS_EC2_ENDPOINT", value_parser = parse_url)]
    pub aws_ec2_endpoint: Option<String>,
    /// Serve only the ENIs and IPs already attached to the node: no ENI is created, attached, detached or deleted
    /// and no IP or prefix assigned or released (aws-vpc-cni's switch; the operator provisions them). Every
    /// attached ENI with an IPv4 address is served unless tagged `node.k8s.amazonaws.com/no_manage=true`.
    #[arg(long, env = "DISABLE_NETWORK_RESOURCE_PROVISIONING", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub disable_network_resource_provisioning: bool,
    /// No EC2 call at all: ENIs, IPs, prefixes and subnets are read from IMDS (implies
    /// DISABLE_NETWORK_RESOURCE_PROVISIONING; tags cannot be read, so every ENI with an IPv4 address is served).
    #[arg(long, env = "ENABLE_IMDS_ONLY_MODE", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_imds_only_mode: bool,
    /// Enforce Kubernetes NetworkPolicy on this node's pods (nftables table `inet vpc-cni-netpol`; needs
    /// MY_NODE_NAME and the ClusterRole's list/watch on networkpolicies and namespaces). aws-vpc-cni switches its
    /// policy agent with the Helm value enableNetworkPolicy.
    #[arg(long, env = "ENABLE_NETWORK_POLICY", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_network_policy: bool,
    /// With ENABLE_NETWORK_POLICY=true, aws-vpc-cni's modes: `standard`, a pod is open until a policy selects it;
    /// `strict`, a pod that no policy selects is denied both ways, and an ADD made before the API server's lists
    /// are in fails (the runtime retries it) rather than start the pod open.
    #[arg(long, env = "NETWORK_POLICY_ENFORCING_MODE", default_value = "standard", value_parser = parse_policy_mode)]
    pub network_policy_enforcing_mode: PolicyMode,
    /// Patch each pod's `vpc.amazonaws.com/pod-ips` annotation with its IP on ADD (needs MY_NODE_NAME and the
    /// ClusterRole's `patch pods`); a patch that fails fails the ADD, which the runtime retries.
    #[arg(long, env = "ANNOTATE_POD_IP", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub annotate_pod_ip: bool,
    /// Attach and free ENIs and IPs while the Node is cordoned too (aws-vpc-cni's default false: a cordoned
    /// node's pool is held as it is; its pods are still served).
    #[arg(long, env = "AWS_MANAGE_ENIS_NON_SCHEDULABLE", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub aws_manage_enis_non_schedulable: bool,
    /// The API server's address (aws-vpc-cni's name), e.g. https://ABCD.gr7.us-west-2.eks.amazonaws.com: used
    /// instead of the in-cluster address or KUBECONFIG's server, with the same credentials.
    #[arg(long, env = "CLUSTER_ENDPOINT", value_parser = parse_url)]
    pub cluster_endpoint: Option<String>,
    /// Set net.ipv4.tcp_early_demux=0 on the node at start (aws-vpc-cni's init container did): kubelet TCP
    /// probes of pods on secondary ENIs with security groups need it.
    #[arg(long, env = "DISABLE_TCP_EARLY_DEMUX", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub disable_tcp_early_demux: bool,
    /// Client-side EC2 request rate (requests per second).
    #[arg(long, env = "EC2_API_QPS", default_value_t = 5.0, value_parser = parse_qps)]
    pub ec2_api_qps: f64,
    /// Client-side EC2 burst size.
    #[arg(long, env = "EC2_API_BURST", default_value_t = 20, value_parser = parse_positive)]
    pub ec2_api_burst: u32,
    /// gRPC Unix socket.
    #[arg(long, env = "IPAMD_SOCKET", default_value = "/run/vpc-cni/ipamd.sock")]
    pub ipamd_socket: PathBuf,
    /// Directory of the `ipam.json` checkpoint.
    #[arg(long, env = "IPAMD_STATE_DIR", default_value = "/run/vpc-cni")]
    pub ipamd_state_dir: PathBuf,
    /// Where the node's sysctls are written (`net/ipv4/ip_forward`, `net/ipv4/conf/<primary>/rp_filter`): the
    /// DaemonSet mounts the node's /proc/sys/net writable under /host/proc/sys, as /proc/sys is read-only in an
    /// unprivileged container.
    #[arg(long, env = "IPAMD_PROC_SYS", default_value = "/proc/sys")]
    pub ipamd_proc_sys: PathBuf,
    /// aws-node's checkpoint, imported at ipamd's first start on a node that ran aws-vpc-cni (`off`: never).
    #[arg(long, env = "IPAMD_AWS_NODE_CHECKPOINT", default_value = "/var/run/aws-node/ipam.json")]
    pub ipamd_aws_node_checkpoint: String,
    /// Peer uids allowed on the socket besides root (comma list).
    #[arg(long, env = "IPAMD_ALLOWED_UIDS", default_value = "", value_parser = parse_uids)]
    pub ipamd_allowed_uids: UidList,
    /// Configure the node's links, routes, rules and sysctls for secondary ENIs (false: leave the host alone,
    /// e.g. when ipamd runs outside a node for tests).
    #[arg(long, env = "IPAMD_HOST_NETWORK", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ipamd_host_network: bool,
    /// Seconds between warm-pool reconciles when nothing asks for one sooner.
    #[arg(long, env = "IPAMD_RECONCILE_INTERVAL", default_value_t = 5, value_parser = parse_positive_seconds)]
    pub ipamd_reconcile_interval: u64,
    /// Seconds between full EC2 syncs (DescribeNetworkInterfaces); in between, each reconcile compares IMDS
    /// with what EC2 last said and asks EC2 only on a change ipamd did not make. Jittered by up to +20 %.
    #[arg(long, env = "IPAMD_EC2_RESYNC_INTERVAL", default_value_t = 1800, value_parser = parse_positive_seconds)]
    pub ipamd_ec2_resync_interval: u64,
    /// Prometheus metrics listener (`off` disables it).
    #[arg(long, env = "METRICS_BIND_ADDR", default_value = "0.0.0.0:61678", value_parser = parse_bind)]
    pub metrics_bind_addr: BindAddr,
    /// No metrics listener at all (aws-vpc-cni's switch; the same as METRICS_BIND_ADDR=off).
    #[arg(long, env = "DISABLE_METRICS", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub disable_metrics: bool,
    /// No introspection service on ipamd's socket (`vpcctl status`, `enis`, `pods`, `config`, `events`):
    /// only the plugin's requests and the health probes are served.
    #[arg(long, env = "DISABLE_INTROSPECTION", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub disable_introspection: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", ignore_case = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `ipamd=debug`; default: AWS_VPC_K8S_CNI_LOGLEVEL's
    /// level, else info).
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// aws-vpc-cni's log level (debug, info, warn, error or fatal, any case; anything else is debug, as in
    /// aws-vpc-cni, with a warning); LOG_LEVEL wins when both are set.
    #[arg(long, env = "AWS_VPC_K8S_CNI_LOGLEVEL")]
    pub aws_vpc_k8s_cni_loglevel: Option<String>,
    /// Where ipamd's log goes as well as stderr (aws-vpc-cni's name): `stderr` (only there), `stdout`, or an
    /// absolute file path (its directory is created; rotated at 100 MiB, one old copy kept as `<path>.1`).
    #[arg(long, env = "AWS_VPC_K8S_CNI_LOG_FILE", value_parser = parse_log_file)]
    pub aws_vpc_k8s_cni_log_file: Option<LogFile>,
    /// What the start should warn about once logging is up: aws-vpc-cni variables set that have no effect,
    /// skipped entries of a CIDR list, an unknown aws log level.
    #[arg(skip)]
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Why the configuration is not usable; each message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] clap::Error),
    #[error("{var}: {message}")]
    Unsupported { var: &'static str, message: String },
}

impl Config {
    /// Reads flags and environment variables, then checks the combination.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cfg = Self::try_parse_from(args)?;
        cfg.resolve_aliases()?;
        cfg.validate()?;
        cfg.warnings = aws::check(|name| std::env::var(name).ok())?.0;
        cfg.warnings.extend(cfg.log_filter().1);
        let lists = [
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", &cfg.aws_vpc_k8s_cni_exclude_snat_cidrs),
            ("AWS_EXTERNAL_SERVICE_CIDRS", &cfg.aws_external_service_cidrs),
        ];
        let skipped: Vec<String> = lists
            .iter()
            .flat_map(|(var, list)| {
                list.1.iter().map(move |s| format!("{var}: '{s}' is not an IPv4 CIDR: skipped, as aws-vpc-cni does"))
            })
            .collect();
        cfg.warnings.extend(skipped);
        Ok(cfg)
    }

    /// aws-vpc-cni's names for settings ipamd also has under its own: the same value under both is fine,
    /// different values are refused.
    fn resolve_aliases(&mut self) -> Result<(), ConfigError> {
        let pairs: [(&'static str, &'static str, _, _, &str); 2] = [
            (
                "CNI_INSTALL_BIN_DIR",
                "HOST_CNI_BIN_PATH",
                &mut self.cni_install_bin_dir,
                &self.host_cni_bin_path,
                "/host/opt/cni/bin",
            ),
            (
                "CNI_INSTALL_CONF_DIR",
                "HOST_CNI_CONFDIR_PATH",
                &mut self.cni_install_conf_dir,
                &self.host_cni_confdir_path,
                "/host/etc/cni/net.d",
            ),
        ];
        let aws_set = self.host_cni_bin_path.is_some() || self.host_cni_confdir_path.is_some();
        for (ours, theirs, own, aws, aws_default) in pairs {
            match (own.as_ref(), aws) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ConfigError::Unsupported {
                        var: theirs,
                        message: format!(
                            "'{}' differs from {ours}='{}' (the same setting); accepted: one of them, or both equal",
                            b.display(),
                            a.display()
                        ),
                    });
                }
                (None, Some(b)) => *own = Some(b.clone()),
                // Only one of aws-vpc-cni's pair set: the other has aws-vpc-cni's default.
                (None, None) if aws_set => *own = Some(PathBuf::from(aws_default)),
                _ => {}
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.enable_prefix_delegation {
            // As in aws-vpc-cni: a pool that keeps nothing warm would attach an ENI and wait for IMDS on pod start.
            if self.ip_target_mode() {
                if self.warm_ip_target.unwrap_or(0) == 0 && self.minimum_ip_target.unwrap_or(0) == 0 {
                    return Err(ConfigError::Unsupported {
                        var: "WARM_IP_TARGET",
                        message: "WARM_IP_TARGET and MINIMUM_IP_TARGET both 0 are not supported with \
                                  ENABLE_PREFIX_DELEGATION=true; accepted: either of them at least 1"
                            .into(),
                    });
                }
            } else if self.warm_prefix_target == Some(0) {
                return Err(ConfigError::Unsupported {
                    var: "WARM_PREFIX_TARGET",
                    message: "0 is not supported with ENABLE_PREFIX_DELEGATION=true; accepted: 1 or more, or set \
                              WARM_IP_TARGET / MINIMUM_IP_TARGET instead"
                        .into(),
                });
            }
        }
        if self.aws_vpc_k8s_cni_custom_network_cfg && self.node_name().is_none() {
            return Err(ConfigError::Unsupported {
                var: "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
                message: "true needs MY_NODE_NAME (the node's ENIConfig is named on its Node object); accepted: \
                          false, or true with MY_NODE_NAME set"
                    .into(),
            });
        }
        if self.network_policy_enforcing_mode == PolicyMode::Strict && !self.enable_network_policy {
            return Err(ConfigError::Unsupported {
                var: "NETWORK_POLICY_ENFORCING_MODE",
                message: "strict needs ENABLE_NETWORK_POLICY=true (nothing would isolate the pods otherwise); \
                          accepted: standard, or strict with ENABLE_NETWORK_POLICY=true"
                    .into(),
            });
        }
        if self.enable_network_policy && self.node_name().is_none() {
            return Err(ConfigError::Unsupported {
                var: "ENABLE_NETWORK_POLICY",
                message: "true needs MY_NODE_NAME (policies come from the API server); accepted: false, or true with \
                          MY_NODE_NAME set"
                    .into(),
            });
        }
        if self.annotate_pod_ip && self.node_name().is_none() {
            return Err(ConfigError::Unsupported {
                var: "ANNOTATE_POD_IP",
                message: "true needs MY_NODE_NAME (the API server is used only with it); accepted: false, or true \
                          with MY_NODE_NAME set"
                    .into(),
            });
        }
        if self.cni_install_bin_dir.is_some() != self.cni_install_conf_dir.is_some() {
            return Err(ConfigError::Unsupported {
                var: if self.cni_install_bin_dir.is_some() { "CNI_INSTALL_CONF_DIR" } else { "CNI_INSTALL_BIN_DIR" },
                message: "CNI_INSTALL_BIN_DIR and CNI_INSTALL_CONF_DIR go together; accepted: both set, or neither"
                    .into(),
            });
        }
        for (var, value) in [
            ("ENI_CONFIG_LABEL_DEF", &self.eni_config_label_def),
            ("ENI_CONFIG_ANNOTATION_DEF", &self.eni_config_annotation_def),
        ] {
            if value.trim().is_empty() || value.contains(char::is_whitespace) {
                return Err(ConfigError::Unsupported {
                    var,
                    message: format!(
                        "'{value}' is not accepted; accepted: a label/annotation key such as topology.kubernetes.io/zone"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The aws-node checkpoint to import, unless `off` or empty.
    pub fn aws_node_checkpoint(&self) -> Option<PathBuf> {
        let p = self.ipamd_aws_node_checkpoint.trim();
        (!p.is_empty() && !p.eq_ignore_ascii_case("off")).then(|| PathBuf::from(p))
    }

    /// MY_NODE_NAME when set and not blank.
    pub fn node_name(&self) -> Option<&str> {
        self.my_node_name.as_deref().map(str::trim).filter(|n| !n.is_empty())
    }

    /// The NodePort connmark, unless AWS_VPC_CNI_NODE_PORT_SUPPORT=false.
    pub fn nodeport_mark(&self) -> Option<u32> {
        self.aws_vpc_cni_node_port_support.then_some(self.aws_vpc_k8s_cni_connmark.0)
    }

    /// MAX_ENI when it caps anything (0 or less: no cap, as in aws-vpc-cni).
    pub fn max_eni(&self) -> Option<u32> {
        self.max_eni.filter(|n| *n > 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Whether ipamd may change the node's ENIs and IPs in EC2 (not with DISABLE_NETWORK_RESOURCE_PROVISIONING
    /// or ENABLE_IMDS_ONLY_MODE).
    pub fn provisioning(&self) -> bool {
        !self.disable_network_resource_provisioning && !self.enable_imds_only_mode
    }

    /// The metrics listener's address, unless DISABLE_METRICS or METRICS_BIND_ADDR=off.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_bind_addr.0.filter(|_| !self.disable_metrics)
    }

    /// The log filter: LOG_LEVEL, else AWS_VPC_K8S_CNI_LOGLEVEL's level, else info; and a warning when
    /// AWS_VPC_K8S_CNI_LOGLEVEL is not a level aws-vpc-cni knows (it then logs at debug, as aws-vpc-cni does).
    pub fn log_filter(&self) -> (String, Option<String>) {
        if let Some(l) = self.log_level.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            return (l.to_string(), None);
        }
        let Some(aws) = self.aws_vpc_k8s_cni_loglevel.as_deref().map(str::trim).filter(|l| !l.is_empty()) else {
            return ("info".into(), None);
        };
        match aws.to_ascii_lowercase().as_str() {
            l @ ("debug" | "info" | "warn" | "error") => (l.to_string(), None),
            "fatal" => ("error".into(), None),
            _ => (
                "debug".into(),
                Some(format!(
                    "AWS_VPC_K8S_CNI_LOGLEVEL='{aws}' is not a level (accepted: debug, info, warn, error, fatal): \
                     logging at debug, as aws-vpc-cni does"
                )),
            ),
        }
    }

    /// The pod MTU: POD_MTU, else the ENI MTU.
    pub fn effective_pod_mtu(&self) -> u32 {
        self.pod_mtu.unwrap_or(self.aws_vpc_eni_mtu)
    }

    /// Prefix mode's WARM_PREFIX_TARGET (default 1), or `None` in secondary-IP mode.
    pub fn prefix_mode_target(&self) -> Option<u32> {
        self.enable_prefix_delegation.then(|| self.warm_prefix_target.unwrap_or(1))
    }

    /// Whether the warm pool counts single IPs (WARM_IP_TARGET / MINIMUM_IP_TARGET) rather than whole ENIs.
    pub fn ip_target_mode(&self) -> bool {
        self.warm_ip_target.is_some() || self.minimum_ip_target.is_some()
    }

    /// What `vpcctl config` shows: every setting (see [`Config::entries`]) and every other aws-vpc-cni variable
    /// with its value in `env`, each as (name, value, fate).
    pub fn shown(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(String, String, String)> {
        let ours = self.entries().into_iter().map(|(n, v)| {
            let fate = aws::fate_of(&n).unwrap_or_else(|| "vpc-cni".into());
            (n, v, fate)
        });
        let theirs = aws::AWS_VARIABLES
            .iter()
            .filter(|v| v.fate != aws::Fate::Honoured)
            .map(|v| (v.name.to_string(), env(v.name).unwrap_or_default(), aws::fate_of(v.name).unwrap_or_default()));
        ours.chain(theirs).collect()
    }

    /// Every setting as (ENV_NAME, value), in the order the definition above lists them, for `vpcctl config`.
    /// Generated from the definition itself (each flag's env name, each field's value as it serializes), so a
    /// new setting shows up without anyone listing it; an unset optional setting shows as empty, except
    /// POD_MTU, which shows the MTU pods get.
    pub fn entries(&self) -> Vec<(String, String)> {
        use clap::CommandFactory;
        let serde_json::Value::Object(values) = serde_json::to_value(self).expect("the configuration serializes")
        else {
            unreachable!("a struct serializes to an object")
        };
        Self::command()
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_string_lossy().into_owned();
                let value = match values.get(arg.get_id().as_str()) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => String::new(),
                    // 5.0 shows as 5, as an operator writes it.
                    Some(serde_json::Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
                    Some(other) => other.to_string(),
                };
                let value = match env.as_str() {
                    "POD_MTU" => self.effective_pod_mtu().to_string(),
                    "LOG_LEVEL" => self.log_filter().0,
                    _ => value,
                };
                Some((env, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

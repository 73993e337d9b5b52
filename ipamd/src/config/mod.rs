//! ipamd configuration: every setting is an environment variable (names shared with aws-vpc-cni where the
//! concept is shared) and also a `--kebab-case` flag. Invalid values are rejected at start with an error that
//! names the variable and the accepted values.
//!
//! May use: nothing else of ipamd.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ipnet::Ipv4Net;

/// SNAT source-port selection, as aws-vpc-cni's `AWS_VPC_K8S_CNI_RANDOMIZESNAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RandomizeSnat {
    None,
    Hashrandom,
    Prng,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Parser)]
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
    /// Cap on ENIs (default: the instance type's limit).
    #[arg(long, env = "MAX_ENI", value_parser = parse_positive)]
    pub max_eni: Option<u32>,
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
    /// Comma list of CIDRs never SNATed.
    #[arg(long, env = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", default_value = "", value_parser = parse_cidr_list)]
    pub aws_vpc_k8s_cni_exclude_snat_cidrs: CidrList,
    /// SNAT source-port selection.
    #[arg(long, env = "AWS_VPC_K8S_CNI_RANDOMIZESNAT", value_enum, default_value = "prng", ignore_case = true)]
    pub aws_vpc_k8s_cni_randomizesnat: RandomizeSnat,
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
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", ignore_case = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `ipamd=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Parsed `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Ipv4Net>);

/// Parsed `ADDITIONAL_ENI_TAGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(pub BTreeMap<String, String>);

/// Parsed `IPAMD_ALLOWED_UIDS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList(pub Vec<u32>);

/// Parsed `METRICS_BIND_ADDR`: `None` is `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr(pub Option<SocketAddr>);

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
        let cfg = Self::try_parse_from(args)?;
        cfg.validate()?;
        Ok(cfg)
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

    /// The settings as (ENV_NAME, value) pairs, for `vpcctl config` and the start-up log.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        fn opt<T: ToString>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let cidrs = self.aws_vpc_k8s_cni_exclude_snat_cidrs.0.iter().map(|c| c.to_string());
        vec![
            ("WARM_ENI_TARGET", self.warm_eni_target.to_string()),
            ("WARM_IP_TARGET", opt(self.warm_ip_target)),
            ("MINIMUM_IP_TARGET", opt(self.minimum_ip_target)),
            ("WARM_PREFIX_TARGET", opt(self.warm_prefix_target)),
            ("ENABLE_PREFIX_DELEGATION", self.enable_prefix_delegation.to_string()),
            ("MAX_ENI", opt(self.max_eni)),
            ("IPAMD_SURGE", self.ipamd_surge.to_string()),
            ("IP_COOLDOWN_PERIOD", self.ip_cooldown_period.to_string()),
            ("AWS_VPC_ENI_MTU", self.aws_vpc_eni_mtu.to_string()),
            ("POD_MTU", self.effective_pod_mtu().to_string()),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", self.aws_vpc_k8s_cni_externalsnat.to_string()),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", cidrs.collect::<Vec<_>>().join(",")),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", format!("{:?}", self.aws_vpc_k8s_cni_randomizesnat).to_lowercase()),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", self.aws_vpc_k8s_cni_custom_network_cfg.to_string()),
            ("ENABLE_SUBNET_DISCOVERY", self.enable_subnet_discovery.to_string()),
            ("ENI_CONFIG_LABEL_DEF", self.eni_config_label_def.clone()),
            ("ENI_CONFIG_ANNOTATION_DEF", self.eni_config_annotation_def.clone()),
            ("MY_NODE_NAME", opt(self.my_node_name.as_ref())),
            ("MY_POD_NAME", opt(self.my_pod_name.as_ref())),
            ("IPAMD_POD_GC_GRACE", self.ipamd_pod_gc_grace.to_string()),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", self.aws_vpc_k8s_cni_vethprefix.clone()),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE", self.aws_vpc_k8s_plugin_log_file.display().to_string()),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", self.aws_vpc_k8s_plugin_log_level.clone()),
            ("ENABLE_BANDWIDTH_PLUGIN", self.enable_bandwidth_plugin.to_string()),
            ("CNI_INSTALL_BIN_DIR", opt(self.cni_install_bin_dir.as_ref().map(|p| p.display()))),
            ("CNI_INSTALL_CONF_DIR", opt(self.cni_install_conf_dir.as_ref().map(|p| p.display()))),
            ("CNI_PLUGINS_SOURCE_DIR", self.cni_plugins_source_dir.display().to_string()),
            ("CLUSTER_NAME", self.cluster_name.clone()),
            ("ADDITIONAL_ENI_TAGS", serde_json::to_string(&self.additional_eni_tags.0).unwrap_or_default()),
            ("DISABLE_LEAKED_ENI_CLEANUP", self.disable_leaked_eni_cleanup.to_string()),
            ("EC2_API_QPS", self.ec2_api_qps.to_string()),
            ("EC2_API_BURST", self.ec2_api_burst.to_string()),
            ("IPAMD_SOCKET", self.ipamd_socket.display().to_string()),
            ("IPAMD_STATE_DIR", self.ipamd_state_dir.display().to_string()),
            ("IPAMD_AWS_NODE_CHECKPOINT", self.ipamd_aws_node_checkpoint.clone()),
            ("IPAMD_PROC_SYS", self.ipamd_proc_sys.display().to_string()),
            ("IPAMD_ALLOWED_UIDS", self.ipamd_allowed_uids.0.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
            ("IPAMD_RECONCILE_INTERVAL", self.ipamd_reconcile_interval.to_string()),
            ("IPAMD_EC2_RESYNC_INTERVAL", self.ipamd_ec2_resync_interval.to_string()),
            ("METRICS_BIND_ADDR", self.metrics_bind_addr.0.map(|a| a.to_string()).unwrap_or_else(|| "off".into())),
            ("LOG_FORMAT", format!("{:?}", self.log_format).to_lowercase()),
            ("LOG_LEVEL", self.log_level.clone()),
        ]
    }
}

/// Go's strconv.ParseBool spellings, which aws-vpc-cni users already write.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("'{other}' is not a boolean; accepted: true or false")),
    }
}

/// aws-vpc-cni's rule: at most 4 characters and none of the kernel's own interface prefixes; ours also keeps
/// the name to letters and digits, as the plugin requires.
fn parse_veth_prefix(s: &str) -> Result<String, String> {
    let p = s.trim();
    if p.is_empty()
        || p.len() > 4
        || !p.chars().all(|c| c.is_ascii_alphanumeric())
        || ["eth", "lo", "vlan"].contains(&p)
    {
        return Err(format!("'{s}' is not accepted; accepted: 1 to 4 letters or digits, not eth, lo or vlan"));
    }
    Ok(p.to_string())
}

fn parse_plugin_log_level(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    match l.as_str() {
        "debug" | "info" | "warn" | "error" => Ok(l),
        _ => Err(format!("'{s}' is not accepted; accepted: debug, info, warn or error")),
    }
}

fn parse_count(s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| format!("'{s}' is not a whole number; accepted: 0 or more"))
}

fn parse_positive(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: a whole number of 1 or more")),
    }
}

fn parse_seconds(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("'{s}' is not a number of seconds; accepted: 0 or more"))
}

fn parse_positive_seconds(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: a whole number of seconds, 1 or more")),
    }
}

fn parse_mtu(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (576..=9001).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: an MTU from 576 to 9001")),
    }
}

fn parse_qps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("'{s}' is not accepted; accepted: a number of requests per second above 0")),
    }
}

fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
                format!("'{p}' is not an IPv4 CIDR; accepted: a comma list like 10.1.0.0/16,192.168.0.0/24")
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CidrList)
}

fn parse_tags(s: &str) -> Result<Tags, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Tags::default());
    }
    let map: BTreeMap<String, String> = serde_json::from_str(s)
        .map_err(|e| format!("not a JSON object of string values ({e}); accepted: e.g. {{\"team\":\"net\"}}"))?;
    if let Some(k) = map.keys().find(|k| k.starts_with("k8s.amazonaws.com") || k.starts_with("aws:")) {
        return Err(format!("tag key '{k}' is reserved; accepted: keys not starting with aws: or k8s.amazonaws.com"));
    }
    Ok(Tags(map))
}

fn parse_uids(s: &str) -> Result<UidList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().map_err(|_| format!("'{p}' is not a uid; accepted: a comma list of numeric uids")))
        .collect::<Result<Vec<_>, _>>()
        .map(UidList)
}

fn parse_bind(s: &str) -> Result<BindAddr, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(BindAddr(None));
    }
    s.parse::<SocketAddr>()
        .map(|a| BindAddr(Some(a)))
        .map_err(|_| format!("'{s}' is not accepted; accepted: host:port such as 0.0.0.0:61678, or off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(std::iter::once("ipamd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_aws_vpc_cni() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.warm_eni_target, 1);
        assert_eq!(c.warm_ip_target, None);
        assert_eq!(c.ip_cooldown_period, 30);
        assert_eq!(c.effective_pod_mtu(), 9001);
        assert_eq!(c.aws_vpc_k8s_cni_randomizesnat, RandomizeSnat::Prng);
        assert!(!c.ip_target_mode());
    }

    #[test]
    fn bad_value_names_the_variable_and_the_accepted_values() {
        let err = parse(&["--warm-ip-target", "many"]).unwrap_err().to_string();
        assert!(err.contains("WARM_IP_TARGET"), "{err}");
        assert!(err.contains("accepted"), "{err}");
        let err = parse(&["--aws-vpc-k8s-cni-externalsnat", "yes"]).unwrap_err().to_string();
        assert!(err.contains("AWS_VPC_K8S_CNI_EXTERNALSNAT") && err.contains("true or false"), "{err}");
        let err = parse(&["--enable-prefix-delegation", "true", "--warm-prefix-target", "0"]).unwrap_err().to_string();
        assert!(err.starts_with("WARM_PREFIX_TARGET") && err.contains("accepted"), "{err}");
        let err = parse(&["--enable-prefix-delegation", "true", "--warm-ip-target", "0", "--minimum-ip-target", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("WARM_IP_TARGET") && err.contains("accepted"), "{err}");
        assert_eq!(parse(&["--enable-prefix-delegation", "true"]).unwrap().prefix_mode_target(), Some(1));
        assert_eq!(parse(&["--warm-prefix-target", "3"]).unwrap().prefix_mode_target(), None);
        let err = parse(&["--aws-vpc-k8s-cni-custom-network-cfg", "true"]).unwrap_err().to_string();
        assert!(err.starts_with("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG") && err.contains("MY_NODE_NAME"), "{err}");
        assert!(parse(&["--aws-vpc-k8s-cni-custom-network-cfg", "true", "--my-node-name", "n1"]).is_ok());
        let err = parse(&["--eni-config-label-def", " "]).unwrap_err().to_string();
        assert!(err.starts_with("ENI_CONFIG_LABEL_DEF"), "{err}");
        for bad in ["eth", "lo", "vlan", "toolong", "e-n"] {
            let err = parse(&["--aws-vpc-k8s-cni-vethprefix", bad]).unwrap_err().to_string();
            assert!(err.contains("AWS_VPC_K8S_CNI_VETHPREFIX") && err.contains("not eth, lo or vlan"), "{err}");
        }
        let err = parse(&["--cni-install-bin-dir", "/opt/cni/bin"]).unwrap_err().to_string();
        assert!(err.starts_with("CNI_INSTALL_CONF_DIR"), "{err}");
        let err = parse(&["--aws-vpc-k8s-plugin-log-level", "loud"]).unwrap_err().to_string();
        assert!(err.contains("AWS_VPC_K8S_PLUGIN_LOG_LEVEL") && err.contains("debug, info"), "{err}");
        let err = parse(&["--aws-vpc-eni-mtu", "100"]).unwrap_err().to_string();
        assert!(err.contains("AWS_VPC_ENI_MTU") && err.contains("576"), "{err}");
    }

    #[test]
    fn lists_and_maps_parse() {
        let c = parse(&[
            "--aws-vpc-k8s-cni-exclude-snat-cidrs",
            "10.9.0.0/16, 192.168.1.7/24",
            "--additional-eni-tags",
            r#"{"team":"net"}"#,
            "--ipamd-allowed-uids",
            "1000,1001",
            "--metrics-bind-addr",
            "off",
            "--warm-ip-target",
            "5",
        ])
        .unwrap();
        let cidrs: Vec<String> = c.aws_vpc_k8s_cni_exclude_snat_cidrs.0.iter().map(|n| n.to_string()).collect();
        assert_eq!(cidrs, ["10.9.0.0/16", "192.168.1.0/24"]);
        assert_eq!(c.additional_eni_tags.0.get("team").map(String::as_str), Some("net"));
        assert_eq!(c.ipamd_allowed_uids.0, vec![1000, 1001]);
        assert_eq!(c.metrics_bind_addr.0, None);
        assert!(c.ip_target_mode());
        let err = parse(&["--additional-eni-tags", r#"{"aws:x":"y"}"#]).unwrap_err().to_string();
        assert!(err.contains("ADDITIONAL_ENI_TAGS") && err.contains("reserved"), "{err}");
    }
}

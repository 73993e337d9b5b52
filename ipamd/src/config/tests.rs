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

#[test]
fn vpcctl_config_lists_every_setting_from_the_definition() {
    use clap::CommandFactory;
    let cfg = parse(&[]).unwrap();
    let entries = cfg.entries();
    let fields = match serde_json::to_value(&cfg).unwrap() {
        serde_json::Value::Object(m) => m.len(),
        _ => unreachable!(),
    };
    let args: Vec<String> = Config::command()
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| a.get_id().to_string())
        .collect();
    let without_env: Vec<&String> = args
        .iter()
        .filter(|id| Config::command().get_arguments().any(|a| a.get_id() == id.as_str() && a.get_env().is_none()))
        .collect();
    assert!(without_env.is_empty(), "settings without an environment variable: {without_env:?}");
    assert_eq!(args.len(), fields, "every field is a setting");
    assert_eq!(entries.len(), fields, "vpcctl config shows every setting: {entries:?}");
    let names: std::collections::BTreeSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), entries.len(), "no setting twice");
    let get = |n: &str| entries.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("IPAMD_HOST_NETWORK"), Some("true"));
    assert_eq!(get("EC2_API_QPS"), Some("5"));
    assert_eq!(get("WARM_IP_TARGET"), Some(""));
    assert_eq!(get("POD_MTU"), Some("9001"), "the MTU pods get");
    assert_eq!(get("METRICS_BIND_ADDR"), Some("0.0.0.0:61678"));
    assert_eq!(get("AWS_VPC_K8S_CNI_RANDOMIZESNAT"), Some("prng"));
    let set = parse(&[
        "--aws-vpc-k8s-cni-exclude-snat-cidrs",
        "10.1.0.0/16,192.168.0.0/24",
        "--ipamd-allowed-uids",
        "0,1000",
    ])
    .unwrap();
    let e = set.entries();
    let get = |n: &str| e.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS").as_deref(), Some("10.1.0.0/16,192.168.0.0/24"));
    assert_eq!(get("IPAMD_ALLOWED_UIDS").as_deref(), Some("0,1000"));
}

#[test]
fn ec2_api_qps_whose_wait_cannot_be_represented_is_refused_by_name() {
    for bad in ["1e-300", "0", "-1", "NaN", "inf", "1e9"] {
        let e = parse(&[&format!("--ec2-api-qps={bad}")]).unwrap_err().to_string();
        assert!(e.contains("EC2_API_QPS") || e.contains("--ec2-api-qps"), "{bad}: {e}");
        assert!(e.contains("accepted: requests per second from 0.001 to 100000"), "{bad}: {e}");
    }
    assert_eq!(parse(&["--ec2-api-qps", "0.001"]).unwrap().ec2_api_qps, 0.001);
}

/// aws-vpc-cni's names and values for what ipamd also has: MAX_ENI of 0 or less is no cap, the install
/// directories under aws' names (aws' default for the other of the pair), DISABLE_METRICS, aws' log levels,
/// a bad EXCLUDE_SNAT_CIDRS entry skipped and said.
#[test]
fn aws_vpc_cni_names_and_values_are_honoured() {
    for (v, want) in [("0", None), ("-1", None), ("3", Some(3))] {
        assert_eq!(parse(&["--max-eni", v]).unwrap().max_eni(), want, "MAX_ENI={v}");
    }
    assert!(parse(&["--max-eni", "many"]).unwrap_err().to_string().contains("MAX_ENI"));

    let c = parse(&["--host-cni-bin-path", "/host/bin"]).unwrap();
    assert_eq!(c.cni_install_bin_dir.as_deref(), Some(std::path::Path::new("/host/bin")));
    assert_eq!(c.cni_install_conf_dir.as_deref(), Some(std::path::Path::new("/host/etc/cni/net.d")));
    let same = parse(&["--host-cni-bin-path", "/b", "--cni-install-bin-dir", "/b", "--cni-install-conf-dir", "/c"]);
    assert!(same.is_ok());
    let err = parse(&["--host-cni-confdir-path", "/x", "--cni-install-bin-dir", "/b", "--cni-install-conf-dir", "/c"])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("HOST_CNI_CONFDIR_PATH: '/x' differs from CNI_INSTALL_CONF_DIR='/c'"), "{err}");
    assert_eq!(parse(&[]).unwrap().cni_install_bin_dir, None, "no install unless asked");

    assert!(parse(&[]).unwrap().metrics_addr().is_some());
    assert_eq!(parse(&["--disable-metrics", "true"]).unwrap().metrics_addr(), None);

    let level = |args: &[&str]| parse(args).unwrap().log_filter();
    assert_eq!(level(&[]), ("info".into(), None));
    assert_eq!(level(&["--aws-vpc-k8s-cni-loglevel", "DEBUG"]), ("debug".into(), None));
    assert_eq!(level(&["--aws-vpc-k8s-cni-loglevel", "Fatal"]).0, "error");
    assert_eq!(level(&["--aws-vpc-k8s-cni-loglevel", "DEBUG", "--log-level", "warn"]), ("warn".into(), None));
    let (l, warn) = level(&["--aws-vpc-k8s-cni-loglevel", "loud"]);
    assert_eq!(l, "debug");
    assert!(warn.is_some_and(|w| w.contains("AWS_VPC_K8S_CNI_LOGLEVEL='loud'")));

    let c = parse(&["--aws-vpc-k8s-cni-exclude-snat-cidrs", "10.1.2.3/16, nope ,2600::/64,192.168.0.0/24"]).unwrap();
    let kept: Vec<String> = c.aws_vpc_k8s_cni_exclude_snat_cidrs.0.iter().map(ToString::to_string).collect();
    assert_eq!(kept, ["10.1.0.0/16", "192.168.0.0/24"]);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("'nope' is not an IPv4 CIDR: skipped"), "{:?}", c.warnings);
}

/// AWS_VPC_K8S_CNI_CONNMARK as aws-vpc-cni reads it (Go's base-0 integers) and AWS_VPC_CNI_NODE_PORT_SUPPORT.
#[test]
fn the_nodeport_connmark_and_its_switch() {
    assert_eq!(parse(&[]).unwrap().nodeport_mark(), Some(0x80));
    for (v, want) in [("0x4000", 0x4000), ("128", 128), ("0200", 0o200), ("0o200", 0o200), ("0b1", 1), ("0XFF", 255)] {
        assert_eq!(parse(&["--aws-vpc-k8s-cni-connmark", v]).unwrap().nodeport_mark(), Some(want), "{v}");
    }
    for bad in ["0", "-1", "0x100000000", "mark", ""] {
        let err = parse(&[&format!("--aws-vpc-k8s-cni-connmark={bad}")]).unwrap_err().to_string();
        assert!(err.contains("AWS_VPC_K8S_CNI_CONNMARK") && err.contains("accepted"), "{bad}: {err}");
    }
    assert_eq!(parse(&["--aws-vpc-cni-node-port-support", "false"]).unwrap().nodeport_mark(), None);
}

/// AWS_EXTERNAL_SERVICE_CIDRS: IPv4 CIDRs kept (normalised), anything else skipped and said, as aws-vpc-cni does.
#[test]
fn external_service_cidrs_keep_ipv4_and_skip_the_rest() {
    let c = parse(&["--aws-external-service-cidrs", "10.100.1.0/16,fd00::/8,bogus"]).unwrap();
    let kept: Vec<String> = c.aws_external_service_cidrs.0.iter().map(ToString::to_string).collect();
    assert_eq!(kept, ["10.100.0.0/16"]);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings.iter().all(|w| w.starts_with("AWS_EXTERNAL_SERVICE_CIDRS: '")), "{:?}", c.warnings);
}

/// AWS_EC2_ENDPOINT takes an http(s) URL; anything else is refused by name.
#[test]
fn the_ec2_endpoint_is_a_url() {
    let c = parse(&["--aws-ec2-endpoint", "https://ec2.us-east-1.amazonaws.com"]).unwrap();
    assert_eq!(c.aws_ec2_endpoint.as_deref(), Some("https://ec2.us-east-1.amazonaws.com"));
    for bad in ["ec2.us-east-1.amazonaws.com", "https://", "ftp://x"] {
        let err = parse(&["--aws-ec2-endpoint", bad]).unwrap_err().to_string();
        assert!(err.contains("AWS_EC2_ENDPOINT") && err.contains("http:// or https:// URL"), "{bad}: {err}");
    }
}

/// aws-vpc-cni's switches honoured in this round: their values as aws accepts them, refusals by name.
#[test]
fn aws_log_file_annotation_and_provisioning_switches() {
    assert_eq!(parse(&[]).unwrap().aws_vpc_k8s_cni_log_file, None);
    for (v, want) in [
        ("stderr", LogFile::Stderr),
        ("stdout", LogFile::Stdout),
        ("/host/var/log/aws-routed-eni/ipamd.log", LogFile::Path("/host/var/log/aws-routed-eni/ipamd.log".into())),
    ] {
        assert_eq!(parse(&["--aws-vpc-k8s-cni-log-file", v]).unwrap().aws_vpc_k8s_cni_log_file, Some(want));
    }
    for bad in ["ipamd.log", "/var/log/"] {
        let err = parse(&["--aws-vpc-k8s-cni-log-file", bad]).unwrap_err().to_string();
        assert!(err.contains("AWS_VPC_K8S_CNI_LOG_FILE") && err.contains("absolute file path"), "{err}");
    }
    let err = parse(&["--annotate-pod-ip", "true"]).unwrap_err().to_string();
    assert!(err.starts_with("ANNOTATE_POD_IP") && err.contains("MY_NODE_NAME"), "{err}");
    assert!(parse(&["--annotate-pod-ip", "true", "--my-node-name", "n1"]).is_ok());
    assert!(parse(&[]).unwrap().provisioning());
    assert!(!parse(&["--disable-network-resource-provisioning", "true"]).unwrap().provisioning());
    assert!(!parse(&["--enable-imds-only-mode", "true"]).unwrap().provisioning());
    assert!(!parse(&[]).unwrap().aws_manage_enis_non_schedulable, "aws' default");
    let err = parse(&["--cluster-endpoint", "api.example"]).unwrap_err().to_string();
    assert!(err.contains("CLUSTER_ENDPOINT") && err.contains("https://"), "{err}");
}

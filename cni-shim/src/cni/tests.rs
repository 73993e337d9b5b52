//! Protocol tests: what runtimes send and what they must get back, with no network access.

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| m.get(k).cloned()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"aws-cni","type":"vpc-cni","mtu":9001}"#;

#[test]
fn missing_or_bad_environment_is_code_4() {
    let get = env_of(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")]);
    assert_eq!(env(Command::Add, &get).unwrap_err().code, Code::InvalidEnv);
    assert_eq!(command(&env_of(&[("CNI_COMMAND", "FLY")])).unwrap_err().code, Code::InvalidEnv);
    assert_eq!(command(&env_of(&[])).unwrap_err().code, Code::InvalidEnv);
    let get = env_of(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]);
    assert_eq!(env(Command::Add, &get).unwrap_err().code, Code::InvalidEnv, "ADD needs CNI_NETNS");
    assert!(env(Command::Del, &get).is_ok(), "DEL may come after the netns is gone");
    let get = env_of(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "a-very-long-ifname0")]);
    assert_eq!(env(Command::Del, &get).unwrap_err().code, Code::InvalidEnv);
}

#[test]
fn cni_args_are_parsed_with_ignore_unknown() {
    let a = parse_args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1",
    )
    .unwrap();
    assert_eq!(a["K8S_POD_NAMESPACE"], "default");
    assert_eq!(a["K8S_POD_NAME"], "web-0");
    assert_eq!(a["K8S_POD_UID"], "u1");
    assert_eq!(parse_args("novalue").unwrap_err().code, Code::InvalidEnv);
}

#[test]
fn netconf_errors_carry_the_right_codes() {
    assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
    let old = CONF.replace("1.0.0", "0.2.0");
    assert_eq!(NetConf::parse(old.as_bytes()).unwrap_err().code, Code::IncompatibleVersion);
    let bad_mtu = CONF.replace("9001", "70000");
    assert_eq!(NetConf::parse(bad_mtu.as_bytes()).unwrap_err().code, Code::InvalidConfig);
    let bad_prefix = CONF.replace(r#""mtu":9001"#, r#""vethPrefix":"toolong""#);
    assert_eq!(NetConf::parse(bad_prefix.as_bytes()).unwrap_err().code, Code::InvalidConfig);
    let c = NetConf::parse(CONF.as_bytes()).unwrap();
    assert_eq!((c.veth_prefix(), c.socket().display().to_string()), ("eni", DEFAULT_SOCKET.to_string()));
    assert!(c.supports(Command::Check) && !c.supports(Command::Gc));
}

#[test]
fn host_veth_name_matches_aws_vpc_cni() {
    // aws-vpc-cni names the host veth prefix + the first 11 hex digits of sha1("<namespace>.<pod>"), e.g.
    // sha1("default.nginx") = c440f455693b69cd… → enic440f455693. The names below were computed outside this
    // code (Python's hashlib), so a wrong hash input or slice cannot agree with itself. A 4-character prefix
    // gives 15 characters, the kernel's limit for an interface name.
    for (prefix, namespace, pod, want) in [
        ("eni", "default", "nginx", "enic440f455693"),
        ("eni", "nginx", "default", "enidb51a53ea32"), // namespace first, not the pod's name
        ("eni", "kube-system", "coredns-7db6d8ff4d-x2x9k", "eni3e2638a6d41"),
        ("eni", "prod", "web-0", "eniaa960f0d82e"),
        ("vlan", "payments", "api-6b9f7c-qz4lm", "vlan48da7869d81"),
        // Calico's prefix: aws-vpc-cni chose this naming so that Calico's policy finds the pod's veth.
        ("cali", "default", "client-b6989bf87-2bgtc", "calic95a4947e07"),
    ] {
        assert_eq!(host_veth_name(prefix, namespace, pod), want, "prefix {prefix}, pod {namespace}/{pod}");
    }
}

#[test]
fn results_follow_the_requested_version_and_chain() {
    let r = AddResult {
        host_veth: "eni0123456789a".into(),
        host_mac: "aa:aa:aa:aa:aa:aa".into(),
        pod_ifname: "eth0".into(),
        pod_mac: "bb:bb:bb:bb:bb:bb".into(),
        netns: "/var/run/netns/p".into(),
        ip: "10.0.0.9".parse().unwrap(),
    };
    let v1 = r.to_json("1.1.0", None);
    assert_eq!(v1["ips"][0]["address"], "10.0.0.9/32");
    assert_eq!(v1["ips"][0]["interface"], 1);
    assert!(v1["ips"][0].get("version").is_none());
    assert_eq!(v1["interfaces"][1]["sandbox"], "/var/run/netns/p");
    let v03 = r.to_json("0.3.1", None);
    assert_eq!(v03["ips"][0]["version"], "4");
    let prev =
        serde_json::json!({"interfaces": [{"name": "x"}], "ips": [{"address": "192.168.0.2/24", "interface": 0}]});
    let chained = r.to_json("1.0.0", Some(&prev));
    assert_eq!(chained["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(chained["ips"][1]["interface"], 2);
    let conf: NetConf = serde_json::from_value(serde_json::json!({
        "cniVersion": "1.0.0", "name": "n", "type": "vpc-cni", "prevResult": v1
    }))
    .unwrap();
    assert_eq!(conf.prev_pod_ip(), Some("10.0.0.9".parse().unwrap()));
}

//! aws-vpc-cni's variables on the real ipamd binary (LocalStack, no namespaces): one asking for what is not
//! built stops the start with exit 2 and a message naming it (and no socket appears); the switches aws-node
//! users set are honoured (no metrics listener, no introspection, aws' log level and log file, EC2 reached at
//! AWS_EC2_ENDPOINT) while pods are still served;
//! `vpcctl config`'s GetConfig names every aws variable's fate.

use std::time::Duration;

use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::{NodeFixture, add_retrying};
use vpc_sim::ipamd_proc::Ipamd;

#[tokio::test]
async fn an_aws_variable_asking_for_what_is_not_built_stops_the_start_by_name() {
    let fx = NodeFixture::new("aws-refused", "t3.medium").await;
    for (var, value, says) in [
        ("ENABLE_IPv6", "true", "ENABLE_IPv6: 'true' asks for IPv6 pods"),
        // strict without the enforcer would leave pods open that the operator believes isolated.
        (
            "NETWORK_POLICY_ENFORCING_MODE",
            "strict",
            "NETWORK_POLICY_ENFORCING_MODE: strict needs ENABLE_NETWORK_POLICY=true",
        ),
        ("ENABLE_POD_ENI", "true", "ENABLE_POD_ENI: 'true' asks for security groups for pods"),
    ] {
        let dir = fx.dir.path().join(var);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ipamd = Ipamd::spawn(&dir, &fx.imds.endpoint(), &[(var, value.into())]).unwrap();
        let status = ipamd.wait_exit(Duration::from_secs(20)).await.expect("ipamd exits at start");
        let log = ipamd.log_text();
        assert_eq!(status.code(), Some(2), "{var}: {log}");
        assert!(log.contains(says) && log.contains("accepted:"), "{var}: {log}");
        assert!(!ipamd.socket.exists(), "{var}: nothing served");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn aws_nodes_switches_are_honoured_and_every_variable_has_a_fate_in_config() {
    let fx = NodeFixture::new("aws-honoured", "t3.medium").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = format!("127.0.0.1:{port}");
    // In a directory that does not exist yet, as /host/var/log/aws-routed-eni on a new node.
    let log_file = fx.dir.path().join("aws-routed-eni/ipamd.log");
    let env = [
        ("AWS_VPC_K8S_CNI_LOG_FILE", log_file.display().to_string()),
        ("METRICS_BIND_ADDR", metrics.clone()),
        ("DISABLE_METRICS", "true".into()),
        ("DISABLE_INTROSPECTION", "true".into()),
        ("LOG_LEVEL", String::new()),
        ("AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG".into()),
        ("ENABLE_NFTABLES", "true".into()),
        ("ENABLE_IPv6", "false".into()),
        ("MAX_ENI", "-1".into()),
        // Nothing listens at the SDK's address: EC2 is reached only through aws-vpc-cni's variable.
        ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9".into()),
        ("AWS_EC2_ENDPOINT", vpc_sim::localstack::endpoint()),
    ];
    let mut ipamd = Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &env).unwrap();
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");
    let pod = add_retrying(&ipamd, "c1", Duration::from_secs(30)).await.expect("pods are served");
    assert!(!pod.ipv4_addr.is_empty());
    let status = ipamd.introspection().await.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "DISABLE_INTROSPECTION: {status:?}");
    assert!(tokio::net::TcpStream::connect(&metrics).await.is_err(), "DISABLE_METRICS: {metrics} listens");
    let log = ipamd.log_text();
    assert!(log.contains("DEBUG"), "AWS_VPC_K8S_CNI_LOGLEVEL=DEBUG logs at debug");
    assert!(log.contains("ENABLE_NFTABLES=true has no effect"), "a no-op is said");
    let file = std::fs::read_to_string(&log_file).expect("AWS_VPC_K8S_CNI_LOG_FILE written");
    assert!(file.contains("SERVING") && file.contains("DEBUG"), "the file holds the log: {file}");
    ipamd.terminate().await;

    // Without the switch, `vpcctl config` names the fate of each aws-vpc-cni variable.
    let env = [("ENABLE_IPv4", "true".into())];
    let mut ipamd = Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &env).unwrap();
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");
    let config = ipamd.introspection().await.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    let fate = |n: &str| config.entries.iter().find(|e| e.name == n).map(|e| (e.value.clone(), e.fate.clone()));
    let (v, f) = fate("ENABLE_IPv4").expect("listed");
    assert_eq!(v, "true");
    assert!(f.contains("only true/1/t accepted: IPv6 pods"), "{f}");
    assert!(fate("WARM_IP_TARGET").unwrap().1.contains("honoured"));
    assert!(fate("ENABLE_NFTABLES").unwrap().1.contains("no effect"));
    assert_eq!(fate("IPAMD_SURGE").unwrap().1, "vpc-cni");
    let names =
        std::fs::read_to_string(vpc_sim::kubeapi::repo_root().join("tests/fixtures/aws-node/readme-variables.txt"))
            .unwrap();
    for n in names.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        assert!(fate(n.trim()).is_some(), "vpcctl config does not show {n}");
    }
    ipamd.terminate().await;
    fx.cleanup().await;
}

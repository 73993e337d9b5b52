//! The readiness-gated CNI install (LocalStack, no namespaces): while ipamd cannot reach SERVING — EC2 failing at
//! the fault proxy — the CNI conf directory gets no conflist and the bin directory no plugin; once it serves,
//! the very `vpc-cni` binary that was built and the reference portmap are in the bin directory and the conflist
//! points the plugin at this ipamd's socket; aws-node's conflist is gone. (The netns e2e in custom_net.rs adds
//! pods through such an installed conflist.)

use std::time::Duration;

use vpc_sim::ec2faults::Ec2FaultProxy;
use vpc_sim::fixture::{NodeFixture, eventually};
use vpc_sim::ipamd_proc::{Ipamd, sibling_binary};

#[tokio::test]
async fn the_plugin_and_conflist_appear_only_once_ipamd_serves() {
    let fx = NodeFixture::new("install", "t3.medium").await;
    let (bin, conf) = (fx.dir.path().join("opt-cni-bin"), fx.dir.path().join("etc-cni-net.d"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-aws.conflist"), br#"{"name":"aws-cni","plugins":[{"type":"aws-cni"}]}"#).unwrap();
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    proxy.fail("DescribeNetworkInterfaces", 503, "Unavailable", "EC2 is having a bad day");
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL_EC2", proxy.endpoint.clone()),
        ("CNI_INSTALL_BIN_DIR", bin.display().to_string()),
        ("CNI_INSTALL_CONF_DIR", conf.display().to_string()),
        ("CNI_PLUGINS_SOURCE_DIR", "/usr/lib/cni".into()),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "pod".into()),
    ];
    let mut ipamd = Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &env).expect("spawn ipamd");
    eventually(Duration::from_secs(30), "EC2 being asked and refused", || async {
        (proxy.calls("DescribeNetworkInterfaces") >= 2).then_some(())
    })
    .await;
    assert_eq!(ipamd.serving().await, Some(false));
    assert!(!conf.join("10-vpc-cni.conflist").exists(), "no conflist before SERVING");
    assert!(!bin.join("vpc-cni").exists(), "no plugin before SERVING");

    proxy.heal("DescribeNetworkInterfaces");
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING once EC2 answers");
    let conflist = conf.join("10-vpc-cni.conflist");
    eventually(Duration::from_secs(30), "the conflist", || async { conflist.exists().then_some(()) }).await;
    assert_eq!(std::fs::read(bin.join("vpc-cni")).unwrap(), std::fs::read(sibling_binary("vpc-cni")).unwrap());
    assert!(bin.join("portmap").exists());
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(c["name"], "aws-cni", "aws-vpc-cni's network name: imported allocations keep their keys");
    assert_eq!(c["plugins"][0]["type"], "vpc-cni");
    assert_eq!(c["plugins"][0]["ipamdSocket"], ipamd.socket.display().to_string());
    assert_eq!(c["plugins"][0]["vethPrefix"], "pod");
    assert_eq!(c["plugins"][1]["type"], "portmap");
    assert!(!conf.join("10-aws.conflist").exists(), "aws-node's conflist is replaced");
    let leftovers: Vec<_> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ipamd.terminate().await;
    assert!(conflist.exists(), "the conflist stays when ipamd stops (an upgrade must not make the node NotReady)");
    fx.cleanup().await;
}

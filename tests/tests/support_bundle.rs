//! `vpcctl support-bundle` against a live ipamd (LocalStack, no namespaces) started with AWS credentials: every
//! file is there and readable, the credentials appear nowhere in it; with ipamd stopped the host side is still
//! collected; with nothing to collect it exits 1.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vpc_sim::fixture::{NodeFixture, free_port};
use vpc_sim::ipamd_proc::{Ipamd, sibling_binary};

const KEY_ID: &str = "AKIAVPCCNITESTKEY123";
const SECRET: &str = "vpccni/test/secret/do-not-leak";

/// Runs `vpcctl support-bundle -f <out>` with `env` (credentials included) and unpacks the bundle into `dir`;
/// returns vpcctl's exit status and stderr.
fn bundle(socket: &Path, env: &[(&str, String)], dir: &Path) -> (Option<i32>, String) {
    let out = dir.join("bundle.tar.gz");
    let run = Command::new(sibling_binary("vpcctl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--socket", socket.to_str().unwrap(), "support-bundle", "-f", out.to_str().unwrap()])
        .output()
        .expect("run vpcctl");
    if out.exists() {
        let untar = Command::new("tar").args(["-xzf", out.to_str().unwrap(), "-C", dir.to_str().unwrap()]).status();
        assert!(untar.unwrap().success(), "the bundle is a tar.gz");
    }
    (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("vpc-cni-support").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every file of the bundle, none holding the credentials.
fn assert_no_secrets(dir: &Path) {
    for e in std::fs::read_dir(dir.join("vpc-cni-support")).unwrap() {
        let path = e.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for secret in [KEY_ID, SECRET] {
            assert!(!text.contains(secret), "{} of the bundle holds the credential {secret}", path.display());
        }
    }
}

#[tokio::test]
async fn a_support_bundle_holds_the_node_and_no_secret() {
    let fx = NodeFixture::new("bundle", "t3.medium").await;
    let plugin_log = fx.dir.path().join("plugin.log");
    std::fs::write(&plugin_log, format!("plugin ADD ok\naws key {KEY_ID} logged by mistake\n")).unwrap();
    let ipamd_log = fx.dir.path().join("log/ipamd.log");
    let port = free_port();
    let env: Vec<(&str, String)> = vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("METRICS_BIND_ADDR", format!("127.0.0.1:{port}")),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", plugin_log.display().to_string()),
        ("AWS_VPC_K8S_CNI_LOG_FILE", ipamd_log.display().to_string()),
        ("WARM_IP_TARGET", "2".into()),
    ];
    let mut ipamd = Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &env).unwrap();
    ipamd.wait_serving(Duration::from_secs(60)).await.expect("SERVING");
    let pod = vpc_sim::fixture::add_retrying(&ipamd, "c1", Duration::from_secs(30)).await.expect("a pod").ipv4_addr;

    let out = tempfile::tempdir().unwrap();
    let (code, stderr) = bundle(&ipamd.socket, &[], out.path());
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&read(out.path(), "status.json")).unwrap();
    assert_eq!(status["instance_id"], fx.instance_id());
    assert!(status["version"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")), "{status}");
    let pods: serde_json::Value = serde_json::from_str(&read(out.path(), "pods.json")).unwrap();
    assert_eq!(pods[0]["ipv4_addr"], pod.as_str());
    assert!(serde_json::from_str::<serde_json::Value>(&read(out.path(), "enis.json")).unwrap().is_array());
    let config: serde_json::Value = serde_json::from_str(&read(out.path(), "config.json")).unwrap();
    assert_eq!(config["WARM_IP_TARGET"]["value"], "2");
    let checkpoint: serde_json::Value = serde_json::from_str(&read(out.path(), "ipam.json")).unwrap();
    assert!(checkpoint.to_string().contains(&pod), "the checkpoint holds the pod");
    assert!(read(out.path(), "metrics.txt").contains("awscni_assigned_ip_addresses 1"));
    assert!(read(out.path(), "state-dir.txt").contains("ipam.json"));
    assert!(read(out.path(), "ip-links.txt").contains("lo"), "the host's links");
    assert!(read(out.path(), "ip-routes.txt").contains("table local"), "every table");
    assert!(read(out.path(), "plugin.log").contains("plugin ADD ok"));
    assert!(read(out.path(), "ipamd.log").contains("SERVING"));
    assert!(read(out.path(), "events.txt").starts_with("# events"));
    assert!(read(out.path(), "versions.txt").contains("vpcctl "));
    let manifest: serde_json::Value = serde_json::from_str(&read(out.path(), "manifest.json")).unwrap();
    for f in ["status.json", "enis.json", "pods.json", "config.json", "metrics.txt", "ipam.json", "plugin.log"] {
        assert_eq!(manifest[f], "collected", "{f}: {manifest}");
    }
    // Without host networking ipamd has no SNAT table here: said, not hidden.
    assert!(manifest["nft-vpc-cni.txt"].as_str().unwrap_or("").starts_with(if nft_table_exists() {
        "collected"
    } else {
        "not collected"
    }));
    assert!(read(out.path(), "env.txt").contains("AWS_SECRET_ACCESS_KEY=<redacted>"));
    assert_no_secrets(out.path());

    // ipamd stopped: the host side and ipamd's log are still collected, and the manifest says what is missing.
    let socket = ipamd.socket.clone();
    ipamd.terminate().await;
    let out = tempfile::tempdir().unwrap();
    let env = [
        ("IPAMD_STATE_DIR", fx.dir.path().display().to_string()),
        ("AWS_VPC_K8S_CNI_LOG_FILE", ipamd_log.display().to_string()),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", plugin_log.display().to_string()),
    ];
    let (code, stderr) = bundle(&socket, &env, out.path());
    assert_eq!(code, Some(0), "{stderr}");
    let manifest: serde_json::Value = serde_json::from_str(&read(out.path(), "manifest.json")).unwrap();
    assert!(manifest["status.json"].as_str().unwrap().contains("ipamd unreachable"), "{manifest}");
    assert_eq!(manifest["ipam.json"], "collected");
    assert!(read(out.path(), "ipamd.log").contains("SIGTERM"));
    assert!(stderr.contains("not collected: status.json"), "{stderr}");
    assert_no_secrets(out.path());

    // Nothing at all to collect: exit 1, and it says why.
    let out = tempfile::tempdir().unwrap();
    let nothing = fx.dir.path().join("nothing");
    let (code, stderr) = bundle(
        &nothing.join("ipamd.sock"),
        &[
            ("PATH", nothing.display().to_string()),
            ("IPAMD_STATE_DIR", nothing.display().to_string()),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE", nothing.join("plugin.log").display().to_string()),
            ("DISABLE_METRICS", "true".into()),
        ],
        out.path(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing could be collected"), "{stderr}");
    fx.cleanup().await;
}

/// Whether the machine running the tests has a `table ip vpc-cni` (a sim left running, or a real node).
fn nft_table_exists() -> bool {
    Command::new("nft").args(["list", "table", "ip", "vpc-cni"]).output().is_ok_and(|o| o.status.success())
}

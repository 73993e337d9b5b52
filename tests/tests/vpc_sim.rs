//! `vpc-sim up` end to end (root + network namespaces): two sims side by side, ENI hot-plug and ipamd's host
//! setup per SPEC "Datapath", VPC routing and the EC2 source/destination check, and a clean shutdown.
//! Every namespace is created by the sims under a unique prefix and removed by them; the root namespace is
//! never changed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpc_sim::ipamd_proc::sibling_binary;
use vpc_sim::localstack::{self, NodeEni, node_enis};
use vpc_sim::netns::{self, ip_in, run};
use vpc_sim::sim::record::SimRecord;

struct SimProc {
    child: Child,
    prefix: String,
    state: tempfile::TempDir,
}

impl SimProc {
    /// Starts `vpc-sim up` and waits for its `vpc-sim ready` line.
    fn start(tag: &str, nodes: usize, env: &[&str]) -> Self {
        let prefix = format!("{tag}{:04x}", rand::random::<u16>());
        let state = tempfile::Builder::new().prefix("vpcsim-state-").tempdir().unwrap();
        let mut cmd = Command::new(sibling_binary("vpc-sim"));
        cmd.args(["up", "--nodes", &nodes.to_string(), "--instance-type", "t3.medium", "--prefix", &prefix])
            .arg("--state-dir")
            .arg(state.path());
        for e in env {
            cmd.args(["--ipamd-env", e]);
        }
        let log = std::fs::File::create(state.path().join("sim.log")).unwrap();
        let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "vpc-sim ready" {
                    let _ = tx.send(());
                }
            }
        });
        let me = Self { child, prefix, state };
        if rx.recv_timeout(Duration::from_secs(150)).is_err() {
            panic!("vpc-sim {} not ready; log:\n{}", me.prefix, me.log());
        }
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("sim.log")).unwrap_or_default()
    }

    fn record(&self) -> SimRecord {
        SimRecord::load(self.state.path()).expect("sim.json")
    }

    fn node(&self, i: usize) -> String {
        format!("{}-node-{i}", self.prefix)
    }

    /// SIGTERM and wait for the sim to finish its clean-up.
    fn stop(mut self) -> (String, tempfile::TempDir) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "vpc-sim did not exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let prefix = self.prefix.clone();
        (prefix, std::mem::replace(&mut self.state, tempfile::tempdir().unwrap()))
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for ns in netns::list(&self.prefix) {
                let _ = netns::delete(&ns);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- vpc-sim {} log ----\n{}", self.prefix, self.log());
            for dir in std::fs::read_dir(self.state.path()).into_iter().flatten().flatten() {
                let p: PathBuf = dir.path().join("ipamd.log");
                if let Ok(l) = std::fs::read_to_string(&p) {
                    eprintln!("---- {} ----\n{l}", p.display());
                }
            }
        }
    }
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Asks the node's IMDS, from inside the node, which MAC each device has.
fn imds_macs(ns: &str) -> Vec<(u32, String)> {
    let exec = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns, "curl", "-sf", "--max-time", "5"];
        all.extend_from_slice(args);
        run("ip", &all).unwrap()
    };
    let token = exec(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    let hdr = format!("X-aws-ec2-metadata-token: {token}");
    let base = "http://169.254.169.254/latest/meta-data/network/interfaces/macs/";
    exec(&["-H", &hdr, base])
        .lines()
        .map(|l| {
            let mac = l.trim_end_matches('/').to_string();
            let dev = exec(&["-H", &hdr, &format!("{base}{mac}/device-number")]).trim().parse().unwrap();
            (dev, mac)
        })
        .collect()
}

fn link_mac(ns: &str, link: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&ip_in(ns, &["-j", "link", "show", link]).ok()?).ok()?;
    v[0]["address"].as_str().map(String::from)
}

async fn enis(instance: &str) -> Vec<NodeEni> {
    node_enis(&localstack::ec2_client(), instance).await.unwrap()
}

/// Waits until `f` holds (the sim follows EC2 within a second; ipamd's host setup within a reconcile).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn two_sims_wire_the_vpc_enforce_source_checks_and_clean_up() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| SimProc::start("va", 2, &["WARM_ENI_TARGET=2"]));
        let b = s.spawn(|| SimProc::start("vb", 1, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let rec = a.record();

    // Each node: the primary ENI and the warm ENI ipamd attached, with the MACs IMDS reports.
    let mut node_enis_by_idx = Vec::new();
    for (i, instance) in rec.vpc.instance_ids.iter().enumerate() {
        let ns = a.node(i);
        let mut e = Vec::new();
        for _ in 0..100 {
            e = enis(instance).await;
            if e.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(e.iter().map(|x| x.device_index).collect::<Vec<_>>(), vec![0, 1], "WARM_ENI_TARGET=2 on t3.medium");
        let macs = imds_macs(&ns);
        assert_eq!(macs.len(), 2, "{macs:?}");
        for (dev, mac) in &macs {
            let link = format!("ens{}", 5 + dev);
            wait_until(&format!("{link} in {ns}"), Duration::from_secs(5), || link_mac(&ns, &link).is_some());
            assert_eq!(link_mac(&ns, &link).as_deref(), Some(mac.as_str()), "{ns} {link}");
        }
        // SPEC "Datapath": table device+1 with the gateway, the ENI-primary-IP rule, no subnet route in main.
        let eni1 = &e[1];
        let rule = format!("32765:\tfrom {} lookup 2", eni1.primary_ip);
        wait_until(&format!("{rule} in {ns}"), Duration::from_secs(20), || {
            ip_in(&ns, &["rule"]).unwrap().contains(&rule)
        });
        let table = ip_in(&ns, &["route", "show", "table", "2"]).unwrap();
        assert!(table.contains("default via 10.0.0.1 dev ens6"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("10.0.0.1 dev ens6") && l.contains("scope link")), "{table}");
        let main = ip_in(&ns, &["route"]).unwrap();
        assert!(!main.contains("dev ens6"), "no route via the secondary ENI in main:\n{main}");
        let addr = ip_in(&ns, &["-4", "-br", "addr", "show", "ens6"]).unwrap();
        assert!(addr.contains(&format!("{}/20", eni1.primary_ip)) && addr.contains("UP"), "{addr}");
        let link: serde_json::Value =
            serde_json::from_str(&ip_in(&ns, &["-j", "link", "show", "ens6"]).unwrap()).unwrap();
        assert_eq!(link[0]["mtu"], 9001, "AWS_VPC_ENI_MTU on the secondary ENI");
        let sysctl = |k: &str| run("ip", &["netns", "exec", &ns, "sysctl", "-n", k]).unwrap().trim().to_string();
        assert_eq!(sysctl("net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl("net.ipv4.conf.ens5.rp_filter"), "2");
        node_enis_by_idx.push(e);
    }

    // VPC routing between nodes, through primary and secondary ENIs.
    let (n0, n1) = (a.node(0), a.node(1));
    assert!(ping(&n0, &node_enis_by_idx[1][0].primary_ip), "node 0 → node 1 primary IP");
    assert!(ping(&n0, &node_enis_by_idx[1][1].primary_ip), "node 0 → node 1 secondary ENI IP");
    assert!(ping(&n1, &node_enis_by_idx[0][1].primary_ip), "node 1 → node 0 secondary ENI IP");

    // Source/destination check: out of node 0's secondary ENI with the primary ENI's IP as source → dropped;
    // with the secondary ENI's own IP → delivered.
    let dst = node_enis_by_idx[1][0].primary_ip.clone();
    let spoof = |src: &str| {
        ip_in(&n0, &["route", "replace", &format!("{dst}/32"), "via", "10.0.0.1", "dev", "ens6", "src", src, "onlink"])
            .unwrap();
        let ok = ping(&n0, &dst);
        ip_in(&n0, &["route", "del", &format!("{dst}/32")]).unwrap();
        ok
    };
    assert!(!spoof(&node_enis_by_idx[0][0].primary_ip), "the fabric must drop a foreign source IP");
    assert!(spoof(&node_enis_by_idx[0][1].primary_ip), "the ENI's own IP passes the source check");

    let status =
        run(sibling_binary("vpc-sim").to_str().unwrap(), &["status", "--state-dir", a.state.path().to_str().unwrap()])
            .unwrap();
    assert!(
        status.contains(&format!("node 1: {}", rec.vpc.instance_ids[1])) && status.contains("lookup 2"),
        "{status}"
    );

    // Hot-plug and unplug: an ENI attached behind ipamd's back appears in the node; ipamd adopts it, finds it
    // surplus, detaches and deletes it; the link and its table and rule go with it.
    let ec2 = localstack::ec2_client();
    let extra = ec2.create_network_interface().subnet_id(&rec.vpc.subnet_ids[0]).send().await.unwrap();
    let extra = extra.network_interface().unwrap().network_interface_id().unwrap().to_string();
    ec2.attach_network_interface()
        .network_interface_id(&extra)
        .instance_id(&rec.vpc.instance_ids[1])
        .device_index(2)
        .send()
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..150 {
        gone = !localstack::eni_exists(&ec2, &extra).await.unwrap();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "ipamd gives back an idle surplus ENI");
    wait_until("ens7 to leave node 1 and its table 3 rule", Duration::from_secs(20), || {
        link_mac(&n1, "ens7").is_none() && !ip_in(&n1, &["rule"]).unwrap().contains("lookup 3")
    });
    let log = a.log();
    assert!(log.contains("1 ENI link(s) added") && log.contains("1 removed"), "hot-plug seen by the sim:\n{log}");
    assert!(ip_in(&n1, &["route", "show", "table", "3"]).unwrap_or_default().trim().is_empty());

    // The second sim runs beside the first in its own namespaces.
    let rb = b.record();
    let b0 = b.node(0);
    assert!(link_mac(&b0, "ens5").is_some());
    assert!(ping(&b0, "10.0.0.1"), "sim b node 0 reaches its gateway");
    assert_ne!(rb.vpc.vpc_id, rec.vpc.vpc_id);

    // SIGTERM: no namespace, process or EC2 resource left.
    for (sim, rec) in [(a, rec), (b, rb)] {
        let (prefix, _state) = sim.stop();
        assert!(netns::list(&prefix).is_empty(), "{:?}", netns::list(&prefix));
        for pid in &rec.pids {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "ipamd {pid} still running");
        }
        let vpcs = ec2.describe_vpcs().vpc_ids(&rec.vpc.vpc_id).send().await;
        assert!(vpcs.map(|o| o.vpcs().is_empty()).unwrap_or(true), "VPC {} still exists", rec.vpc.vpc_id);
        let inst = ec2.describe_instances().set_instance_ids(Some(rec.vpc.instance_ids.clone())).send().await;
        let live = inst
            .map(|o| {
                o.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter(|i| i.state().and_then(|s| s.name()).is_none_or(|n| n.as_str() != "terminated"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(live, 0, "instances of {} not terminated", rec.vpc.vpc_id);
    }
}

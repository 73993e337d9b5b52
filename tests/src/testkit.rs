//! Helpers for the root + netns suites: a `vpc-sim up` child process waited on until ready and stopped with
//! SIGTERM, and small probes (ping, IMDS from inside a node, link MACs, TCP peer addresses).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ipamd_proc::sibling_binary;
use crate::netns::{self, ip_in, run};
use crate::sim::record::SimRecord;

pub struct SimProc {
    child: Child,
    pub prefix: String,
    pub state: tempfile::TempDir,
}

impl SimProc {
    /// Starts `vpc-sim up` and waits for its `vpc-sim ready` line. `env` holds KEY=VALUE ipamd settings and
    /// `vpc-sim up` flags (`--chain`, `--kube`, `--zones=2`, …).
    pub fn start(tag: &str, nodes: usize, env: &[&str]) -> Self {
        Self::start_with(tag, nodes, "t3.medium", env)
    }

    /// As [`SimProc::start`] with another instance type.
    pub fn start_with(tag: &str, nodes: usize, instance_type: &str, env: &[&str]) -> Self {
        let prefix = format!("{tag}{:04x}", rand::random::<u16>());
        let state = tempfile::Builder::new().prefix("vpcsim-state-").tempdir().unwrap();
        let mut cmd = Command::new(sibling_binary("vpc-sim"));
        cmd.args(["up", "--nodes", &nodes.to_string(), "--instance-type", instance_type, "--prefix", &prefix])
            .arg("--state-dir")
            .arg(state.path());
        for e in env {
            if e.starts_with("--") {
                cmd.arg(e);
            } else {
                cmd.args(["--ipamd-env", e]);
            }
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

    /// GetStatus of node `node`'s ipamd (`None` while it does not answer).
    pub async fn status(&self, node: usize) -> Option<vpc_cni_proto::v1::GetStatusReply> {
        let socket = self.state.path().join(format!("node-{node}/ipamd.sock"));
        let ch = vpc_cni_proto::uds::connect(&socket, Some(Duration::from_secs(2))).await.ok()?;
        let mut c = vpc_cni_proto::v1::introspection_client::IntrospectionClient::new(ch);
        Some(c.get_status(vpc_cni_proto::v1::GetStatusRequest {}).await.ok()?.into_inner())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("sim.log")).unwrap_or_default()
    }

    pub fn record(&self) -> SimRecord {
        SimRecord::load(self.state.path()).expect("sim.json")
    }

    pub fn node(&self, i: usize) -> String {
        format!("{}-node-{i}", self.prefix)
    }

    /// `vpcctl args…` against node `node`'s ipamd: its stdout (what it printed, whatever its exit status).
    pub fn vpcctl(&self, node: usize, args: &[&str]) -> String {
        let socket = self.state.path().join(format!("node-{node}/ipamd.sock"));
        let out = Command::new(sibling_binary("vpcctl")).arg("--socket").arg(&socket).args(args).output();
        String::from_utf8_lossy(&out.expect("vpcctl").stdout).into_owned()
    }

    /// SIGTERM and wait for the sim to finish its clean-up.
    pub fn stop(mut self) -> (String, tempfile::TempDir) {
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
            // A sim killed outright cannot stop its nodes' ipamds: they would outlive the test.
            let ipamds = SimRecord::load(self.state.path()).map(|r| r.pids).unwrap_or_default();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in ipamds {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            for ns in netns::list(&self.prefix) {
                let _ = netns::delete(&ns);
            }
        }
        if std::thread::panicking() {
            // A digest first (CI shows only the start of a failure's output), then everything.
            let mut logs = vec![("vpc-sim".to_string(), self.log())];
            for dir in std::fs::read_dir(self.state.path()).into_iter().flatten().flatten() {
                let p: PathBuf = dir.path().join("ipamd.log");
                if let Ok(l) = std::fs::read_to_string(&p) {
                    logs.push((p.display().to_string(), l));
                }
            }
            for (name, text) in &logs {
                eprintln!("---- {name}: digest ----\n{}", digest(text, 12, 8));
            }
            for (name, text) in &logs {
                eprintln!("---- {name} ----\n{text}");
            }
        }
    }
}

/// The last `warnings` WARN/ERROR lines of a log, then its last `tail` lines.
pub fn digest(log: &str, warnings: usize, tail: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let bad: Vec<&str> = lines.iter().copied().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    let pick = |v: &[&str], n: usize| v[v.len().saturating_sub(n)..].join("\n");
    format!("{} warning(s), the last:\n{}\n-- last lines:\n{}", bad.len(), pick(&bad, warnings), pick(&lines, tail))
}

/// Whether `dst` answers an echo from inside `ns`: one reply within 3 s, a request every 200 ms until then
/// (reachability, not loss: a first echo once waited out the fabric's proxy ARP delay, since set to 0).
pub fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-i", "0.2", "-w", "3", dst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Asks the node's IMDS, from inside the node, which MAC each device has.
pub fn imds_macs(ns: &str) -> Vec<(u32, String)> {
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

pub fn link_mac(ns: &str, link: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&ip_in(ns, &["-j", "link", "show", link]).ok()?).ok()?;
    v[0]["address"].as_str().map(String::from)
}

/// Waits until `f` holds (the sim follows EC2 within a second; ipamd's host setup within a reconcile).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until no link of `ns` has `name` in its name: a host veth goes with its pod's namespace, which the
/// kernel tears down in the background after the namespace is deleted.
pub fn wait_link_gone(ns: &str, name: &str) {
    let gone = || !ip_in(ns, &["link"]).unwrap_or_default().contains(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() {
        assert!(Instant::now() < deadline, "{name} still on {ns} 10 s after its namespace was deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects from inside `client_ns` to `server_ip:port` served from inside `server_ns`; returns the peer address
/// the server saw (proves whether anything on the way rewrote the source).
pub fn tcp_peer_seen(server_ns: &str, server_ip: &str, client_ns: &str) -> Result<String, String> {
    let listen: std::net::SocketAddr = format!("{server_ip}:0").parse().map_err(|e| format!("{e}"))?;
    tcp_peer_seen_via(server_ns, listen, client_ns, None)
}

/// As [`tcp_peer_seen`], listening on `listen` and connecting to `connect` (default: the listener), e.g. a
/// node's hostPort that portmap forwards to the pod.
pub fn tcp_peer_seen_via(
    server_ns: &str,
    listen: std::net::SocketAddr,
    client_ns: &str,
    connect: Option<std::net::SocketAddr>,
) -> Result<String, String> {
    let listener = netns::std_listen_in(server_ns, listen).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer.ip().to_string()));
    netns::connect_in(client_ns, connect.unwrap_or(addr)).map_err(|e| e.to_string())?;
    server.join().map_err(|_| "server thread".to_string())?.map_err(|e| e.to_string())
}

//! NetworkPolicy on a 2-node sim (`vpc-sim up --network-policy`: real API server, ipamd's enforcer in each node's
//! namespace), what the conformance matrix (netpol_matrix.rs) does not show: a pod's policies are in force when its
//! ADD returns (its first connection already meets them, its churn goes in as element changes), `vpcctl policy
//! explain` agrees with the kernel, a table changed by something else is repaired, a deny cuts a running flow,
//! and bad input narrows and is said.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use vpc_sim::sim::pods::Pod;
use vpc_sim::sim::probe::{self, Port, Served};
use vpc_sim::testkit::SimProc;

/// Echoes every line back, on TCP `port` in `ns`.
fn echo(ns: &str, port: u16) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "socat", &format!("TCP-LISTEN:{port},fork,reuseaddr"), "EXEC:cat"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat")
}

/// A long-lived TCP connection from a pod: each line sent is echoed back while the flow lives.
struct Flow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Flow {
    fn open(from: &Served, ip: &str, port: u16) -> Self {
        let ns = from.netns();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "socat", "-", &format!("TCP:{ip}:{port},connect-timeout=2")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self { child, lines }
    }

    fn echoes(&mut self, word: &str) -> bool {
        use std::io::Write;
        let sent = self.child.stdin.as_mut().is_some_and(|i| writeln!(i, "{word}").and_then(|()| i.flush()).is_ok());
        sent && self.lines.recv_timeout(Duration::from_secs(3)).is_ok_and(|l| l == word)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sim: &SimProc, node: usize, namespace: &str, name: &str, app: &str) -> Served {
    start_checked(sim, node, namespace, name, app, |_| {})
}

/// As [`start`], running `right_after_add` as soon as the pod's ADD has returned.
fn start_checked(
    sim: &SimProc,
    node: usize,
    namespace: &str,
    name: &str,
    app: &str,
    right_after_add: impl FnOnce(&Pod),
) -> Served {
    let pod = Pod {
        state_dir: sim.state.path().to_path_buf(),
        node,
        namespace: namespace.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        ..Pod::default()
    };
    Served::start(pod, &[tcp(80), tcp(81)], right_after_add).expect("pod started")
}

fn tcp(n: u16) -> Port {
    Port { udp: false, number: n }
}

fn reaches(from: &Served, to: &Served, port: u16) -> bool {
    probe::reaches(&from.netns(), &to.ip, tcp(port))
}

fn expect(members: &[(&str, &Served)], port: u16, want: &[&str], case: &str) {
    let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
    probe::expect(members, tcp(port), &want, case);
}

async fn put(api: &Api<NetworkPolicy>, spec: serde_json::Value) {
    let np: NetworkPolicy = serde_json::from_value(spec).unwrap();
    let name = np.metadata.name.clone().unwrap();
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &np).await.expect("create NetworkPolicy");
}

#[tokio::test]
#[ignore = "needs root + netns"]
async fn policies_shape_the_reachability_matrix_and_hold_from_a_pods_first_packet() {
    assert!(Command::new("socat").arg("-V").output().is_ok(), "socat is needed (scripts/deps.sh installs it)");
    let sim = SimProc::start("np", 2, &["--network-policy"]);
    let rec = sim.record();
    let admin = vpc_sim::kubeapi::client(&rec.kube.as_ref().expect("--kube").admin).await.unwrap();
    let (x, y) = (format!("{}-x", sim.prefix), format!("{}-y", sim.prefix));
    let xa = start(&sim, 0, &x, "a", "a");
    let xb = start(&sim, 1, &x, "b", "b");
    let yc = start(&sim, 0, &y, "c", "c");
    let all = [("xa", &xa), ("xb", &xb), ("yc", &yc)];
    let every = ["xa>xb", "xa>yc", "xb>xa", "xb>yc", "yc>xa", "yc>xb"];
    expect(&all, 80, &every, "no policy");
    let px: Api<NetworkPolicy> = Api::namespaced(admin.clone(), &x);
    let py: Api<NetworkPolicy> = Api::namespaced(admin.clone(), &y);

    // Default deny ingress in x: nothing reaches x's pods, x's pods still reach out.
    put(&px, json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})).await;
    expect(&all, 80, &["xa>yc", "xb>yc"], "default deny ingress in x");

    // A pod started now meets the deny with its first packet: when its ADD returns, its node's table already
    // holds its veth (and the probe needs no polling).
    let xd = start_checked(&sim, 1, &x, "d", "d", |pod| {
        let veth = datapath::podnet::host_veth_name("eni", &pod.namespace, &pod.name);
        let map = Command::new("ip")
            .args(["netns", "exec", &sim.node(1), "nft", "list", "map", "inet", "vpc-cni-netpol", "ingress"])
            .output()
            .unwrap();
        let map = String::from_utf8_lossy(&map.stdout);
        assert!(map.contains(&format!("\"{veth}\"")), "{veth} in the ingress map when ADD returns:\n{map}");
        // Pod churn goes in as element changes (libnftables in-process), not a table replacement.
        let status = sim.vpcctl(1, &["policy", "status"]);
        assert!(status.contains("last change: elements"), "{status}");
        // `vpcctl pods` shows the generation its ADD returned with.
        let pods: serde_json::Value = serde_json::from_str(&sim.vpcctl(1, &["pods", "-o", "json"])).unwrap();
        let me = pods.as_array().unwrap().iter().find(|p| p["pod_name"] == "d").expect("x/d in vpcctl pods");
        assert!(me["policy_generation"].as_u64().is_some_and(|g| g >= 1), "{me}");
    });
    assert!(!reaches(&yc, &xd, 80), "x/d is isolated from its first packet");
    assert!(reaches(&xd, &yc, 80), "x/d reaches out");
    drop(xd);

    // Allow x/a from pods of its own namespace on 80 only (a podSelector peer: x's pods alone).
    put(
        &px,
        json!({"metadata": {"name": "a-from-x"}, "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}}),
    )
    .await;
    expect(&all, 80, &["xa>yc", "xb>xa", "xb>yc"], "a from x's pods, port 80");
    expect(&all, 81, &["xa>yc", "xb>yc"], "not port 81");

    // Allow x/a from namespace y by its name label (synthesized: a 1.20 API server does not add it).
    put(
        &px,
        json!({"metadata": {"name": "a-from-y"}, "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": y}}}]}]}}),
    )
    .await;
    expect(&all, 80, &["xa>yc", "xb>xa", "xb>yc", "yc>xa"], "a from y too");
    // `vpcctl policy explain` names the deciding policy and rule, and agrees with the kernel.
    let explain = |from: &str, to: &str, port: &str| sim.vpcctl(0, &["policy", "explain", from, to, port]);
    let why = explain(&format!("{y}/c"), &format!("{x}/a"), "tcp/80");
    assert!(why.contains("ALLOWED") && why.contains(&format!("allowed by {x}/a-from-y rule 0")), "{why}");
    let why = explain(&format!("{x}/b"), &format!("{x}/a"), "tcp/81");
    assert!(why.contains("DENIED") && why.contains("no rule matches"), "{why}");
    assert!(!reaches(&xb, &xa, 81), "the kernel agrees");

    // Drift: something else empties node 0's ingress map, which opens x/a; the periodic read-back finds it and
    // the table is replaced.
    let flush = ["netns", "exec", &sim.node(0), "nft", "flush", "map", "inet", "vpc-cni-netpol", "ingress"];
    assert!(Command::new("ip").args(flush).status().unwrap().success());
    let repaired = || sim.vpcctl(0, &["policy", "status"]).contains("repaired");
    // (Unless a read-back, every REPAIR_EVERY, came right between the two.)
    assert!(reaches(&xb, &xa, 81) || repaired(), "the emptied map let x/b in");
    let deadline = Instant::now() + ipamd::policy::REPAIR_EVERY + Duration::from_secs(5);
    while !repaired() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = sim.vpcctl(0, &["policy", "status"]);
    assert!(status.contains("repaired        1 time(s)"), "{status}");
    expect(&all, 81, &["xa>yc", "xb>yc", "yc>xa"], "repaired");

    // A long flow y/c → x/a, then default deny egress in y: y's pods reach nothing, and the running flow is cut.
    let mut echo_server = echo(&xa.netns(), 82);
    let started = Instant::now();
    while !probe::listening(&xa.netns(), tcp(82)) && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut flow = Flow::open(&yc, &xa.ip, 82);
    assert!(flow.echoes("before"), "the long flow runs");
    put(&py, json!({"metadata": {"name": "deny-out"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})).await;
    expect(&all, 80, &["xa>yc", "xb>xa", "xb>yc"], "deny egress in y");
    assert!(!flow.echoes("after"), "a deny cuts the established flow");

    // Deleting every policy opens everything again.
    for (api, name) in [(&px, "deny"), (&px, "a-from-x"), (&px, "a-from-y"), (&py, "deny-out")] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    expect(&all, 80, &every, "policies deleted");
    let _ = echo_server.kill();
    let _ = echo_server.wait();

    let to_a = |name: &str, ingress: serde_json::Value| json!({"metadata": {"name": name}, "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": ingress}});
    // Bad input narrows: a rule whose only peer is an IPv6 block is dropped (not read as "from everywhere"), and
    // the drop is said.
    put(&px, to_a("v6", json!([{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]))).await;
    expect(&all, 80, &["xa>xb", "xa>yc", "xb>yc", "yc>xb"], "an unreadable rule allows nothing");
    let status = sim.vpcctl(0, &["policy", "status"]);
    assert!(status.contains(&format!("{x}/v6")) && status.contains("IPv6"), "{status}");
    // …and a Warning Event on the policy, from the node whose pod it isolates.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &x);
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = loop {
        let found = events.list(&Default::default()).await.unwrap().items.into_iter().find(|e| {
            e.reason.as_deref() == Some("PolicyNarrowed")
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("NetworkPolicy") && r.name.as_deref() == Some("v6"))
        });
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let warned = warned.expect("a PolicyNarrowed Event on the policy");
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    assert!(warned.note.as_deref().unwrap_or_default().contains("IPv6"), "{warned:?}");
    px.delete("v6", &DeleteParams::default()).await.unwrap();
    expect(&all, 80, &every, "all deleted again");

    // vpc-sim for users: `pod add --serve` (and named ports) serve in the pod, `probe` says reached or not by its
    // exit status, `kubeconfig` names the admin kubeconfig, `pod del` stops the servers.
    let sim_cli = |args: &[&str]| {
        let out = Command::new(vpc_sim::ipamd_proc::sibling_binary("vpc-sim"))
            .args(args)
            .arg("--state-dir")
            .arg(sim.state.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let z = format!("{}-z", sim.prefix);
    let add = |node: &str, name: &str, extra: &[&str]| {
        let mut args = vec!["pod", "add", "--node", node, "--namespace", &z, "--name", name, "--labels", "app=cli"];
        args.extend_from_slice(extra);
        assert_eq!(sim_cli(&args).0, Some(0), "vpc-sim pod add {name}");
    };
    add("0", "web", &["--serve", "tcp/80", "--named-port", "dns=53/udp"]);
    add("1", "client", &[]);
    let probe_cli =
        |port: &str| sim_cli(&["probe", "--from", &format!("{z}/client"), "--to", &format!("{z}/web"), "--port", port]);
    let (code, said) = probe_cli("tcp/80");
    if code != Some(0) {
        // What the nodes hold, for whoever reads a failure.
        for n in 0..2 {
            let t = Command::new("ip")
                .args(["netns", "exec", &sim.node(n), "nft", "list", "table", "inet", "vpc-cni-netpol"])
                .output()
                .unwrap();
            eprintln!("node {n}'s table:\n{}", String::from_utf8_lossy(&t.stdout));
        }
    }
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("reached tcp/80"), "{said}");
    assert_eq!(probe_cli("udp/53").0, Some(0), "the named port is served");
    assert_eq!(probe_cli("tcp/81").0, Some(1), "nothing serves 81");
    let (_, kubeconfig) = sim_cli(&["kubeconfig"]);
    let from_cli = vpc_sim::kubeapi::client(std::path::Path::new(kubeconfig.trim())).await.unwrap();
    let pz: Api<NetworkPolicy> = Api::namespaced(from_cli, &z);
    put(&pz, json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe_cli("tcp/80").0 != Some(1) {
        assert!(Instant::now() < deadline, "the deny never showed in `vpc-sim probe`");
    }
    let servers = sim.state.path().join(format!("node-0/pods/{z}_web.servers"));
    let pid: i32 = std::fs::read_to_string(&servers).unwrap().trim().parse().unwrap();
    for name in ["web", "client"] {
        let node = if name == "web" { "0" } else { "1" };
        assert_eq!(sim_cli(&["pod", "del", "--node", node, "--namespace", &z, "--name", name]).0, Some(0));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Gone, or a zombie waiting for whoever adopted it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "pod del stopped the servers: {stat}");

    // The table lives in the node's namespace, never in the root one.
    let node_table = Command::new("ip")
        .args(["netns", "exec", &sim.node(0), "nft", "list", "table", "inet", "vpc-cni-netpol"])
        .output()
        .unwrap();
    assert!(node_table.status.success(), "the node holds the table");
    drop((xa, xb, yc));
    let (log, _state) = sim.stop();
    assert!(!log.contains("panicked"), "{log}");
}

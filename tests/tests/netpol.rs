//! NetworkPolicy on a 2-node sim (`vpc-sim up --network-policy`: real API server, ipamd's enforcer in each node's
//! namespace): pods in namespaces x and y on both nodes serve TCP 80 and 81, and each case compares the whole
//! reachability matrix, probed with real connections between pod namespaces, with its truth table. A pod's
//! policies are in force when its ADD returns: its first connection already meets them.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use vpc_sim::sim::pods::{Pod, pod_ip};
use vpc_sim::testkit::SimProc;

/// One pod of the matrix: its sim pod, address and the listeners serving its ports.
struct Member {
    pod: Pod,
    ip: String,
    servers: Vec<Child>,
}

impl Drop for Member {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// A TCP server in `ns` on `port` answering each connection with `answer` (a socat address).
fn serve_with(ns: &str, port: u16, answer: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "socat", &format!("TCP-LISTEN:{port},fork,reuseaddr"), answer])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat")
}

/// Answers "ok" and closes.
fn serve(ns: &str, port: u16) -> Child {
    serve_with(ns, port, "SYSTEM:echo ok")
}

/// Echoes every line back.
fn echo(ns: &str, port: u16) -> Child {
    serve_with(ns, port, "EXEC:cat")
}

/// A long-lived TCP connection from a pod: each line sent is echoed back while the flow lives.
struct Flow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Flow {
    fn open(from: &Member, ip: &str, port: u16) -> Self {
        let ns = from.pod.netns().unwrap();
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

fn start(sim: &SimProc, node: usize, namespace: &str, name: &str, app: &str) -> Member {
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
) -> Member {
    let pod = Pod {
        state_dir: sim.state.path().to_path_buf(),
        node,
        namespace: namespace.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        ..Pod::default()
    };
    let ip = pod_ip(&pod.add_retrying(Duration::from_secs(60)).expect("ADD"));
    right_after_add(&pod);
    let ns = pod.netns().unwrap();
    let servers = vec![serve(&ns, 80), serve(&ns, 81)];
    // The listeners are up before anyone probes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !listening(&ns, 80) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Member { pod, ip, servers }
}

fn listening(ns: &str, port: u16) -> bool {
    let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-Hltn"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "))
}

/// A TCP connection from `from` to `to`:`port` is answered.
fn reaches(from: &Member, to: &Member, port: u16) -> bool {
    let ns = from.pod.netns().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "timeout", "3", "socat", "-T1", "-u"])
        .arg(format!("TCP:{}:{port},connect-timeout=1", to.ip))
        .arg("STDOUT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("ok")
}

/// "from>to" of every allowed pair at `port`.
fn matrix(members: &[(&str, &Member)], port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for (a, from) in members {
        for (b, to) in members {
            if a != b && reaches(from, to, port) {
                out.push(format!("{a}>{b}"));
            }
        }
    }
    out
}

/// Polls the matrix (up to 5 s) until it is `want`.
fn expect(members: &[(&str, &Member)], port: u16, want: &[&str], case: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = matrix(members, port);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{case}: reachability on {port}\n got: {got:?}\nwant: {want:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
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
    let explain = |from: &str, to: &str, port: &str| {
        let socket = sim.state.path().join("node-0/ipamd.sock");
        let out = Command::new(vpc_sim::ipamd_proc::sibling_binary("vpcctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["policy", "explain", from, to, port])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let why = explain(&format!("{y}/c"), &format!("{x}/a"), "tcp/80");
    assert!(why.contains("ALLOWED") && why.contains(&format!("allowed by {x}/a-from-y rule 0")), "{why}");
    let why = explain(&format!("{x}/b"), &format!("{x}/a"), "tcp/81");
    assert!(why.contains("DENIED") && why.contains("no rule matches"), "{why}");
    assert!(!reaches(&xb, &xa, 81), "the kernel agrees");

    // A long flow y/c → x/a, then default deny egress in y: y's pods reach nothing, and the running flow is cut.
    let _echo = Member { pod: xa.pod.clone(), ip: xa.ip.clone(), servers: vec![echo(&xa.pod.netns().unwrap(), 82)] };
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

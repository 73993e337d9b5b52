//! NetworkPolicy conformance on a 2-node sim (root + netns, real API server, ipamd's enforcer in each node): three
//! namespaces x, y, z (labelled team=x|y|z) × pods a, b, c (app=a|b|c; c also tier=edge) spread over both nodes,
//! each serving TCP 80 and 81 and UDP 80 and 53, with a named port `http` that is 81 on b and 80 elsewhere. Each
//! case puts its policies, waits until both nodes' enforcers hold exactly them, then probes the whole 9 × 9
//! reachability matrix with real connections between pod namespaces (all at once) and compares it with the case's
//! truth table, polling up to 5 s. Same-node and cross-node pairs are in every matrix.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vpc_sim::sim::pods::Pod;
use vpc_sim::sim::probe::{Port, Served, expect};
use vpc_sim::testkit::SimProc;

const NS: [&str; 3] = ["x", "y", "z"];

/// The tests here count the cluster's policies through each node's `vpcctl policy status` (the API server is
/// shared): one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PODS: [&str; 3] = ["a", "b", "c"];

/// One end of a flow, for truth tables: namespace and pod letters.
#[derive(Clone, Copy, PartialEq, Eq)]
struct P {
    ns: &'static str,
    pod: &'static str,
}

impl P {
    fn is(&self, key: &str) -> bool {
        format!("{}{}", self.ns, self.pod) == key
    }
}

struct World {
    sim: SimProc,
    admin: kube::Client,
    /// (short key "xa", P, the pod serving).
    members: Vec<(String, P, Served)>,
    /// Policies the shared API server held before (other runs' namespaces).
    others: usize,
}

fn tcp(n: u16) -> Port {
    Port { udp: false, number: n }
}

fn udp(n: u16) -> Port {
    Port { udp: true, number: n }
}

impl World {
    /// A 2-node sim with NetworkPolicy on (and `env`), and the 9 pods serving.
    async fn start(tag: &str, env: &[&str]) -> World {
        let mut args = vec!["--network-policy"];
        args.extend_from_slice(env);
        let sim = SimProc::start(tag, 2, &args);
        let admin = vpc_sim::kubeapi::client(&sim.record().kube.as_ref().expect("--kube").admin).await.unwrap();
        let all_policies = Api::<NetworkPolicy>::all(admin.clone()).list(&ListParams::default()).await.unwrap();
        let mut w = World { sim, admin, members: Vec::new(), others: all_policies.items.len() };
        for (i, ns) in NS.iter().enumerate() {
            for (j, pod) in PODS.iter().enumerate() {
                let mut labels = vec![("app", *pod)];
                if *pod == "c" {
                    labels.push(("tier", "edge"));
                }
                let served = w.start_pod((i + j) % 2, ns, pod, &labels);
                w.members.push((format!("{ns}{pod}"), P { ns, pod }, served));
            }
        }
        for ns in NS {
            w.label_namespace(ns, ns).await;
        }
        w
    }

    /// Stops the sim; its log must show no panic.
    fn finish(self) {
        let World { sim, members, .. } = self;
        drop(members);
        let (log, _state) = sim.stop();
        assert!(!log.contains("panicked"), "{log}");
    }

    fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.sim.prefix)
    }

    fn start_pod(&self, node: usize, ns: &str, name: &str, labels: &[(&str, &str)]) -> Served {
        let pod = Pod {
            state_dir: self.sim.state.path().to_path_buf(),
            node,
            namespace: self.ns(ns),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            named_ports: vec![("http".into(), if name == "b" { 81 } else { 80 }, "TCP".into())],
            ..Pod::default()
        };
        Served::start(pod, &[tcp(80), tcp(81), udp(80), udp(53)], |_| {}).expect("pod started")
    }

    fn ip(&self, key: &str) -> String {
        self.members.iter().find(|(k, _, _)| k == key).map(|(_, _, s)| s.ip.clone()).unwrap()
    }

    /// The pairs `truth` allows, in the matrix's order.
    fn want(&self, truth: &dyn Fn(P, P) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (a, pa, _) in &self.members {
            for (b, pb, _) in &self.members {
                if a != b && truth(*pa, *pb) {
                    out.push(format!("{a}>{b}"));
                }
            }
        }
        out
    }

    fn check(&self, case: &str, port: Port, truth: &dyn Fn(P, P) -> bool) {
        let members: Vec<(&str, &Served)> = self.members.iter().map(|(k, _, s)| (k.as_str(), s)).collect();
        expect(&members, port, &self.want(truth), case);
    }

    fn policies(&self, ns: &str) -> Api<NetworkPolicy> {
        Api::namespaced(self.admin.clone(), &self.ns(ns))
    }

    /// Replaces every policy with `policies` (namespace letter, object), and waits until both nodes' enforcers
    /// hold that many: the matrix is then probed against the new table, never a stale one.
    async fn set(&self, policies: &[(&str, Value)]) {
        for ns in NS {
            self.policies(ns).delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
        }
        self.wait_policies(0).await;
        for (ns, spec) in policies {
            let np: NetworkPolicy = serde_json::from_value(spec.clone()).unwrap();
            self.policies(ns).create(&PostParams::default(), &np).await.expect("create NetworkPolicy");
        }
        self.wait_policies(policies.len()).await;
    }

    async fn wait_policies(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in 0..2 {
            loop {
                let status = self.sim.vpcctl(node, &["policy", "status"]);
                if policies_held(&status) == Some(self.others + n) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {node} never held {n} policies:\n{status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn label_namespace(&self, ns: &str, team: &str) {
        let patch = json!({"metadata": {"labels": {"team": team}}});
        Api::<Namespace>::all(self.admin.clone())
            .patch(&self.ns(ns), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn label_pod(&self, ns: &str, pod: &str, app: &str) {
        let patch = json!({"metadata": {"labels": {"app": app}}});
        Api::<KubePod>::namespaced(self.admin.clone(), &self.ns(ns))
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// "table           N policies, …" of `vpcctl policy status`.
fn policies_held(status: &str) -> Option<usize> {
    let line = status.lines().find(|l| l.starts_with("table "))?;
    line.trim_start_matches("table").trim().split(' ').next()?.parse().ok()
}

/// A policy named `name` selecting `selector` (a podSelector) with the given spec fields.
fn np(name: &str, selector: Value, spec: Value) -> Value {
    let mut s = spec;
    s["podSelector"] = selector;
    json!({"metadata": {"name": name}, "spec": s})
}

fn app(a: &str) -> Value {
    json!({"matchLabels": {"app": a}})
}

fn all() -> Value {
    json!({})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn the_reachability_matrix_matches_each_cases_truth_table() {
    let _one = ONE_AT_A_TIME.lock().await;
    // No cooldown: a deleted pod's address is the next one handed out on its node (the IP-reuse case).
    let mut w = World::start("nm", &["IP_COOLDOWN_PERIOD=0"]).await;
    let ip = |k: &str| w.ip(k);
    let mut cases = 0;
    macro_rules! case {
        ($name:expr, $port:expr, $truth:expr) => {{
            w.check($name, $port, &$truth);
            cases += 1;
        }};
    }
    let any = |_: P, _: P| true;
    let deny_in = |name: &str| np(name, all(), json!({"policyTypes": ["Ingress"]}));
    let deny_out = |name: &str| np(name, all(), json!({"policyTypes": ["Egress"]}));

    case!("no policy", tcp(80), any);
    case!("no policy, UDP", udp(80), any);

    w.set(&[("x", deny_in("deny"))]).await;
    case!("default deny ingress in x", tcp(80), |_, t: P| t.ns != "x");
    case!("default deny ingress in x, UDP", udp(80), |_, t: P| t.ns != "x");

    w.set(&[("x", deny_out("deny"))]).await;
    case!("default deny egress in x", tcp(80), |f: P, _| f.ns != "x");

    w.set(&[("x", np("deny", all(), json!({"policyTypes": ["Ingress", "Egress"]})))]).await;
    case!("default deny both in x", tcp(80), |f: P, t: P| f.ns != "x" && t.ns != "x");

    w.set(&[("x", deny_in("deny")), ("x", np("all", all(), json!({"ingress": [{}]})))]).await;
    case!("allow all beside a deny", tcp(80), any);

    let from = |peers: Value| json!({"ingress": [{"from": peers}]});
    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": app("b")}]))))]).await;
    case!("podSelector: x/a from x's app=b", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xb"));

    let expr =
        |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]});
    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": expr("In", &["b", "c"])}]))))]).await;
    case!("podSelector In", tcp(80), |f: P, t: P| !t.is("xa") || (f.ns == "x" && f.pod != "a"));

    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": expr("NotIn", &["b"])}]))))]).await;
    case!("podSelector NotIn", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xc"));

    let tier = |op: &str| json!({"matchExpressions": [{"key": "tier", "operator": op}]});
    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": tier("Exists")}]))))]).await;
    case!("podSelector Exists", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xc"));

    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": tier("DoesNotExist")}]))))]).await;
    case!("podSelector DoesNotExist", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xb"));

    let team = |t: &str| json!({"matchLabels": {"team": t}});
    w.set(&[("x", np("p", app("a"), from(json!([{"namespaceSelector": team("y"), "podSelector": app("b")}]))))]).await;
    case!("namespaceSelector AND podSelector", tcp(80), |f: P, t: P| !t.is("xa") || f.is("yb"));

    w.set(&[("x", np("p", app("a"), from(json!([{"namespaceSelector": team("y")}, {"podSelector": app("b")}]))))])
        .await;
    case!("namespaceSelector OR podSelector", tcp(80), |f: P, t: P| !t.is("xa") || f.ns == "y" || f.is("xb"));

    w.set(&[("x", np("p", app("a"), from(json!([{"namespaceSelector": {}, "podSelector": app("c")}]))))]).await;
    case!("empty namespaceSelector: every namespace", tcp(80), |f: P, t: P| !t.is("xa") || f.pod == "c");

    let by_name = json!({"matchLabels": {"kubernetes.io/metadata.name": w.ns("z")}});
    w.set(&[("x", np("p", app("a"), from(json!([{"namespaceSelector": by_name}]))))]).await;
    case!("namespace by its name label", tcp(80), |f: P, t: P| !t.is("xa") || f.ns == "z");

    let block = |cidr: String, except: Vec<String>| json!([{"ipBlock": {"cidr": cidr, "except": except}}]);
    w.set(&[("x", np("p", app("a"), from(block(format!("{}/32", ip("yb")), vec![]))))]).await;
    case!("ipBlock of one pod", tcp(80), |f: P, t: P| !t.is("xa") || f.is("yb"));

    w.set(&[("x", np("p", app("a"), from(block("10.0.0.0/16".into(), vec![format!("{}/32", ip("yc"))]))))]).await;
    case!("ipBlock with an except covering a pod", tcp(80), |f: P, t: P| !t.is("xa") || !f.is("yc"));

    let host_bits = format!("{}/16", ip("yb"));
    w.set(&[("x", np("p", app("a"), from(block(host_bits, vec![format!("{}/32", ip("xb"))]))))]).await;
    case!("a CIDR with host bits", tcp(80), |f: P, t: P| !t.is("xa") || !f.is("xb"));

    let ports = |p: Value| json!({"ingress": [{"ports": p}]});
    w.set(&[("x", np("p", app("a"), ports(json!([{"protocol": "UDP", "port": 80}]))))]).await;
    case!("UDP 80 only: TCP 80 closed", tcp(80), |_, t: P| !t.is("xa"));
    case!("UDP 80 only: UDP 80 open", udp(80), any);

    w.set(&[("x", np("p", app("a"), ports(json!([{"protocol": "SCTP", "port": 80}]))))]).await;
    case!("an SCTP rule admits no TCP", tcp(80), |_, t: P| !t.is("xa"));

    w.set(&[("x", np("p", all(), ports(json!([{"port": "http"}]))))]).await;
    case!("named port: http is 80 on a and c", tcp(80), |_, t: P| t.ns != "x" || t.pod != "b");
    case!("named port: http is 81 on b", tcp(81), |_, t: P| t.ns != "x" || t.pod == "b");

    w.set(&[("x", np("p", all(), ports(json!([{"port": 81, "endPort": 82}]))))]).await;
    case!("port range 81-82: 80 closed", tcp(80), |_, t: P| t.ns != "x");
    case!("port range 81-82: 81 open", tcp(81), any);

    let dns_only = json!({"policyTypes": ["Egress"], "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]});
    w.set(&[("x", np("p", all(), dns_only))]).await;
    case!("egress deny with DNS allowed: TCP", tcp(80), |f: P, _| f.ns != "x");
    case!("egress deny with DNS allowed: DNS", udp(53), any);

    let both = json!({"policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": team("y")}]}], "egress": [{"to": [{"namespaceSelector": team("z")}]}]});
    w.set(&[("x", np("p", app("a"), both))]).await;
    case!("ingress and egress together", tcp(80), |f: P, t: P| (!t.is("xa") || f.ns == "y")
        && (!f.is("xa") || t.ns == "z"));

    let from_ns = |t: &str| from(json!([{"namespaceSelector": team(t)}]));
    w.set(&[("x", np("p1", app("a"), from_ns("y"))), ("x", np("p2", app("a"), from_ns("z")))]).await;
    case!("a union of policies", tcp(80), |f: P, t: P| !t.is("xa") || f.ns != "x");

    w.set(&[("y", np("nobody", app("nobody"), json!({"policyTypes": ["Ingress", "Egress"]})))]).await;
    case!("a policy selecting no pod changes nothing", tcp(80), any);

    // Live changes: allow → deny and deny → allow in one step (y's access replaced by z's), then delete.
    w.set(&[("x", np("p", app("a"), from_ns("y")))]).await;
    case!("from y", tcp(80), |f: P, t: P| !t.is("xa") || f.ns == "y");
    let mut np_z: NetworkPolicy = serde_json::from_value(np("p", app("a"), from_ns("z"))).unwrap();
    np_z.metadata.resource_version = w.policies("x").get("p").await.unwrap().metadata.resource_version;
    w.policies("x").replace("p", &PostParams::default(), &np_z).await.unwrap();
    case!("allow → deny for y, deny → allow for z", tcp(80), |f: P, t: P| !t.is("xa") || f.ns == "z");
    w.set(&[]).await;
    case!("policy deleted", tcp(80), any);

    // Relabelling: a pod out of a peer selector, a namespace into one.
    w.set(&[("x", np("p", app("a"), from(json!([{"namespaceSelector": {}, "podSelector": app("b")}]))))]).await;
    case!("from app=b anywhere", tcp(80), |f: P, t: P| !t.is("xa") || f.pod == "b");
    w.label_pod("y", "b", "b2").await;
    case!("y/b relabelled out", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xb") || f.is("zb"));
    w.label_pod("y", "b", "b").await;
    w.set(&[("x", np("p", app("a"), from_ns("y")))]).await;
    w.label_namespace("z", "y").await;
    case!("namespace z relabelled team=y", tcp(80), |f: P, t: P| !t.is("xa") || f.ns != "x");
    w.label_namespace("z", "z").await;
    case!("namespace z relabelled back", tcp(80), |f: P, t: P| !t.is("xa") || f.ns == "y");

    // IP reuse: x/b (allowed into x/a) goes; a pod the policy does not allow gets its address on the same node.
    w.set(&[("x", np("p", app("a"), from(json!([{"podSelector": app("b")}]))))]).await;
    case!("from x/b", tcp(80), |f: P, t: P| !t.is("xa") || f.is("xb"));
    let at = w.members.iter().position(|(k, _, _)| k == "xb").unwrap();
    let (_, _, old) = w.members.remove(at);
    let (old_ip, node) = (old.ip.clone(), old.pod.node);
    old.pod.del(false).expect("DEL x/b");
    drop(old);
    let reuse = w.start_pod(node, "x", "n", &[("app", "n")]);
    assert_eq!(reuse.ip, old_ip, "x/n reuses x/b's address (lowest free address, no cooldown)");
    w.members.insert(at, ("xn".into(), P { ns: "x", pod: "n" }, reuse));
    case!("a new pod on a reused address is not the old one", tcp(80), |_, t: P| !t.is("xa"));

    w.set(&[]).await;
    case!("all deleted", tcp(80), any);
    assert!(cases >= 30, "{cases} cases");
    w.finish();
}

/// NETWORK_POLICY_ENFORCING_MODE=strict: a pod no policy selects is denied both ways; a pod some policy selects is
/// judged direction by direction as in standard mode (an egress-only policy leaves its ingress open, as aws-vpc-cni).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn strict_mode_denies_pods_no_policy_selects() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = World::start("ns", &["NETWORK_POLICY_ENFORCING_MODE=strict"]).await;
    w.check("strict, no policy: nothing reaches anything", tcp(80), &|_, _| false);
    let why =
        w.sim.vpcctl(0, &["policy", "explain", &format!("{}/a", w.ns("x")), &format!("{}/b", w.ns("y")), "tcp/80"]);
    assert!(why.contains("DENIED") && why.contains("strict mode: no policy selects the pod"), "{why}");

    let open =
        |name: &str| np(name, all(), json!({"policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]}));
    w.set(&[("x", open("open"))]).await;
    w.check("strict, x allows all: x among itself only", tcp(80), &|f, t| f.ns == "x" && t.ns == "x");

    let egress_only = np("out", all(), json!({"policyTypes": ["Egress"], "egress": [{}]}));
    w.set(&[("x", open("open")), ("y", egress_only)]).await;
    w.check("strict, y selected by an egress-only policy: its ingress is open", tcp(80), &|f, t| {
        f.ns != "z" && t.ns != "z"
    });
    w.set(&[]).await;
    w.check("strict, policies deleted: nothing again", tcp(80), &|_, _| false);
    w.finish();
}

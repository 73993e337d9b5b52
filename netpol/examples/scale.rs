//! NetworkPolicy at cluster scale (`make bench` runs it in release): 1000 policies × 2000 pods in 50 namespaces,
//! a mix of what clusters write (pod and namespace selectors with expressions, ipBlocks with excepts, numbered and
//! named ports, default denies, DNS-only egress), 30 of the pods on this node. Prints the compile and render
//! times, what an ADD costs on the CPU (compile with the new pod, element changes against the loaded table), the
//! table's size, and the process's peak RSS, with the issue's goals met or not.
//!
//! ```sh
//! cargo run --release -p vpc-cni-netpol --example scale [-- POLICIES PODS]
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netpol::*;

const NAMESPACES: usize = 50;
const LOCAL_PODS: usize = 30;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn cluster(pods: usize) -> Cluster {
    let mut c = Cluster::default();
    for i in 0..NAMESPACES {
        let env = if i % 3 == 0 { "dev" } else { "prod" };
        c.insert_namespace(&format!("ns{i}"), labels(&[("team", format!("t{}", i % 10)), ("env", env.into())]));
    }
    c.insert_namespace("kube-system", Labels::new());
    for j in 0..pods {
        let tier = ["web", "db", "cache"][j % 3];
        let mut named_ports = BTreeMap::new();
        if j % 3 == 0 {
            named_ports.insert("http".to_string(), (Proto::Tcp, 8080 + (j % 2) as u16));
        }
        c.pods.push(PodInfo {
            namespace: format!("ns{}", j % NAMESPACES),
            name: format!("pod{j}"),
            labels: labels(&[
                ("app", format!("a{}", j % 20)),
                ("tier", tier.into()),
                ("version", format!("v{}", j % 2)),
            ]),
            ip: Some(Ipv4Addr::new(10, 1 + (j / 250) as u8, (j % 250) as u8, 10)),
            host_network: false,
            named_ports,
        });
    }
    c
}

fn sel(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: vec![] }
}

fn policies(n: usize) -> Vec<Policy> {
    (0..n)
        .map(|i| {
            let namespace = format!("ns{}", i % NAMESPACES);
            let app = sel(&[("app", format!("a{}", i % 20))]);
            let mut p = Policy {
                namespace,
                name: format!("p{i}"),
                pod_selector: app,
                types: PolicyTypes { ingress: true, egress: false },
                ingress: vec![],
                egress: vec![],
            };
            let tcp = |port: u16| PortSpec::number(Proto::Tcp, port);
            match i % 6 {
                0 => p.ingress.push(Rule {
                    peers: vec![Peer::Pods { namespaces: None, pods: Some(sel(&[("tier", "web".into())])) }],
                    ports: vec![tcp(8080)],
                }),
                1 => p.ingress.push(Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(sel(&[("team", format!("t{}", i % 10))])),
                        pods: Some(LabelSelector {
                            match_labels: Labels::new(),
                            match_expressions: vec![Requirement {
                                key: "tier".into(),
                                op: Operator::In,
                                values: vec!["web".into(), "cache".into()],
                            }],
                        }),
                    }],
                    ports: vec![],
                }),
                2 => {
                    p.types = PolicyTypes { ingress: false, egress: true };
                    p.egress.push(Rule {
                        peers: vec![Peer::IpBlock {
                            cidr: "10.0.0.0/8".parse().unwrap(),
                            except: vec![format!("10.{}.0.0/16", 1 + i % 8).parse().unwrap()],
                        }],
                        ports: vec![tcp(443)],
                    });
                }
                3 => p.ingress.push(Rule {
                    peers: vec![],
                    ports: vec![PortSpec {
                        proto: Proto::Tcp,
                        port: Some(PortRef::Name("http".into())),
                        end_port: None,
                    }],
                }),
                4 => {
                    p.pod_selector = LabelSelector::everything();
                    p.types = PolicyTypes { ingress: true, egress: true };
                }
                _ => {
                    p.types = PolicyTypes { ingress: false, egress: true };
                    p.egress.push(Rule {
                        peers: vec![Peer::Pods {
                            namespaces: Some(sel(&[("kubernetes.io/metadata.name", "kube-system".into())])),
                            pods: None,
                        }],
                        ports: vec![PortSpec::number(Proto::Udp, 53)],
                    });
                }
            }
            p
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Peak resident memory of this process (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn goal(name: &str, value: f64, limit: f64, unit: &str) {
    let verdict = if value <= limit { "met" } else { "NOT met" };
    println!("goal {name} ≤ {limit} {unit}: {value:.1} {unit} — {verdict}");
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n_policies, n_pods) = (args.first().copied().unwrap_or(1000), args.get(1).copied().unwrap_or(2000));
    let policies = policies(n_policies);
    let cluster = cluster(n_pods);
    let step = (n_pods / LOCAL_PODS).max(1);
    let local: BTreeMap<String, String> = cluster
        .pods
        .iter()
        .step_by(step)
        .take(LOCAL_PODS)
        .enumerate()
        .map(|(i, p)| (p.key(), format!("eni{i:04}")))
        .collect();
    let veth_of = |k: &str| local.get(k).cloned();

    let mut compiled = compile(&policies, &cluster);
    let runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            compiled = compile(&policies, &cluster);
            t.elapsed()
        })
        .collect();
    let compile_ms = ms(median(runs.clone()));
    let t = Instant::now();
    let script = render(&compiled, &veth_of);
    let render_ms = ms(t.elapsed());
    let maps = Maps::of(&compiled, &veth_of);

    // An ADD on this node: one more pod (like pod0's labels, in ns0), compiled with it, diffed to elements.
    let mut added = cluster.clone();
    let mut pod = cluster.pods[0].clone();
    pod.name = "new".into();
    pod.ip = Some(Ipv4Addr::new(10, 200, 0, 1));
    added.pods.push(pod);
    let mut local_added = local.clone();
    local_added.insert("ns0/new".into(), "eninew".into());
    let t = Instant::now();
    let next = compile(&policies, &added);
    let next_maps = Maps::of(&next, &|k: &str| local_added.get(k).cloned());
    let change = delta(&compiled, &maps, &next, &next_maps);
    let add_ms = ms(t.elapsed());

    // The ADD path ipamd takes: the pod is in the cluster already (the API server sent it), its address is new.
    let mut known = added.clone();
    known.pods.last_mut().unwrap().ip = None;
    let before = compile(&policies, &known);
    let before_maps = Maps::of(&before, &|k: &str| local.get(k).cloned());
    let fast_runs: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let next = before.readdressed(&added, "ns0/new").expect("a pod of the cluster");
            let next_maps = Maps::of(&next, &|k: &str| local_added.get(k).cloned());
            let d = delta(&before, &before_maps, &next, &next_maps).expect("elements only");
            assert!(!d.script.is_empty());
            t.elapsed()
        })
        .collect();
    let fast_ms = ms(median(fast_runs));
    let chains = compiled.ingress.chains.len() + compiled.egress.chains.len();
    let rules: usize = compiled.ingress.chains.iter().chain(&compiled.egress.chains).map(|c| c.rules.len()).sum();
    let elements: usize = compiled.peer_sets.iter().map(|s| s.ranges.len()).sum::<usize>()
        + compiled.named_sets.iter().map(Vec::len).sum::<usize>();
    println!(
        "NetworkPolicy at scale: {n_policies} policies × {n_pods} pods in {NAMESPACES} namespaces, {} on this node",
        local.len()
    );
    println!(
        "compile: p50 {compile_ms:.1} ms (5 runs, max {:.1} ms); render: {render_ms:.1} ms, {} KiB of script",
        ms(*runs.iter().max().unwrap()),
        script.len() / 1024
    );
    println!(
        "table: {chains} chains, {rules} rules, {} peer sets, {} port sets, {} named-port sets, {elements} set elements",
        compiled.peer_sets.len(),
        compiled.port_sets.len(),
        compiled.named_sets.len()
    );
    match change {
        Some(d) => println!(
            "a new pod compiled with the whole cluster: {add_ms:.1} ms on the CPU, then {} element command(s)",
            d.script.lines().count()
        ),
        None => {
            println!("a new pod compiled with the whole cluster: {add_ms:.1} ms on the CPU, then a table replacement")
        }
    }
    println!(
        "an ADD as ipamd makes it (the pod known, its address new): readdressed + diff p50 {fast_ms:.2} ms on the CPU"
    );
    let rss = peak_rss_mib();
    println!("peak RSS (VmHWM): {rss:.1} MiB");
    goal("compile p50", compile_ms, 500.0, "ms");
    goal("peak RSS", rss, 64.0, "MiB");
    goal("ADD path on the CPU (the kernel's part is measured by vpc-bench)", fast_ms, 1.0, "ms");
}

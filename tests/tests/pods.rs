//! Pods through the real `vpc-cni` plugin in a 2-node vpc-sim (root + netns): VPC addresses on primary and
//! secondary ENIs, connectivity across nodes with source IPs preserved, CHECK, and every DEL case leaving
//! nothing behind. All namespaces belong to the sim and are removed with it.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use vpc_cni_proto::v1 as pb;
use vpc_sim::ipamd_proc::sibling_binary;
use vpc_sim::localstack::{self, node_enis};
use vpc_sim::netns::{self, ip_in};
use vpc_sim::sim::pods::{Pod, PodError};
use vpc_sim::testkit::{SimProc, ping, tcp_peer_seen, wait_until};

fn pod(sim: &SimProc, node: usize, name: &str) -> Pod {
    Pod {
        state_dir: sim.state.path().to_path_buf(),
        node,
        namespace: "default".into(),
        name: name.into(),
        ..Default::default()
    }
}

/// ADD, retried while the plugin says "try again later" (code 11), as kubelet does while ipamd attaches an ENI.
fn add_retrying(p: &Pod) -> Value {
    p.add_retrying(std::time::Duration::from_secs(30)).unwrap_or_else(|e| panic!("ADD {}: {e}", p.name))
}

fn ip_of(result: &Value) -> String {
    vpc_sim::sim::pods::pod_ip(result)
}

/// Nothing of the pod is left on the node: no /32 route, no rule naming its IP, and (once the kernel has
/// finished deleting the pod's namespace, in the background) no host veth.
fn assert_gone(node_ns: &str, ip: &str, host_veth: &str) {
    assert_unrouted(node_ns, ip);
    vpc_sim::testkit::wait_link_gone(node_ns, host_veth);
}

/// DEL's part: no /32 route and no rule naming the pod's IP.
fn assert_unrouted(node_ns: &str, ip: &str) {
    let routes = ip_in(node_ns, &["route"]).unwrap();
    assert!(!routes.lines().any(|l| l.starts_with(&format!("{ip} "))), "route left:\n{routes}");
    let rules = ip_in(node_ns, &["rule"]).unwrap();
    assert!(!rules.contains(&format!("{ip} ")) && !rules.lines().any(|l| l.ends_with(ip)), "rule left:\n{rules}");
}

fn host_veth(result: &Value) -> String {
    result["interfaces"][0]["name"].as_str().unwrap().to_string()
}

async fn allocations(socket: &std::path::Path) -> usize {
    let ch = vpc_cni_proto::uds::connect(socket, None).await.unwrap();
    let mut c = vpc_cni_proto::v1::introspection_client::IntrospectionClient::new(ch);
    c.list_allocations(pb::ListAllocationsRequest {}).await.unwrap().into_inner().allocations.len()
}

/// Runs the plugin directly with `stdin` and `env`; returns (exit ok, stdout JSON).
fn raw_plugin(node_ns: &str, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(sibling_binary("vpc-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn pods_get_vpc_addresses_reach_each_other_and_leave_nothing_behind() {
    // A short cooldown: GC (below) releases only allocations older than it.
    let sim = SimProc::start("vp", 2, &["IP_COOLDOWN_PERIOD=2"]);
    let rec = sim.record();
    let ec2 = localstack::ec2_client();

    // Six pods per node on t3.medium (5 secondary IPs per ENI): the sixth lands on the secondary ENI.
    let mut ips: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut results = BTreeMap::new();
    for node in 0..2 {
        for i in 0..6 {
            let r = add_retrying(&pod(&sim, node, &format!("p{i}")));
            ips.insert((node, i), ip_of(&r));
            results.insert((node, i), r);
        }
    }
    // Which ENI holds each pod IP, per EC2.
    let mut device = BTreeMap::new();
    for node in 0..2 {
        for e in node_enis(&ec2, &rec.vpc.instance_ids[node]).await.unwrap() {
            for ip in e.secondary_ips {
                device.insert(ip, e.device_index);
            }
        }
    }
    let on = |node: usize, dev: i32| {
        (0..6).find(|i| device.get(&ips[&(node, *i)]) == Some(&dev)).map(|i| (node, i)).expect("a pod on that ENI")
    };
    let (a0, a1, b0, b1) = (on(0, 0), on(0, 1), on(1, 0), on(1, 1));
    let ns = |p: (usize, usize)| pod(&sim, p.0, &format!("p{}", p.1)).netns().unwrap();

    // Every combination of primary/secondary ENI pods across the two nodes, both ways, sources preserved.
    for (src, dst) in [(a0, b0), (a0, b1), (a1, b0), (a1, b1), (b1, a1), (b0, a1)] {
        assert!(ping(&ns(src), &ips[&dst]), "ping {src:?} {} → {dst:?} {}", ips[&src], ips[&dst]);
        let seen = tcp_peer_seen(&ns(dst), &ips[&dst], &ns(src)).unwrap();
        assert_eq!(seen, ips[&src], "the VPC sees the pod's own IP as source");
    }
    // Pods reach the nodes, and nodes their pods.
    let node1_ip = node_enis(&ec2, &rec.vpc.instance_ids[1]).await.unwrap()[0].primary_ip.clone();
    assert!(ping(&ns(a1), &node1_ip), "secondary-ENI pod → other node");
    assert!(ping(&sim.node(0), &ips[&a1]) && ping(&sim.node(1), &ips[&a0]), "nodes → pods");

    // CHECK passes, then fails once something ADD made is gone.
    let p = pod(&sim, a1.0, &format!("p{}", a1.1));
    p.check().unwrap();
    ip_in(&sim.node(0), &["rule", "del", "priority", "1536", "from", &ips[&a1]]).unwrap();
    match p.check() {
        Err(PodError::Plugin { json, .. }) => {
            assert_eq!(json["code"], 102, "{json}");
            assert!(json["details"].as_str().unwrap().contains("rule 1536"), "{json}");
        }
        other => panic!("CHECK should fail: {other:?}"),
    }

    // DEL twice; the released IP's conntrack entries go too (a reused IP inherits no flows).
    let socket0 = sim.state.path().join("node-0/ipamd.sock");
    let before = allocations(&socket0).await;
    let a1_ip: std::net::Ipv4Addr = ips[&a1].parse().unwrap();
    let flows = || netns::in_netns(&sim.node(0), || Ok(datapath::conntrack::count(a1_ip).unwrap())).unwrap();
    assert!(flows() > 0, "the pings above left conntrack entries for {a1_ip}");
    // DEL removes the pod's route and rules and leaves the veth to the namespace: until the runtime deletes the
    // namespace the veth is there, carrying nothing; with the namespace it goes. Then DEL again.
    p.del(true).unwrap();
    assert_unrouted(&sim.node(0), &ips[&a1]);
    assert!(ip_in(&sim.node(0), &["link"]).unwrap().contains(&host_veth(&results[&a1])), "veth left to the netns");
    netns::delete(&p.netns().unwrap()).unwrap();
    pod(&sim, a1.0, &format!("p{}", a1.1)).del(true).unwrap();
    assert_gone(&sim.node(0), &ips[&a1], &host_veth(&results[&a1]));
    assert_eq!(allocations(&socket0).await, before - 1);
    wait_until(&format!("conntrack entries of {a1_ip} gone after DEL"), std::time::Duration::from_secs(5), || {
        flows() == 0
    });

    // DEL after the netns is gone.
    let q = pod(&sim, a0.0, &format!("p{}", a0.1));
    netns::delete(&q.netns().unwrap()).unwrap();
    q.del(true).unwrap();
    assert_gone(&sim.node(0), &ips[&a0], &host_veth(&results[&a0]));

    // ADD failing half-way (the pod netns already has an eth0): nothing left, no IP kept.
    let bad = pod(&sim, 0, "clash");
    let bad_ns = bad.netns().unwrap();
    netns::create(&bad_ns).unwrap();
    ip_in(&bad_ns, &["link", "add", "eth0", "type", "veth", "peer", "name", "other0"]).unwrap();
    let before = allocations(&socket0).await;
    match bad.add() {
        Err(PodError::Plugin { json, .. }) => assert_eq!(json["code"], 101, "{json}"),
        other => panic!("ADD should fail: {other:?}"),
    }
    assert_eq!(allocations(&socket0).await, before, "the IP was given back");
    let veth = datapath::podnet::host_veth_name("eni", "default", "clash");
    assert!(!ip_in(&sim.node(0), &["link"]).unwrap().contains(&veth));
    netns::delete(&bad_ns).unwrap();

    // Malformed input changes nothing and gets the spec's codes.
    let node0 = sim.node(0);
    let conf = std::fs::read_to_string(sim.state.path().join("node-0/10-vpc-cni.conflist")).unwrap();
    let plugin_conf: Value = serde_json::from_str(&conf).unwrap();
    let mut one = plugin_conf["plugins"][0].clone();
    one["name"] = plugin_conf["name"].clone();
    one["cniVersion"] = plugin_conf["cniVersion"].clone();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bad1"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
    ];
    let before_links = ip_in(&node0, &["link"]).unwrap();
    let (ok, out) = raw_plugin(&node0, &env, "{not json");
    assert!(!ok && out["code"] == 6, "{out}");
    let mut old = one.clone();
    old["cniVersion"] = "0.1.0".into();
    let (ok, out) = raw_plugin(&node0, &env, &old.to_string());
    assert!(!ok && out["code"] == 1, "{out}");
    let (ok, out) = raw_plugin(&node0, &env[..2], &one.to_string());
    assert!(!ok && out["code"] == 4, "{out}");
    let (ok, out) = raw_plugin(&node0, &[("CNI_COMMAND", "VERSION")], "");
    assert!(ok && out["supportedVersions"].as_array().unwrap().len() == 5, "{out}");
    assert_eq!(ip_in(&node0, &["link"]).unwrap(), before_links);
    assert_eq!(allocations(&socket0).await, before);

    // STATUS is ready; GC releases exactly the allocations the runtime no longer lists.
    let mut one = one.clone();
    one["cniVersion"] = "1.1.0".into();
    let (ok, out) = raw_plugin(&node0, &[("CNI_COMMAND", "STATUS")], &one.to_string());
    assert!(ok, "{out}");
    let left: Vec<Pod> =
        (0..6).map(|i| pod(&sim, 0, &format!("p{i}"))).filter(|p| p.netns().is_ok_and(|n| netns::exists(&n))).collect();
    assert_eq!(allocations(&socket0).await, left.len());
    // A pod whose ADD lands just after the runtime listed its attachments: younger than the cooldown, it stays.
    let young = pod(&sim, 0, "young");
    add_retrying(&young);
    let mut gc = one.clone();
    gc["cni.dev/valid-attachments"] =
        left[1..].iter().map(|p| serde_json::json!({"containerID": p.container_id(), "ifname": "eth0"})).collect();
    // What the unlisted pod has on the host: its rules and /32 route, which no DEL will remove now.
    let gone_ip = ips[&(0, left[0].name[1..].parse::<usize>().unwrap())].clone();
    let host_state = || {
        let rules = ip_in(&node0, &["rule"]).unwrap();
        let routes = ip_in(&node0, &["route", "show", &format!("{gone_ip}/32")]).unwrap();
        (rules.lines().filter(|l| l.split_whitespace().any(|w| w == gone_ip)).count(), routes.trim().to_string())
    };
    assert!(host_state().0 >= 1 && !host_state().1.is_empty(), "{gone_ip} is wired before GC: {:?}", host_state());
    let (ok, out) = raw_plugin(&node0, &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(ok, "{out}");
    assert_eq!(
        allocations(&socket0).await,
        left.len(),
        "GC released the one old attachment not listed, not the young one"
    );
    assert_eq!(host_state(), (0, String::new()), "GC left {gone_ip}'s rules or route on the node");
    let (ok, out) = raw_plugin(&node0, &[("CNI_COMMAND", "GC")], &one.to_string());
    assert!(!ok && out["code"] == 7, "GC without cni.dev/valid-attachments must not release everything: {out}");
    assert_eq!(allocations(&socket0).await, left.len());
    young.del(false).unwrap();
    assert_eq!(allocations(&socket0).await, left.len() - 1);

    // A pod recreated under the same name (a StatefulSet pod) gets a new sandbox; the runtime's DEL for the old
    // sandbox arrives late. Both sandboxes want the same host veth name: the new ADD replaces the stale veth, and
    // the late DEL releases the old IP but must leave the new sandbox's veth, routes and rules alone.
    let old_sb = pod(&sim, 1, "sts-0");
    let old_ip = ip_of(&add_retrying(&old_sb));
    let new_sb = Pod { sandbox: 1, ..old_sb.clone() };
    let new_r = add_retrying(&new_sb);
    let new_ip = ip_of(&new_r);
    assert_ne!(old_ip, new_ip);
    old_sb.del(false).unwrap();
    let node0_ip = node_enis(&ec2, &rec.vpc.instance_ids[0]).await.unwrap()[0].primary_ip.clone();
    assert!(ping(&new_sb.netns().unwrap(), &node0_ip), "new sandbox → node 0 after the late DEL");
    assert!(ping(&sim.node(0), &new_ip), "node 0 → new sandbox after the late DEL");
    assert!(ip_in(&sim.node(1), &["link"]).unwrap().contains(&host_veth(&new_r)));
    new_sb.del(false).unwrap();
    assert_gone(&sim.node(1), &new_ip, &host_veth(&new_r));

    // DEL with ipamd stopped still tears the pod down.
    let r = pod(&sim, b1.0, &format!("p{}", b1.1));
    let pid = rec.pids[1];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Gone, or a zombie the sim has not reaped yet: either way it answers nothing.
    wait_until("node 1's ipamd dead", std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |st| st.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    });
    r.del(false).unwrap();
    assert_gone(&sim.node(1), &ips[&b1], &host_veth(&results[&b1]));
    drop(sim.stop());
}

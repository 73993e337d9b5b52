//! Crash safety under pod churn (root + netns): ≥ 300 pod ADD/DEL cycles through the real plugin on a vpc-sim
//! node while a second thread SIGKILLs its ipamd at random moments (≥ 10 times; the sim restarts it as the
//! kubelet would). The pool is kept moving in EC2 (WARM_IP_TARGET=2, MINIMUM_IP_TARGET=3, 1 s cooldown), so
//! kills also land between EC2 calls. Afterwards: no IP held by two live pods, ipamd's allocations are exactly
//! the live pods, every IP EC2 assigned is in ipamd's pool, and no ENI exists that ipamd does not track.
//! Then the checkpoint is corrupted and ipamd killed once more: the file is moved aside, the live pods' IPs
//! are rebuilt from the host's routes (no new pod gets one), and each is released once its pod is gone. The
//! same again with the checkpoint deleted: a missing file is not an empty node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::poll_until;
use vpc_sim::localstack::{self, node_enis};
use vpc_sim::sim::pods::{Pod, pod_ip};
use vpc_sim::testkit::SimProc;

const CYCLES: usize = 300;
const KILLS: usize = 10;
const MAX_LIVE: usize = 12;

fn pod(sim: &SimProc, name: &str) -> Pod {
    Pod {
        state_dir: sim.state.path().to_path_buf(),
        node: 0,
        namespace: "chaos".into(),
        name: name.into(),
        ..Default::default()
    }
}

/// As a runtime does: a failed ADD is followed by a DEL, then the ADD is tried again.
fn add(p: &Pod) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match p.add() {
            Ok(r) => return pod_ip(&r),
            Err(e) if Instant::now() < deadline => {
                let _ = p.del(true);
                eprintln!("ADD {} failed ({e}); DEL and retry", p.name);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("ADD {}: {e}", p.name),
        }
    }
}

fn del(p: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match p.del(false) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("DEL {} failed ({e}); retry", p.name);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("DEL {}: {e}", p.name),
        }
    }
}

async fn introspection(
    socket: &std::path::Path,
) -> Option<pb::introspection_client::IntrospectionClient<tonic::transport::Channel>> {
    let ch = vpc_cni_proto::uds::connect(socket, Some(Duration::from_secs(2))).await.ok()?;
    Some(pb::introspection_client::IntrospectionClient::new(ch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root + netns"]
async fn ipamd_killed_at_random_during_pod_churn_loses_nothing() {
    let sim =
        SimProc::start_with("ch", 1, "m5.large", &["WARM_IP_TARGET=2", "MINIMUM_IP_TARGET=3", "IP_COOLDOWN_PERIOD=1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, kills, lock) = (stop.clone(), kills.clone(), sim.state.path().join("node-0/ipamd.lock"));
        std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut last = None;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.random_range(800..3000)));
                let pid: Option<i32> = std::fs::read_to_string(&lock).ok().and_then(|s| s.trim().parse().ok());
                // Only a restarted ipamd (a new pid) is killed again, at a random point of its life.
                if let Some(pid) = pid.filter(|p| Some(*p) != last) {
                    let target = nix::unistd::Pid::from_raw(pid);
                    if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                        kills.fetch_add(1, Ordering::SeqCst);
                        last = Some(pid);
                    }
                }
            }
        })
    };

    let mut rng = rand::rng();
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let (mut cycles, mut n) = (0, 0);
    let started = Instant::now();
    while cycles < CYCLES || kills.load(Ordering::SeqCst) < KILLS {
        assert!(started.elapsed() < Duration::from_secs(900), "churn did not finish: {cycles} cycles");
        let grow = live.is_empty() || (live.len() < MAX_LIVE && rng.random_bool(0.55));
        if grow {
            let name = format!("c{n}");
            n += 1;
            let ip = add(&pod(&sim, &name));
            live.insert(name, ip);
        } else {
            let name = live.keys().nth(rng.random_range(0..live.len())).cloned().expect("a live pod");
            del(&pod(&sim, &name));
            live.remove(&name);
            cycles += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    let kills = kills.load(Ordering::SeqCst);
    eprintln!("{cycles} ADD/DEL cycles, {kills} SIGKILLs, {} live pods, {:?}", live.len(), started.elapsed());

    // No IP on two live pods.
    let distinct: BTreeSet<&String> = live.values().collect();
    assert_eq!(distinct.len(), live.len(), "an IP on two live pods: {live:?}");

    // ipamd (restarted, SERVING) holds exactly the live pods' IPs, and its pool matches EC2 once settled.
    let socket = sim.state.path().join("node-0/ipamd.sock");
    let instance = sim.record().vpc.instance_ids[0].clone();
    let ec2 = localstack::ec2_client();
    let want: BTreeMap<String, String> =
        live.iter().map(|(name, ip)| (pod(&sim, name).container_id(), ip.clone())).collect();
    let after_churn = || async {
        let mut problems = Vec::new();
        if let Some(mut c) = introspection(&socket).await
            && let (Ok(allocs), Ok(enis)) =
                (c.list_allocations(pb::ListAllocationsRequest {}).await, c.list_enis(pb::ListEnisRequest {}).await)
        {
            let held: BTreeMap<String, String> = allocs
                .into_inner()
                .allocations
                .into_iter()
                .map(|a| (a.key.map(|k| k.container_id).unwrap_or_default(), a.ipv4_addr))
                .collect();
            if held != want {
                problems.push(format!("allocations {held:?} != live pods {want:?}"));
            }
            let pool: BTreeMap<String, BTreeSet<String>> = enis
                .into_inner()
                .enis
                .into_iter()
                .map(|e| (e.eni_id, e.ips.into_iter().map(|i| i.address).collect()))
                .collect();
            let in_ec2: BTreeMap<String, BTreeSet<String>> = node_enis(&ec2, &instance)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.id, e.secondary_ips.into_iter().collect()))
                .collect();
            if pool != in_ec2 {
                problems.push(format!("pool {pool:?} != EC2 {in_ec2:?}"));
            }
            let vpc = localstack::vpc_enis(&ec2, &sim.record().vpc.vpc_id).await.unwrap();
            let untracked: Vec<_> = vpc.iter().filter(|(id, _, _)| !pool.contains_key(id)).collect();
            if !untracked.is_empty() {
                problems.push(format!("ENIs ipamd does not track: {untracked:?}"));
            }
        } else {
            problems.push("ipamd not answering".into());
        }
        problems
    };
    let problems = poll_until(Duration::from_secs(120), after_churn, Vec::is_empty).await;
    assert!(problems.is_empty(), "after the churn: {problems:#?}\n{}", sim.log());
    corrupt_checkpoint_is_rebuilt_from_host_state(&sim, &socket, &live).await;
    sim.stop();
}

async fn allocations(socket: &std::path::Path) -> Option<Vec<pb::Allocation>> {
    let mut c = introspection(socket).await?;
    Some(c.list_allocations(pb::ListAllocationsRequest {}).await.ok()?.into_inner().allocations)
}

/// Damages the checkpoint with `damage`, SIGKILLs ipamd and waits for the sim to restart it; returns the IPs
/// the new ipamd holds.
async fn kill_after(
    sim: &SimProc,
    socket: &std::path::Path,
    what: &str,
    damage: impl FnOnce(&std::path::Path),
) -> BTreeSet<String> {
    let node_dir = sim.state.path().join("node-0");
    let lock = node_dir.join("ipamd.lock");
    let pid: i32 = std::fs::read_to_string(&lock).unwrap().trim().parse().unwrap();
    damage(&node_dir.join("ipam.json"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let back = || async {
        let restarted = std::fs::read_to_string(&lock).ok().and_then(|s| s.trim().parse::<i32>().ok()) != Some(pid);
        if restarted { allocations(socket).await } else { None }
    };
    poll_until(Duration::from_secs(60), back, Option::is_some)
        .await
        .unwrap_or_else(|| panic!("ipamd did not come back after {what}\n{}", sim.log()))
        .into_iter()
        .map(|a| a.ipv4_addr)
        .collect()
}

/// A torn checkpoint, then a missing one: each time the live pods' IPs are rebuilt from the host's routes, a
/// new pod gets none of them, and each is released once its pod is gone.
async fn corrupt_checkpoint_is_rebuilt_from_host_state(
    sim: &SimProc,
    socket: &std::path::Path,
    live: &BTreeMap<String, String>,
) {
    let node_dir = sim.state.path().join("node-0");
    let mut live_ips: BTreeSet<String> = live.values().cloned().collect();
    let torn = |p: &std::path::Path| std::fs::write(p, b"{\"version\": 1, \"allocations\": [ torn").unwrap();
    let recovered = kill_after(sim, socket, "a torn checkpoint", torn).await;
    assert_eq!(recovered, live_ips, "allocations rebuilt from the host's pod routes");
    let aside = std::fs::read_dir(&node_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("ipam.json.corrupt-"));
    assert!(aside, "the corrupt file is kept aside");
    let newcomer = add(&pod(sim, "after-corrupt"));
    assert!(!live_ips.contains(&newcomer), "{newcomer} belongs to a live pod");
    live_ips.insert(newcomer);

    let missing = |p: &std::path::Path| std::fs::remove_file(p).unwrap();
    let recovered = kill_after(sim, socket, "a deleted checkpoint", missing).await;
    assert_eq!(recovered, live_ips, "a missing checkpoint is not an empty node: the routes are rebuilt");
    let newcomer = add(&pod(sim, "after-missing"));
    assert!(!live_ips.contains(&newcomer), "{newcomer} belongs to a live pod");
    live_ips.insert(newcomer);
    // Restarted before the pods go: the rebuilt allocations, saved, are still released when their routes go.
    let recovered = kill_after(sim, socket, "a plain restart", |_| {}).await;
    assert_eq!(recovered, live_ips, "a plain restart keeps what was rebuilt");

    for name in live.keys().map(String::as_str).chain(["after-corrupt", "after-missing"]) {
        del(&pod(sim, name));
    }
    // Only an answer counts: ipamd not answering is not "nothing left" (a DEL succeeds with ipamd down).
    let left =
        poll_until(Duration::from_secs(60), || allocations(socket), |l| l.as_ref().is_some_and(Vec::is_empty)).await;
    assert!(
        left.as_ref().is_some_and(Vec::is_empty),
        "rebuilt allocations not released after their pods left: {}",
        left.map_or_else(|| "ipamd does not answer".to_string(), |l| format!("{l:?}"))
    );
}

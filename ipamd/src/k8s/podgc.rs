//! Pod-aware clean-up. A runtime that never sent DEL (node crash, lost sandbox) leaves an allocation behind;
//! once its pod is gone from the API server — UID-checked, for a whole grace period, seen in a pod list that is
//! synced, and confirmed by a direct GET — the IP is released with a log line and an Event. Anything less
//! certain (watch error, unreachable API server, a GET that fails) releases nothing. Running pods whose IP
//! ipamd did not hand out are reported (status + metric): another CNI or a lost checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::mpsc::UnboundedSender;

use super::events::{Note, Regarding};
use super::{Kube, PodFacts};
use crate::clock::Mono;
use crate::pool::PoolHandle;
use crate::state::datastore::{AllocKey, Allocation, Datastore};
use crate::tasks::Heartbeat;
use datapath::HostNet;

/// Allocations whose pod has been missing (or replaced by another UID) for `grace`, counting from when this
/// loop first saw it missing, and that are at least `grace` old. `missing_since` is the loop's memory. Both
/// are measured on the pool's monotonic clock (`now` from the snapshot `ds` came with): a wall step forward
/// must not make a pod look gone for long, or its allocation old, and release a live pod's IP.
pub fn stale(
    ds: &Datastore,
    pods: &BTreeMap<String, PodFacts>,
    missing_since: &mut BTreeMap<AllocKey, Mono>,
    now: Mono,
    grace: Duration,
) -> Vec<AllocKey> {
    missing_since.retain(|k, _| ds.allocations.contains_key(k));
    let mut out = Vec::new();
    for (key, a) in &ds.allocations {
        // Outside Kubernetes (no K8S_POD_* in CNI_ARGS) there is no pod to look for.
        if a.pod_namespace.is_empty() {
            continue;
        }
        let present = pods
            .get(&format!("{}/{}", a.pod_namespace, a.pod_name))
            .is_some_and(|p| a.pod_uid.is_empty() || p.uid == a.pod_uid);
        if present {
            missing_since.remove(key);
            continue;
        }
        let since = *missing_since.entry(key.clone()).or_insert(now);
        if now.since(since) >= grace && ds.age(key, now) >= grace {
            out.push(key.clone());
        }
    }
    out
}

/// Running pod-network pods with an IP that no allocation holds, as "namespace/name ip".
pub fn unknown_pod_ips(allocations: &BTreeMap<AllocKey, Allocation>, pods: &BTreeMap<String, PodFacts>) -> Vec<String> {
    let known: BTreeSet<Ipv4Addr> = allocations.values().map(|a| a.ip).collect();
    pods.iter()
        .filter(|(_, p)| p.phase == "Running" && !p.host_network)
        .filter_map(|(k, p)| p.ip.filter(|ip| !known.contains(ip)).map(|ip| format!("{k} {ip}")))
        .collect()
}

/// What a direct GET says about an allocation's pod.
#[derive(Debug, PartialEq, Eq)]
enum Confirm {
    Gone(String),
    Alive,
    Unknown(String),
}

async fn confirm(client: kube::Client, a: &Allocation, node_name: &str) -> Confirm {
    match Api::<Pod>::namespaced(client, &a.pod_namespace).get_opt(&a.pod_name).await {
        Ok(None) => Confirm::Gone("deleted from the API server".into()),
        Ok(Some(p)) => {
            let uid = p.metadata.uid.unwrap_or_default();
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            if !a.pod_uid.is_empty() && uid != a.pod_uid {
                Confirm::Gone(format!("replaced by a pod with UID {uid}"))
            } else if !node.is_empty() && node != node_name {
                Confirm::Gone(format!("now on node {node}"))
            } else {
                Confirm::Alive
            }
        }
        Err(e) => Confirm::Unknown(e.to_string()),
    }
}

/// A pass that does not come round within this counts as a stalled loop (passes run at most 15 s apart).
pub const STALL_LIMIT: Duration = Duration::from_secs(150);

/// Everything the loop needs besides the Kubernetes handle.
pub struct PodGc<N: HostNet> {
    pub pool: PoolHandle,
    /// `None`: report unknown pod IPs only, release nothing (IPAMD_POD_GC_GRACE=0).
    pub grace: Option<Duration>,
    /// Released IPs whose conntrack entries must go, and when (host networking only).
    pub released: Option<UnboundedSender<(Ipv4Addr, tokio::time::Instant)>>,
    pub hostnet: Option<Arc<N>>,
}

/// Time between two GC passes: a quarter of the grace (a pod is released within 1.25× its grace), 1 to 15 s.
pub fn tick(grace: Option<Duration>) -> Duration {
    (grace.unwrap_or(Duration::from_secs(60)) / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

impl<N: HostNet> PodGc<N> {
    /// Runs forever (started when the Kubernetes side is on), one pass per [`tick`], beating `heartbeat` each pass.
    pub async fn run(self, kube: Kube, heartbeat: Heartbeat) {
        let node_name = kube.settings.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
        let tick = tick(self.grace);
        let mut missing_since = BTreeMap::new();
        loop {
            heartbeat.beat(STALL_LIMIT);
            tokio::time::sleep(tick).await;
            let (pods, synced, error) = {
                let v = kube.view.borrow();
                (v.pods.items.clone(), v.pods.synced, v.pods.error.clone())
            };
            if !synced {
                let why = if error.is_empty() { "listing".to_string() } else { error };
                kube.update_status(|s| s.pod_gc = format!("paused: the pod list is not trusted ({why})"));
                continue;
            }
            let Ok(snapshot) = self.pool.snapshot().await else { return };
            let allocations = &snapshot.ds.allocations;
            let unknown = unknown_pod_ips(allocations, &pods);
            kube.update_status(|s| {
                s.pod_gc = match self.grace {
                    Some(g) => format!("active (grace {}s)", g.as_secs()),
                    None => "report only (IPAMD_POD_GC_GRACE=0)".into(),
                };
                s.unknown_pod_ips = unknown;
            });
            let Some(grace) = self.grace else { continue };
            let candidates = stale(&snapshot.ds, &pods, &mut missing_since, snapshot.taken.mono, grace);
            let Some(client) = kube.client.borrow().clone() else { continue };
            for key in candidates {
                let a = &allocations[&key];
                match confirm(client.clone(), a, &node_name).await {
                    Confirm::Gone(why) => {
                        self.release(&kube, &key, a, &why).await;
                    }
                    Confirm::Alive => {
                        missing_since.remove(&key);
                    }
                    Confirm::Unknown(e) => {
                        tracing::warn!(pod = %format!("{}/{}", a.pod_namespace, a.pod_name), "not releasing: {e}")
                    }
                }
            }
        }
    }

    /// Releases `key`; `false` when it was not released now. A release that cannot be written (a full disk) is
    /// left in place by the pool, so the pod is still missing at the next pass, which tries again: this is how
    /// a DEL the runtime gave up on while the checkpoint could not be written gets carried out in the end.
    async fn release(&self, kube: &Kube, key: &AllocKey, a: &Allocation, why: &str) -> bool {
        let asked = tokio::time::Instant::now();
        let pod = format!("{}/{}", a.pod_namespace, a.pod_name);
        let a2 = match self.pool.del(key.clone()).await {
            Ok(Some((a2, _))) => a2,
            // Its DEL came meanwhile.
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(%pod, ip = %a.ip, container = %key.container_id, "pod is {why} but its IP is not released yet (tried again next pass): {e}");
                return false;
            }
        };
        tracing::warn!(%pod, ip = %a2.ip, container = %key.container_id, "released the IP of a pod that is gone ({why}); its runtime never sent DEL");
        if let Some(tx) = &self.released {
            let _ = tx.send((a2.ip, asked));
        }
        if let Some(net) = &self.hostnet
            && let Err(errors) = datapath::forget_pod_ip(net.as_ref(), a2.ip).await
        {
            tracing::warn!(ip = %a2.ip, "removing the pod's host rules: {errors:?}");
        }
        self.pool.emit("stale-allocation", format!("{} of {pod} released: the pod is {why}", a2.ip));
        kube.events.record(Note {
            warning: false,
            reason: "StaleAllocationReleased",
            action: "ReleaseIP",
            note: format!(
                "{} released: pod {pod} is {why} and its sandbox {} never got a CNI DEL",
                a2.ip, key.container_id
            ),
            regarding: Regarding::Pod {
                namespace: a.pod_namespace.clone(),
                name: a.pod_name.clone(),
                uid: a.pod_uid.clone(),
            },
        });
        kube.update_status(|s| s.stale_released += 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AllocKey {
        AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
    }

    fn alloc(ns: &str, name: &str, uid: &str, ip: &str) -> Allocation {
        Allocation {
            ip: ip.parse().unwrap(),
            eni_id: "eni-1".into(),
            pod_namespace: ns.into(),
            pod_name: name.into(),
            pod_uid: uid.into(),
            allocated_unix: 0,
        }
    }

    fn t(ms: i64) -> Mono {
        Mono::from_ms(ms)
    }

    const GRACE: Duration = Duration::from_secs(60);

    /// A datastore holding `allocs`, all made at monotonic time 0.
    fn ds(allocs: BTreeMap<AllocKey, Allocation>) -> Datastore {
        Datastore::restore(allocs, [], t(0), Duration::ZERO)
    }

    fn pod(uid: &str, ip: Option<&str>, phase: &str) -> PodFacts {
        PodFacts { uid: uid.into(), phase: phase.into(), host_network: false, ip: ip.map(|i| i.parse().unwrap()) }
    }

    #[test]
    fn only_pods_missing_for_the_whole_grace_period_are_stale() {
        let mut allocs = BTreeMap::new();
        allocs.insert(key("a"), alloc("web", "a", "u1", "10.0.0.10"));
        allocs.insert(key("b"), alloc("web", "b", "u2", "10.0.0.11"));
        allocs.insert(key("c"), alloc("web", "c", "u3", "10.0.0.12"));
        allocs.insert(key("host"), alloc("", "container-x", "", "10.0.0.13"));
        let mut pods = BTreeMap::new();
        pods.insert("web/a".to_string(), pod("u1", Some("10.0.0.10"), "Running"));
        // b's name is back with another UID: a new pod, the allocation belongs to the old one.
        pods.insert("web/b".to_string(), pod("u9", None, "Pending"));
        let allocs = ds(allocs);
        let mut since = BTreeMap::new();
        assert!(stale(&allocs, &pods, &mut since, t(100_000), GRACE).is_empty(), "missing just now");
        assert_eq!(since.len(), 2);
        assert!(stale(&allocs, &pods, &mut since, t(159_999), GRACE).is_empty());
        let got = stale(&allocs, &pods, &mut since, t(160_000), GRACE);
        assert_eq!(got, vec![key("b"), key("c")]);
        // A pod that shows up again resets its clock.
        pods.insert("web/c".to_string(), pod("u3", None, "Running"));
        assert_eq!(stale(&allocs, &pods, &mut since, t(170_000), GRACE), vec![key("b")]);
        assert!(!since.contains_key(&key("c")));
    }

    #[test]
    fn young_allocations_wait_and_uidless_ones_match_by_name() {
        let mut allocs = ds(BTreeMap::from([(key("a"), alloc("web", "a", "", "10.0.0.10"))]));
        allocs.born.insert(key("a"), t(150_000));
        let pods = BTreeMap::from([("web/a".to_string(), pod("any", None, "Running"))]);
        let mut since = BTreeMap::new();
        assert!(stale(&allocs, &pods, &mut since, t(500_000), GRACE).is_empty(), "present by name");
        let mut since = BTreeMap::new();
        stale(&allocs, &BTreeMap::new(), &mut since, t(100_000), GRACE);
        assert!(stale(&allocs, &BTreeMap::new(), &mut since, t(200_000), GRACE).is_empty(), "allocated at 150 s");
        assert_eq!(stale(&allocs, &BTreeMap::new(), &mut since, t(210_000), GRACE), vec![key("a")]);
    }

    #[test]
    fn running_pods_with_unknown_ips_are_reported() {
        let allocs = BTreeMap::from([(key("a"), alloc("web", "a", "u1", "10.0.0.10"))]);
        let mut host = pod("h", Some("10.0.0.4"), "Running");
        host.host_network = true;
        let pods = BTreeMap::from([
            ("web/a".to_string(), pod("u1", Some("10.0.0.10"), "Running")),
            ("web/x".to_string(), pod("u5", Some("10.0.0.99"), "Running")),
            ("web/y".to_string(), pod("u6", Some("10.0.0.98"), "Succeeded")),
            ("kube-system/proxy".to_string(), host),
        ]);
        assert_eq!(unknown_pod_ips(&allocs, &pods), ["web/x 10.0.0.99"]);
    }

    /// The runtime's DEL of a pod could not be written (a full disk) and the runtime gave up on it: the
    /// allocation stays (memory follows the disk), pod GC finds the pod gone and tries at each pass, and the
    /// first pass after the disk is back releases it, once, to the conntrack janitor and in the status.
    #[tokio::test]
    async fn a_del_that_could_not_be_written_is_released_by_pod_gc_once_the_disk_is_back() {
        use crate::clock::Fake;
        use crate::pool::{PoolError, spawn_with_clock};
        use crate::state::checkpoint::Store;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let clock = Fake::new(1_700_000_000_000);
        let tasks = crate::tasks::Supervisor::new().tasks();
        let pool = spawn_with_clock(settings(), Store::new(&state), served(), clock.clone(), &tasks).unwrap();
        let ip = pool.add(key("a"), "web".into(), "a".into(), "u1".into()).await.unwrap().ip;
        std::fs::remove_dir_all(&state).unwrap();
        let del = pool.del(key("a")).await;
        assert!(matches!(del, Err(PoolError::Checkpoint(_))), "{del:?}");

        let (tx, mut janitor) = tokio::sync::mpsc::unbounded_channel();
        let gc = PodGc::<datapath::netlink::Netlink> {
            pool: pool.clone(),
            grace: Some(GRACE),
            released: Some(tx),
            hostnet: None,
        };
        let kube = Kube::disabled();
        let mut since = BTreeMap::new();
        // One pass, its pod list empty (the pod is gone) and every GET saying so.
        let mut pass = async || {
            let s = pool.snapshot().await.unwrap();
            let mut released = 0;
            for k in stale(&s.ds, &BTreeMap::new(), &mut since, s.taken.mono, GRACE) {
                released += usize::from(gc.release(&kube, &k, &s.ds.allocations[&k], "deleted").await);
            }
            released
        };
        assert_eq!(pass().await, 0, "missing just now");
        clock.advance(GRACE);
        for _ in 0..2 {
            assert_eq!(pass().await, 0, "the disk is still full");
            clock.advance(tick(Some(GRACE)));
            let s = pool.snapshot().await.unwrap();
            assert_eq!(s.ds.allocations.get(&key("a")).map(|a| a.ip), Some(ip), "kept for the next pass");
            assert_eq!((kube.status().stale_released, janitor.try_recv().ok()), (0, None));
        }
        std::fs::create_dir(&state).unwrap();
        assert_eq!(pass().await, 1, "released once the disk is back");
        assert!(!Store::new(&state).load().unwrap().allocations.contains_key(&key("a")));
        assert_eq!(janitor.try_recv().ok().map(|(i, _)| i), Some(ip), "its conntrack entries go");
        assert_eq!(kube.status().stale_released, 1);
        assert_eq!(pass().await, 0);
    }

    fn settings() -> crate::pool::PoolSettings {
        crate::pool::PoolSettings {
            primary_eni_id: "eni-a".into(),
            targets: Default::default(),
            cooldown: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            primary_reserved: false,
            surge: false,
            node: None,
        }
    }

    /// A checkpoint to serve from: one ENI with 10.0.1.10 free.
    fn served() -> crate::state::checkpoint::Checkpoint {
        let eni = crate::state::datastore::ObservedEni::test_eni(&["10.0.1.10"]);
        crate::state::checkpoint::Checkpoint { enis: vec![eni], ..Default::default() }
    }

    /// The grace, as pod GC reads it from the pool's snapshots, on a clock whose wall time jumps an hour ahead
    /// right after the pod was first seen missing: nothing is stale before the grace has really passed.
    #[tokio::test]
    async fn a_wall_step_forward_does_not_shorten_the_grace() {
        use crate::clock::Fake;
        use crate::pool::spawn_with_clock;
        use crate::state::checkpoint::Store;
        let dir = tempfile::tempdir().unwrap();
        let clock = Fake::new(1_700_000_000_000);
        // Served from the checkpoint's ENI: no observation needed.
        let tasks = crate::tasks::Supervisor::new().tasks();
        let pool = spawn_with_clock(settings(), Store::new(dir.path()), served(), clock.clone(), &tasks).unwrap();
        pool.add(key("a"), "web".into(), "a".into(), "u1".into()).await.unwrap();
        let mut since = BTreeMap::new();
        let mut pass = async || {
            let s = pool.snapshot().await.unwrap();
            stale(&s.ds, &BTreeMap::new(), &mut since, s.taken.mono, GRACE)
        };
        assert!(pass().await.is_empty(), "missing just now");
        clock.step_wall(3_600_000);
        clock.advance(Duration::from_secs(1));
        assert!(pass().await.is_empty(), "missing for 1 s of a 60 s grace");
        clock.advance(GRACE);
        assert_eq!(pass().await, vec![key("a")]);
    }
}

//! The pool on a fake clock whose wall time is stepped an hour either way: cooldowns, surge's window and
//! GcNetworks' age rule run on the monotonic clock and do not move; a restart trusts no saved time to shorten a
//! wait; a deferred DEL is carried out whatever the wall clock did.

use std::sync::Arc;

use super::*;
use crate::clock::{Clock, Fake};

const WALL: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const COOLDOWN: Duration = Duration::from_secs(30);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

/// The pool on `clock`, its ENI holding 10.0.1.10 onwards (`n` IPs), observed and serving.
async fn pool_on(clock: &Arc<Fake>, dir: &std::path::Path, n: u8, cp: Checkpoint) -> PoolHandle {
    let tasks = crate::tasks::Supervisor::new().tasks();
    let pool = spawn_with_clock(settings(), Store::new(dir), cp, clock.clone(), &tasks).unwrap();
    pool.observe(vec![big_eni(n)], Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    pool
}

async fn add(pool: &PoolHandle, c: &str) -> Result<Ipv4Addr, PoolError> {
    pool.add(key(c), "default".into(), c.into(), String::new()).await.map(|a| a.ip)
}

/// A wall step forward does not end a cooldown: the IP's conntrack entries are flushed a second time just before
/// the cooldown ends, and a new pod must not get the IP before that.
#[tokio::test]
async fn a_wall_step_forward_does_not_end_a_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 1, Checkpoint::default()).await;
    let a = add(&pool, "c1").await.unwrap();
    pool.del(key("c1")).await.unwrap();
    // The checkpoint keeps the deadline on the wall clock, for people and older versions.
    assert_eq!(Store::new(dir.path()).load().unwrap().cooling[&a], WALL + 30_000);
    clock.step_wall(HOUR_MS);
    clock.advance(Duration::from_secs(1));
    let early = add(&pool, "c2").await;
    assert!(matches!(early, Err(PoolError::Exhausted(_))), "handed out 1 s into a 30 s cooldown: {early:?}");
    clock.advance(Duration::from_secs(29));
    assert_eq!(add(&pool, "c2").await.unwrap(), a, "usable once 30 s have passed");
}

/// A wall step back does not stretch a cooldown: the pool is not starved for the length of the step.
#[tokio::test]
async fn a_wall_step_back_does_not_stretch_a_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 1, Checkpoint::default()).await;
    let a = add(&pool, "c1").await.unwrap();
    pool.del(key("c1")).await.unwrap();
    clock.step_wall(-HOUR_MS);
    let (_, requeue) = pool.plan().await.unwrap();
    assert!(requeue <= COOLDOWN + Duration::from_millis(50), "the next round waits for the cooldown: {requeue:?}");
    clock.advance(COOLDOWN);
    assert_eq!(add(&pool, "c2").await.unwrap(), a, "usable 30 s after the release, not an hour and 30 s");
    assert_eq!(pool.snapshot().await.unwrap().stats.cooling, 0);
}

/// Whether the next plan asks EC2 for waiting pods (it says so on the event stream).
async fn plans_for_waiting_pods(pool: &PoolHandle) -> bool {
    let mut events = pool.events.subscribe();
    pool.plan().await.unwrap();
    std::iter::from_fn(|| events.try_recv().ok()).any(|e| e.kind == "surge")
}

/// A pod refused for want of an IP stops counting when it has not asked again for surge's window, however the
/// wall clock was stepped: a step back does not keep the pool grown for pods that went away.
#[tokio::test]
async fn a_wall_step_back_does_not_keep_a_pod_that_went_away_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 1, Checkpoint::default()).await;
    add(&pool, "c1").await.unwrap();
    assert!(add(&pool, "c2").await.is_err(), "no IP left");
    assert!(plans_for_waiting_pods(&pool).await, "c2 is waiting");
    clock.step_wall(-HOUR_MS);
    clock.advance(crate::pool::surge::WINDOW);
    assert!(!plans_for_waiting_pods(&pool).await, "c2 has not asked again for the whole window");
}

/// GcNetworks spares what is younger than the cooldown on the monotonic clock: a wall step forward does not
/// make an ADD that just landed look old.
#[tokio::test]
async fn gc_networks_is_not_fooled_by_a_wall_step_forward() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 2, Checkpoint::default()).await;
    add(&pool, "c-new").await.unwrap();
    clock.step_wall(HOUR_MS);
    clock.advance(Duration::from_secs(1));
    assert_eq!(pool.gc("aws-cni".into(), vec![key("other")]).await.unwrap(), [], "1 s old");
    clock.advance(COOLDOWN);
    let released = pool.gc("aws-cni".into(), vec![key("other")]).await.unwrap();
    assert_eq!(released.iter().map(|(k, _)| k.container_id.as_str()).collect::<Vec<_>>(), ["c-new"]);
}

/// A checkpoint whose times are an hour in the past and an hour in the future (the wall clock was stepped while
/// ipamd was down): every IP that was cooling cools again for the whole cooldown from the start, no longer, and
/// every allocation counts as made at the start.
#[tokio::test]
async fn a_restart_trusts_no_saved_time_to_shorten_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = Checkpoint::default();
    cp.cooling.insert(ip(10), WALL - HOUR_MS);
    cp.cooling.insert(ip(11), WALL + HOUR_MS);
    for (c, last, at) in [("c-old", 12, WALL - 24 * HOUR_MS), ("c-future", 13, WALL + HOUR_MS)] {
        let a = Allocation {
            ip: ip(last),
            eni_id: "eni-a".into(),
            pod_namespace: "default".into(),
            pod_name: c.into(),
            pod_uid: String::new(),
            allocated_unix: at / 1000,
        };
        cp.allocations.insert(key(c), a);
    }
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 4, cp).await;
    let early = add(&pool, "c1").await;
    assert!(matches!(early, Err(PoolError::Exhausted(_))), "both cool again from the start: {early:?}");
    clock.advance(Duration::from_secs(1));
    assert_eq!(pool.gc("aws-cni".into(), vec![key("x")]).await.unwrap(), [], "loaded 1 s ago: too young");
    clock.advance(COOLDOWN);
    let got = [add(&pool, "c1").await.unwrap(), add(&pool, "c2").await.unwrap()];
    assert_eq!(got, [ip(10), ip(11)], "neither waits for the hour its saved time says");
    let mut released: Vec<String> = pool
        .gc("aws-cni".into(), vec![key("c1"), key("c2")])
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.container_id)
        .collect();
    released.sort();
    assert_eq!(released, ["c-future", "c-old"], "a saved time in the future does not keep one forever");
}

/// A DEL the plugin deferred after the wall clock was stepped back (its time is before the allocation's) is
/// still carried out: dropping it leaked the IP.
#[tokio::test]
async fn a_deferred_del_is_carried_out_after_a_wall_step_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, dir.path(), 2, Checkpoint::default()).await;
    let a = add(&pool, "c1").await.unwrap();
    clock.step_wall(-HOUR_MS);
    clock.advance(Duration::from_secs(5));
    let deferred = dir.path().join(crate::pool::deferred::DIR);
    let k = key("c1");
    let entry = crate::pool::deferred::Entry {
        network_name: k.network_name.clone(),
        container_id: k.container_id.clone(),
        if_name: k.if_name.clone(),
        unix_ms: clock.wall_ms(),
    };
    crate::pool::deferred::record(&deferred, &entry).unwrap();
    let drained = crate::pool::deferred::drain(&deferred, &pool).await;
    let released: Vec<_> = drained.released.iter().map(|(k, ip, _)| (k.clone(), *ip)).collect();
    assert_eq!((released, drained.dropped), (vec![(k, a)], 0));
    assert!(pool.snapshot().await.unwrap().ds.allocations.is_empty());
}

/// A deferred DEL that cannot be carried out now (the disk is full) stays, and its key is named, so an ADD of
/// that sandbox is refused instead of answered with the IP the DEL will release.
#[tokio::test]
async fn a_deferred_del_that_cannot_be_carried_out_is_left_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let clock = Fake::new(WALL);
    let pool = pool_on(&clock, &state, 2, Checkpoint::default()).await;
    add(&pool, "c1").await.unwrap();
    let deferred = dir.path().join(crate::pool::deferred::DIR);
    let k = key("c1");
    let entry = crate::pool::deferred::Entry {
        network_name: k.network_name.clone(),
        container_id: k.container_id.clone(),
        if_name: k.if_name.clone(),
        unix_ms: clock.wall_ms(),
    };
    crate::pool::deferred::record(&deferred, &entry).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    let drained = crate::pool::deferred::drain(&deferred, &pool).await;
    assert_eq!((drained.released.len(), drained.left), (0, vec![k.clone()]));
    std::fs::create_dir(&state).unwrap();
    let drained = crate::pool::deferred::drain(&deferred, &pool).await;
    assert_eq!((drained.released.len(), drained.left.len()), (1, 0), "carried out once the disk is back");
}

//! The pool actor with a real checkpoint file: what is in memory never runs ahead of what is on disk.

use std::time::Duration;

use super::*;
use crate::planner::{Limits, Targets};
use crate::state::checkpoint::Store;

/// The tests' pool: WARM_ENI_TARGET=1, a 30 s cooldown, surge on (also used by the metrics tests).
pub(crate) fn settings() -> PoolSettings {
    PoolSettings {
        primary_eni_id: "eni-a".into(),
        targets: Targets { warm_eni: 1, ..Targets::default() },
        cooldown: Duration::from_secs(30),
        reconcile_interval: Duration::from_secs(5),
        primary_reserved: false,
        surge: true,
        node: None,
    }
}

fn eni() -> ObservedEni {
    ObservedEni::test_eni(&["10.0.1.10", "10.0.1.11"])
}

fn key(c: &str) -> AllocKey {
    AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
}

#[tokio::test]
async fn a_del_whose_checkpoint_write_fails_is_undone_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let store = Store::new(&state);
    let pool = spawn_unsupervised(settings(), store.clone(), Checkpoint::default());
    pool.observe(vec![eni()], Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    let a = pool.add(key("c1"), "default".into(), "web".into(), String::new()).await.unwrap();

    // The state directory disappears (disk trouble): the write fails, and the DEL with it.
    std::fs::remove_dir_all(&state).unwrap();
    let err = pool.del(key("c1")).await.unwrap_err();
    assert!(matches!(err, PoolError::Checkpoint(_)), "{err:?}");
    let s = pool.snapshot().await.unwrap();
    assert_eq!(s.ds.allocations.get(&key("c1")).map(|al| al.ip), Some(a.ip), "still allocated in memory");
    assert_eq!(s.stats.assigned, 1);
    // Meanwhile no other pod gets anything, that IP least of all: an Add cannot be made durable either, so it
    // is refused and undone, and the IP stays c1's.
    let other = pool.add(key("c2"), "default".into(), "db".into(), String::new()).await;
    assert!(matches!(other, Err(PoolError::Checkpoint(_))), "{other:?}");
    let s = pool.snapshot().await.unwrap();
    assert_eq!(s.ds.allocations.get(&key("c1")).map(|al| al.ip), Some(a.ip));
    assert!(!s.ds.allocations.contains_key(&key("c2")), "the refused Add holds nothing");

    // The runtime retries the DEL once the disk is back: now it is released, in memory and on disk.
    std::fs::create_dir(&state).unwrap();
    assert_eq!(pool.del(key("c1")).await.unwrap().map(|(al, _)| al.ip), Some(a.ip));
    assert!(!store.load().unwrap().allocations.contains_key(&key("c1")));
}

/// The directory fsync after the checkpoint's rename fails (EIO on a sick disk): the file already holds the
/// change, so memory keeps it too and the pod is answered; memory and disk never tell two stories.
#[tokio::test]
async fn a_failed_directory_fsync_leaves_memory_saying_what_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path()).with_dir_sync(|_| Err(std::io::Error::other("injected: EIO")));
    let pool = spawn_unsupervised(settings(), store.clone(), Checkpoint::default());
    pool.observe(vec![eni()], Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    let agree = async || {
        let memory = pool.snapshot().await.unwrap().ds.allocations;
        assert_eq!(memory, store.load().unwrap().allocations, "memory and ipam.json disagree");
        memory
    };
    let added = pool.add(key("c1"), "default".into(), "web".into(), String::new()).await;
    let memory = agree().await;
    let a = added.expect("the allocation is in the file: the pod gets it");
    assert_eq!(memory.get(&key("c1")).map(|al| al.ip), Some(a.ip));
    let released = pool.del(key("c1")).await;
    assert!(agree().await.is_empty());
    assert_eq!(released.unwrap().map(|(al, _)| al.ip), Some(a.ip));
}

/// An ENI with `n` secondary IPs, 10.0.1.10 onwards.
fn big_eni(n: u8) -> ObservedEni {
    ObservedEni { secondary_ips: (0..n).map(|i| std::net::Ipv4Addr::new(10, 0, 1, 10 + i)).collect(), ..eni() }
}

#[tokio::test]
async fn concurrent_adds_share_checkpoint_writes_and_every_reply_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let pool = spawn_unsupervised(settings(), store.clone(), Checkpoint::default());
    pool.observe(vec![big_eni(60)], Limits { max_enis: 3, ips_per_eni: 61, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    let writes_before = pool.snapshot().await.unwrap().checkpoint_writes;
    let adds = (0..50).map(|i| pool.add(key(&format!("c{i}")), "default".into(), format!("p{i}"), String::new()));
    let ips: std::collections::BTreeSet<_> =
        futures::future::join_all(adds).await.into_iter().map(|r| r.unwrap().ip).collect();
    assert_eq!(ips.len(), 50, "50 distinct IPs");
    // The 50 Adds were queued together: they share writes (one per Add would be 50; the actor takes the first
    // alone, then the rest while its first write runs).
    let writes = pool.snapshot().await.unwrap().checkpoint_writes - writes_before;
    assert!((1..=25).contains(&writes), "{writes} checkpoint writes for 50 concurrent Adds");
    let on_disk = store.load().unwrap().allocations;
    assert_eq!(on_disk.len(), 50, "every answered allocation is in the checkpoint");
    assert!(on_disk.values().all(|a| ips.contains(&a.ip)));
    let dels = (0..50).map(|i| pool.del(key(&format!("c{i}"))));
    assert!(futures::future::join_all(dels).await.into_iter().all(|r| r.unwrap().is_some()));
    assert!(store.load().unwrap().allocations.is_empty());
}

#[tokio::test]
async fn a_batch_whose_checkpoint_write_fails_is_undone_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let pool = spawn_unsupervised(settings(), Store::new(&state), Checkpoint::default());
    pool.observe(vec![big_eni(20)], Limits { max_enis: 3, ips_per_eni: 21, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    let adds = (0..10).map(|i| pool.add(key(&format!("c{i}")), "default".into(), format!("p{i}"), String::new()));
    for r in futures::future::join_all(adds).await {
        assert!(matches!(r, Err(PoolError::Checkpoint(_))), "{r:?}");
    }
    let s = pool.snapshot().await.unwrap();
    assert_eq!((s.ds.allocations.len(), s.stats.assigned), (0, 0), "nothing kept that is not on disk");
    std::fs::create_dir(&state).unwrap();
    assert!(pool.add(key("c0"), "default".into(), "p0".into(), String::new()).await.is_ok());
}

#[tokio::test]
async fn an_add_kicks_the_reconciler_only_when_the_pool_falls_below_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let warm_ip =
        PoolSettings { targets: Targets { warm_eni: 0, warm_ip: Some(1), ..Targets::default() }, ..settings() };
    let pool = spawn_unsupervised(warm_ip, Store::new(dir.path()), Checkpoint::default());
    pool.observe(vec![big_eni(3)], Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    let kicked = || tokio::time::timeout(Duration::from_millis(100), pool.kick.notified());
    for i in 0..2 {
        pool.add(key(&format!("c{i}")), "default".into(), format!("p{i}"), String::new()).await.unwrap();
        assert!(kicked().await.is_err(), "ADD {i}: one IP or more still free, no reconcile round for it");
    }
    pool.add(key("c2"), "default".into(), "p2".into(), String::new()).await.unwrap();
    assert!(kicked().await.is_ok(), "the last free IP went: the reconciler is woken");
}

/// The runtime's GC lists the attachments it knows; an ADD still in flight when it made the list is not on it.
/// GC releases what is missing from the list only once it is older than the cooldown (counted, for what the
/// checkpoint held, from the start: see `clock::a_restart_trusts_no_saved_time_to_shorten_a_wait`).
#[tokio::test]
async fn gc_releases_only_allocations_older_than_the_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut cp = Checkpoint::default();
    // c-old was allocated a minute ago (restored from the checkpoint); c-keep is listed; c-new is brand new.
    let minute_ago = now_ms() / 1000 - 60;
    for (c, ip) in [("c-old", "10.0.1.10"), ("c-keep", "10.0.1.11")] {
        let a = Allocation {
            ip: ip.parse().unwrap(),
            eni_id: "eni-a".into(),
            pod_namespace: "default".into(),
            pod_name: c.into(),
            pod_uid: String::new(),
            allocated_unix: minute_ago,
        };
        cp.allocations.insert(key(c), a);
    }
    cp.enis = vec![ObservedEni {
        secondary_ips: vec!["10.0.1.10".parse().unwrap(), "10.0.1.11".parse().unwrap(), "10.0.1.12".parse().unwrap()],
        ..eni()
    }];
    let clock = crate::clock::Fake::new(now_ms());
    let pool =
        spawn_with_clock(settings(), store, cp, clock.clone(), &crate::tasks::Supervisor::new().tasks()).unwrap();
    pool.reconciled(None).await.unwrap();
    clock.advance(settings().cooldown);
    pool.add(key("c-new"), "default".into(), "new".into(), String::new()).await.unwrap();
    let released = pool.gc("aws-cni".into(), vec![key("c-keep")]).await.unwrap();
    assert_eq!(released.iter().map(|(k, _)| k.container_id.as_str()).collect::<Vec<_>>(), ["c-old"]);
    let left: Vec<String> =
        pool.snapshot().await.unwrap().ds.allocations.keys().map(|k| k.container_id.clone()).collect();
    assert_eq!(left, ["c-keep", "c-new"], "the listed one and the one younger than the cooldown stay");
}

mod clock;

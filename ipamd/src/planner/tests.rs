//! Planner unit and property tests: examples from aws-vpc-cni's documented behaviour, and invariants
//! (limits, never freeing what a pod holds, convergence) over random pools.

use super::*;
use proptest::prelude::*;

const M5_LARGE: Limits = Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 };

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + n)
}

/// A pool where ENI i has `free`, `assigned`, `cooling` IPs.
fn pool(enis: &[(u32, u32, u32)]) -> PoolView {
    let mut next = 1;
    PoolView {
        enis: enis
            .iter()
            .enumerate()
            .map(|(i, &(free, assigned, cooling))| {
                let free = (0..free)
                    .map(|_| {
                        next += 1;
                        ip(next)
                    })
                    .collect();
                EniView {
                    id: format!("eni-{i}"),
                    device_number: i as u32,
                    primary: i == 0,
                    free,
                    assigned,
                    cooling,
                    ..EniView::default()
                }
            })
            .collect(),
    }
}

fn eni_mode(warm_eni: u32) -> Targets {
    Targets { warm_eni, ..Targets::default() }
}

fn ip_mode(warm_ip: Option<u32>, minimum_ip: Option<u32>) -> Targets {
    Targets { warm_eni: 1, warm_ip, minimum_ip, ..Targets::default() }
}

/// Applies actions the way EC2 would, with fresh addresses for new IPs.
fn apply(view: &PoolView, actions: &[Action]) -> PoolView {
    let mut v = view.clone();
    let mut next = 10_000 + fresh_base(view);
    let mut fresh = |n: u32| {
        (0..n)
            .map(|_| {
                next += 1;
                ip(next)
            })
            .collect::<Vec<_>>()
    };
    for a in actions {
        match a {
            Action::CreateEni { ip_count } => {
                let dev = (0..).find(|d| !v.enis.iter().any(|e| e.device_number == *d)).unwrap();
                v.enis.push(EniView {
                    id: format!("eni-new-{dev}"),
                    device_number: dev,
                    primary: false,
                    free: fresh(*ip_count),
                    assigned: 0,
                    cooling: 0,
                    ..EniView::default()
                });
            }
            Action::AssignIps { eni_id, count } => {
                let e = v.enis.iter_mut().find(|e| &e.id == eni_id).unwrap();
                e.free.extend(fresh(*count));
            }
            Action::UnassignIps { eni_id, ips } => {
                let e = v.enis.iter_mut().find(|e| &e.id == eni_id).unwrap();
                e.free.retain(|i| !ips.contains(i));
            }
            Action::DeleteEni { eni_id } => v.enis.retain(|e| &e.id != eni_id),
            Action::CreateEniWithPrefixes { .. } | Action::AssignPrefixes { .. } | Action::UnassignPrefixes { .. } => {
                unreachable!("no prefix actions in secondary-IP mode: {a:?}")
            }
        }
    }
    v
}

fn fresh_base(view: &PoolView) -> u32 {
    view.enis.iter().flat_map(|e| e.free.iter()).map(|i| u32::from(*i) - 0x0a00_0000).max().unwrap_or(0)
}

#[test]
fn eni_mode_fills_the_primary_and_keeps_one_eni_warm() {
    // Fresh m5.large: the primary ENI gets its 9 secondaries; 9 free meets WARM_ENI_TARGET=1.
    assert_eq!(
        plan(&pool(&[(0, 0, 0)]), eni_mode(1), M5_LARGE),
        vec![Action::AssignIps { eni_id: "eni-0".into(), count: 9 }]
    );
    assert!(plan(&pool(&[(9, 0, 0)]), eni_mode(1), M5_LARGE).is_empty());
    // The first pod leaves 8 free: a second, full ENI.
    assert_eq!(plan(&pool(&[(8, 1, 0)]), eni_mode(1), M5_LARGE), vec![Action::CreateEni { ip_count: 9 }]);
    // At the instance limit nothing more is created.
    assert!(plan(&pool(&[(0, 9, 0), (0, 9, 0), (3, 6, 0)]), eni_mode(1), M5_LARGE).is_empty());
}

#[test]
fn eni_mode_deletes_idle_enis_beyond_the_target() {
    let v = pool(&[(9, 0, 0), (9, 0, 0), (9, 0, 0)]);
    assert_eq!(
        plan(&v, eni_mode(1), M5_LARGE),
        vec![Action::DeleteEni { eni_id: "eni-2".into() }, Action::DeleteEni { eni_id: "eni-1".into() }]
    );
    // Cooling IPs pin their ENI.
    let v = pool(&[(9, 0, 0), (8, 0, 1)]);
    assert!(plan(&v, eni_mode(1), M5_LARGE).is_empty());
}

#[test]
fn ip_mode_grows_and_shrinks_to_the_exact_count() {
    // WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10 on an empty node: 10 IPs, primary first.
    let t = ip_mode(Some(5), Some(10));
    assert_eq!(
        plan(&pool(&[(0, 0, 0)]), t, M5_LARGE),
        vec![Action::AssignIps { eni_id: "eni-0".into(), count: 9 }, Action::CreateEni { ip_count: 1 }]
    );
    // 20 assigned: 25 wanted.
    let v = pool(&[(0, 9, 0), (0, 9, 0), (0, 2, 0)]);
    assert_eq!(plan(&v, t, M5_LARGE), vec![Action::AssignIps { eni_id: "eni-2".into(), count: 5 }]);
    // All released and rested: back to 10 — the idle third ENI goes whole, then 8 IPs of the second.
    let v = pool(&[(9, 0, 0), (9, 0, 0), (7, 0, 0)]);
    let actions = plan(&v, t, M5_LARGE);
    assert_eq!(actions[0], Action::DeleteEni { eni_id: "eni-2".into() });
    assert!(matches!(&actions[1], Action::UnassignIps { eni_id, ips } if eni_id == "eni-1" && ips.len() == 8));
    let after = apply(&v, &actions);
    assert_eq!((after.total(), after.enis.len()), (10, 2));
}

#[test]
fn shrink_waits_for_an_eni_that_is_only_cooling() {
    // 20 released pods, the first 18 rested, the last 2 (on the third ENI) still cooling: deleting the second
    // ENI now would strand the third; wait, then give back the third whole and thin the second.
    let t = ip_mode(Some(5), Some(10));
    let early = pool(&[(9, 0, 0), (9, 0, 0), (5, 0, 2)]);
    assert!(plan(&early, t, M5_LARGE).is_empty());
    let rested = pool(&[(9, 0, 0), (9, 0, 0), (7, 0, 0)]);
    let actions = plan(&rested, t, M5_LARGE);
    assert_eq!(actions[0], Action::DeleteEni { eni_id: "eni-2".into() });
    let after = apply(&rested, &actions);
    assert_eq!(after.enis.iter().map(EniView::total).collect::<Vec<_>>(), vec![9, 1]);
}

#[test]
fn ip_mode_never_gives_back_cooling_or_assigned_ips() {
    let t = ip_mode(Some(1), None);
    let v = pool(&[(1, 3, 0), (0, 0, 5)]);
    assert!(plan(&v, t, M5_LARGE).is_empty(), "cooling IPs wait for their rest");
}

#[test]
fn minimum_alone_means_warm_ip_zero() {
    let t = ip_mode(None, Some(3));
    assert_eq!(plan(&pool(&[(0, 0, 0)]), t, M5_LARGE), vec![Action::AssignIps { eni_id: "eni-0".into(), count: 3 }]);
    assert!(plan(&pool(&[(0, 3, 0)]), t, M5_LARGE).is_empty());
}

#[test]
fn max_pods_follows_the_aws_formula() {
    assert_eq!(M5_LARGE.max_pods(false), 29);
    assert_eq!(M5_LARGE.max_pods(true), 110);
    assert_eq!(Limits { max_enis: 3, ips_per_eni: 5, vcpus: 2 }.max_pods(false), 17); // t3.medium
}

fn arb_pool() -> impl Strategy<Value = PoolView> {
    prop::collection::vec((0u32..10, 0u32..10, 0u32..4), 1..4).prop_map(|enis| {
        let clipped: Vec<(u32, u32, u32)> = enis
            .into_iter()
            .map(|(f, a, c)| {
                let a = a.min(9);
                let c = c.min(9 - a);
                (f.min(9 - a - c), a, c)
            })
            .collect();
        pool(&clipped)
    })
}

fn arb_targets() -> impl Strategy<Value = Targets> {
    (0u32..4, prop::option::of(0u32..30), prop::option::of(0u32..30), prop_oneof![Just(0u32), 1u32..30]).prop_map(
        |(warm_eni, warm_ip, minimum_ip, surge)| Targets { warm_eni, warm_ip, minimum_ip, surge, ..Targets::default() },
    )
}

#[test]
fn surge_asks_for_the_waiting_pods_at_once_then_decays_to_the_target() {
    // WARM_IP_TARGET=1 and 12 pods waiting: one step to 13 free (9 on the primary, 4 on a new ENI), not 1.
    let t = Targets { surge: 12, ..ip_mode(Some(1), None) };
    let empty = pool(&[(0, 0, 0)]);
    assert_eq!(
        plan(&empty, t, M5_LARGE),
        [Action::AssignIps { eni_id: "eni-0".into(), count: 9 }, Action::CreateEni { ip_count: 4 }]
    );
    // While they wait nothing is given back; once they are served, the surplus goes.
    let warmed = pool(&[(9, 0, 0), (4, 0, 0)]);
    assert!(plan(&warmed, t, M5_LARGE).is_empty());
    let back = plan(&warmed, ip_mode(Some(1), None), M5_LARGE);
    assert_eq!(back[0], Action::DeleteEni { eni_id: "eni-1".into() });
    assert!(matches!(&back[1..], [Action::UnassignIps { ips, .. }] if ips.len() == 8), "{back:?}");
    // ENI mode: the ENIs needed for the waiting pods come in one round.
    let full = pool(&[(0, 9, 0)]);
    let acts = plan(&full, Targets { surge: 15, ..eni_mode(1) }, M5_LARGE);
    assert_eq!(acts, [Action::CreateEni { ip_count: 9 }, Action::CreateEni { ip_count: 9 }]);
}

proptest! {
    #[test]
    fn plans_respect_limits_and_never_free_what_pods_hold(view in arb_pool(), targets in arb_targets()) {
        let actions = plan(&view, targets, M5_LARGE);
        for a in &actions {
            match a {
                Action::UnassignIps { eni_id, ips } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    prop_assert!(ips.iter().all(|i| e.free.contains(i)), "only free IPs are given back");
                }
                Action::DeleteEni { eni_id } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    prop_assert!(!e.primary && e.assigned == 0 && e.cooling == 0);
                }
                Action::AssignIps { count, .. } | Action::CreateEni { ip_count: count } => prop_assert!(*count > 0),
                other => prop_assert!(false, "no prefix actions in secondary-IP mode: {other:?}"),
            }
        }
        let after = apply(&view, &actions);
        prop_assert!(after.enis.len() as u32 <= M5_LARGE.max_enis);
        prop_assert!(after.enis.iter().all(|e| e.total() <= M5_LARGE.ips_per_eni));
        // Giving back never goes below what the targets ask for (nor below where the pool already was).
        if targets.warm_ip.is_some() || targets.minimum_ip.is_some() {
            let warm = targets.warm_ip.unwrap_or(0) + targets.surge;
            prop_assert!(after.free() >= view.free().min(warm), "free {} -> {}", view.free(), after.free());
            let min = targets.minimum_ip.unwrap_or(0);
            prop_assert!(after.total() >= view.total().min(min), "total {} -> {}", view.total(), after.total());
        } else {
            let warm = targets.warm_eni * M5_LARGE.ips_per_eni + targets.surge;
            prop_assert!(after.free() >= view.free().min(warm), "free {} -> {}", view.free(), after.free());
        }
    }

    #[test]
    fn plans_converge_and_meet_the_targets(view in arb_pool(), targets in arb_targets()) {
        let mut v = view;
        let mut rounds = 0;
        loop {
            let actions = plan(&v, targets, M5_LARGE);
            if actions.is_empty() { break; }
            v = apply(&v, &actions);
            rounds += 1;
            prop_assert!(rounds <= 3, "still acting after 3 rounds: {:?}", actions);
        }
        let full = v.enis.len() as u32 == M5_LARGE.max_enis && v.enis.iter().all(|e| e.total() == M5_LARGE.ips_per_eni);
        // Surge (pods waiting) comes on top of the target.
        if targets.warm_ip.is_some() || targets.minimum_ip.is_some() {
            let warm = targets.warm_ip.unwrap_or(0) + targets.surge;
            let min = targets.minimum_ip.unwrap_or(0);
            prop_assert!(full || (v.free() >= warm && v.total() >= min));
            // No surplus left that could be given back (unless an ENI is draining its cooldowns).
            prop_assert!(v.free() <= warm || v.total() <= min || draining(&v));
        } else {
            prop_assert!(full || v.free() >= targets.warm_eni * M5_LARGE.ips_per_eni + targets.surge);
            prop_assert!(v.enis.iter().all(|e| e.total() == M5_LARGE.ips_per_eni));
        }
    }
}

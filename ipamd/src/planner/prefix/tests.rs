//! Prefix-mode planner: examples of aws-vpc-cni's documented prefix behaviour, the /32 fallback, surge, and
//! invariants over random pools (slots and ENIs within limits, no prefix with a pod's address given back).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;

use super::*;
use crate::planner::{Action, EniView, Limits, PoolView, Targets, plan};

/// m5.large: 3 ENIs, 9 secondary slots each (so 9 prefixes per ENI).
const M5_LARGE: Limits = Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 };

fn net(n: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(0x0a01_0000 + n * 16), 28).unwrap()
}

/// An ENI with prefixes given by how many of their 16 addresses are used (assigned), plus `singles` free /32s.
fn eni(dev: u32, used: &[u32], singles: u32, fallback: bool) -> EniView {
    let mut v =
        EniView { id: format!("eni-{dev}"), device_number: dev, primary: dev == 0, fallback, ..EniView::default() };
    for (k, &u) in used.iter().enumerate() {
        let p = net(dev * 100 + k as u32);
        v.free.extend((u..PREFIX_IPS).map(|k| Ipv4Addr::from(u32::from(p.network()) + k)));
        v.assigned += u;
        v.prefixes.push(PrefixView { net: p, free: PREFIX_IPS - u });
    }
    for s in 0..singles {
        v.free.push(Ipv4Addr::from(0x0a02_0000 + dev * 256 + s));
    }
    v
}

fn prefix(warm_prefix: u32) -> Targets {
    Targets { warm_prefix: Some(warm_prefix), ..Targets::default() }
}

#[test]
fn a_fresh_node_gets_one_prefix_and_keeps_one_whole_prefix_free() {
    let fresh = PoolView { enis: vec![eni(0, &[], 0, false)] };
    assert_eq!(plan(&fresh, prefix(1), M5_LARGE), [Action::AssignPrefixes { eni_id: "eni-0".into(), count: 1 }]);
    // One address used: that prefix is no longer free, so a second one is warmed.
    let one_pod = PoolView { enis: vec![eni(0, &[1], 0, false)] };
    assert_eq!(plan(&one_pod, prefix(1), M5_LARGE), [Action::AssignPrefixes { eni_id: "eni-0".into(), count: 1 }]);
    let settled = PoolView { enis: vec![eni(0, &[1, 0], 0, false)] };
    assert!(plan(&settled, prefix(1), M5_LARGE).is_empty());
}

#[test]
fn a_full_eni_brings_a_new_eni_with_prefixes() {
    let full = PoolView { enis: vec![eni(0, &[16; 9], 0, false)] };
    assert_eq!(plan(&full, prefix(2), M5_LARGE), [Action::CreateEniWithPrefixes { prefix_count: 2 }]);
}

#[test]
fn ip_targets_count_addresses_and_ask_in_whole_prefixes() {
    let t = Targets { warm_ip: Some(5), minimum_ip: Some(40), warm_prefix: Some(1), ..Targets::default() };
    let view = PoolView { enis: vec![eni(0, &[3], 0, false)] };
    // 16 addresses, 40 wanted: 24 more = 2 prefixes.
    assert_eq!(plan(&view, t, M5_LARGE), [Action::AssignPrefixes { eni_id: "eni-0".into(), count: 2 }]);
}

#[test]
fn empty_prefixes_beyond_the_target_are_given_back_highest_first() {
    let view = PoolView { enis: vec![eni(0, &[4, 0, 0, 0], 0, false)] };
    let acts = plan(&view, prefix(1), M5_LARGE);
    assert_eq!(acts, [Action::UnassignPrefixes { eni_id: "eni-0".into(), prefixes: vec![net(3), net(2)] }]);
    // A prefix with one address in use (or cooling) stays.
    let busy = PoolView { enis: vec![eni(0, &[4, 1], 0, false)] };
    assert_eq!(plan(&busy, prefix(1), M5_LARGE), [Action::AssignPrefixes { eni_id: "eni-0".into(), count: 1 }]);
}

#[test]
fn an_idle_eni_goes_whole_when_its_prefixes_are_surplus() {
    let view = PoolView { enis: vec![eni(0, &[2, 0], 0, false), eni(1, &[0, 0], 0, false)] };
    assert_eq!(plan(&view, prefix(1), M5_LARGE), [Action::DeleteEni { eni_id: "eni-1".into() }]);
}

#[test]
fn a_fallback_eni_grows_by_single_ips_within_its_slots() {
    // 7 prefixes in use and 1 single on a fallback ENI: one slot left, taken by one /32 (WARM_IP_TARGET=3).
    let t = Targets { warm_ip: Some(3), warm_prefix: Some(1), ..Targets::default() };
    let view = PoolView { enis: vec![eni(0, &[16; 7], 1, true)] };
    assert_eq!(
        plan(&view, t, M5_LARGE),
        [Action::AssignIps { eni_id: "eni-0".into(), count: 1 }, Action::CreateEniWithPrefixes { prefix_count: 1 }]
    );
}

#[test]
fn surge_asks_for_the_whole_shortfall_at_once() {
    let view = PoolView { enis: vec![eni(0, &[16], 0, false)] };
    let t = Targets { surge: 50, ..prefix(1) };
    // 50 pods waiting and one whole prefix still wanted after them: 66 addresses, 5 prefixes in one call
    // instead of one per round.
    assert_eq!(plan(&view, t, M5_LARGE), [Action::AssignPrefixes { eni_id: "eni-0".into(), count: 5 }]);
    // While they wait, nothing is given back.
    let warmed = PoolView { enis: vec![eni(0, &[16, 0, 0, 0, 0, 0], 0, false)] };
    assert!(plan(&warmed, t, M5_LARGE).is_empty());
    // Once the demand has decayed, the pool goes back to the target.
    assert_eq!(
        plan(&warmed, prefix(1), M5_LARGE),
        [Action::UnassignPrefixes { eni_id: "eni-0".into(), prefixes: vec![net(5), net(4), net(3), net(2)] }]
    );
}

fn arb_eni(dev: u32) -> impl Strategy<Value = EniView> {
    (prop::collection::vec(0u32..=16, 0..=9), 0u32..3, any::<bool>()).prop_map(move |(used, singles, fallback)| {
        let used: Vec<u32> = used.into_iter().take(9 - singles as usize).collect();
        eni(dev, &used, singles, fallback)
    })
}

fn arb_pool() -> impl Strategy<Value = PoolView> {
    (1usize..=3).prop_flat_map(|n| (0..n as u32).map(arb_eni).collect::<Vec<_>>()).prop_map(|enis| PoolView { enis })
}

fn arb_targets() -> impl Strategy<Value = Targets> {
    (0u32..4, prop::option::of(0u32..40), prop::option::of(0u32..100), 0u32..120).prop_map(
        |(warm_prefix, warm_ip, minimum_ip, surge)| Targets {
            warm_prefix: Some(warm_prefix),
            warm_ip,
            minimum_ip,
            surge,
            ..Targets::default()
        },
    )
}

proptest! {
    #[test]
    fn prefix_plans_respect_limits_and_never_free_what_pods_hold(view in arb_pool(), targets in arb_targets()) {
        let actions = plan(&view, targets, M5_LARGE);
        let mut enis = view.enis.len() as u32;
        for a in &actions {
            match a {
                Action::CreateEniWithPrefixes { prefix_count } => {
                    enis += 1;
                    prop_assert!(*prefix_count >= 1 && *prefix_count <= M5_LARGE.ips_per_eni);
                }
                Action::AssignPrefixes { eni_id, count } | Action::AssignIps { eni_id, count } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    prop_assert!(e.slots() + count <= M5_LARGE.ips_per_eni, "{e:?} + {count}");
                    prop_assert_eq!(matches!(a, Action::AssignIps { .. }), e.fallback, "fallback ENIs take /32s only");
                }
                Action::UnassignPrefixes { eni_id, prefixes } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    for p in prefixes {
                        prop_assert!(e.prefixes.iter().any(|q| q.net == *p && q.empty()), "only empty prefixes go");
                    }
                }
                Action::UnassignIps { eni_id, ips } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    prop_assert!(ips.iter().all(|ip| e.free.contains(ip) && !e.prefixes.iter().any(|p| p.net.contains(ip))));
                }
                Action::DeleteEni { eni_id } => {
                    let e = view.enis.iter().find(|e| &e.id == eni_id).unwrap();
                    prop_assert!(!e.primary && e.assigned == 0 && e.cooling == 0);
                }
                Action::CreateEni { .. } => prop_assert!(false, "no plain ENIs in prefix mode"),
            }
        }
        prop_assert!(enis <= M5_LARGE.max_enis);
        let grows = actions.iter().any(Action::grows);
        let shrinks = actions.iter().any(|a| !a.grows());
        prop_assert!(!(grows && shrinks), "a plan grows or shrinks, never both: {actions:?}");
    }

    #[test]
    fn after_growing_the_surge_is_met_unless_the_node_is_full(view in arb_pool(), targets in arb_targets()) {
        let actions = plan(&view, targets, M5_LARGE);
        let added: u32 = actions.iter().map(|a| match a {
            Action::CreateEniWithPrefixes { prefix_count } | Action::AssignPrefixes { count: prefix_count, .. } => prefix_count * PREFIX_IPS,
            Action::AssignIps { count, .. } => *count,
            _ => 0,
        }).sum();
        let slots_left: u32 = view.enis.iter().map(|e| M5_LARGE.ips_per_eni - e.slots().min(M5_LARGE.ips_per_eni)).sum::<u32>()
            + (M5_LARGE.max_enis - view.enis.len() as u32) * M5_LARGE.ips_per_eni;
        if actions.iter().any(Action::grows) {
            let slots_used: u32 = actions.iter().map(|a| match a {
                Action::CreateEniWithPrefixes { prefix_count } | Action::AssignPrefixes { count: prefix_count, .. } => *prefix_count,
                Action::AssignIps { count, .. } => *count,
                _ => 0,
            }).sum();
            prop_assert!(view.free() + added >= targets.surge || slots_used == slots_left, "{actions:?}");
        }
    }
}

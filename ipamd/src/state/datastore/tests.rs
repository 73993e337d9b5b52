//! The datastore's rules: packing, cooldown, observation, reservations, prefixes.
use super::*;

/// Monotonic time `ms`.
fn t(ms: i64) -> Mono {
    Mono::from_ms(ms)
}

/// Both clocks at `ms` (the wall clock's value does not matter here).
fn at(ms: i64) -> Reading {
    Reading { mono: t(ms), wall_ms: ms }
}

fn key(c: &str) -> AllocKey {
    AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
}

fn eni(id: &str, dev: u32, ips: &[&str]) -> ObservedEni {
    ObservedEni {
        id: id.into(),
        mac: format!("02:00:00:00:00:0{dev}"),
        device_number: dev,
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.1.0/24".parse().unwrap(),
        primary_ip: format!("10.0.1.{}", 100 + dev).parse().unwrap(),
        secondary_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        unconfirmed: Vec::new(),
        ready: true,
        prefixes: Vec::new(),
        fallback: false,
    }
}

fn two_enis() -> Datastore {
    let mut ds = Datastore::default();
    ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"]), eni("eni-b", 1, &["10.0.1.20"])], "eni-a", t(0));
    ds
}

#[test]
fn only_a_28_is_expanded() {
    assert_eq!(prefix_addresses(&"10.0.1.16/28".parse().unwrap()).count(), 16);
    assert_eq!(prefix_addresses(&"10.0.0.0/8".parse().unwrap()).count(), 0, "not 16 million addresses");
}

#[test]
fn assign_is_idempotent_and_packs_the_lowest_device() {
    let mut ds = two_enis();
    let a = ds.assign(&key("c1"), "ns", "p1", at(0)).unwrap();
    assert_eq!((a.ip.to_string().as_str(), a.device_number, a.new), ("10.0.1.10", 0, true));
    let again = ds.assign(&key("c1"), "ns", "p1", at(0)).unwrap();
    assert_eq!((again.ip, again.new), (a.ip, false));
    let b = ds.assign(&key("c2"), "ns", "p2", at(0)).unwrap();
    let c = ds.assign(&key("c3"), "ns", "p3", at(0)).unwrap();
    assert_eq!((b.device_number, c.device_number), (0, 1));
    assert!(matches!(ds.assign(&key("c4"), "ns", "p4", at(0)), Err(AssignError::Exhausted { assigned: 3, .. })));
}

#[test]
fn released_ip_rests_for_the_cooldown() {
    let mut ds = two_enis();
    let a = ds.assign(&key("c1"), "ns", "p1", at(0)).unwrap();
    let (rel, dev) = ds.release(&key("c1"), t(1_000), Duration::from_millis(30_000)).unwrap();
    assert_eq!((rel.ip, dev), (a.ip, 0));
    assert!(ds.release(&key("c1"), t(1_000), Duration::from_millis(30_000)).is_none(), "a second DEL finds nothing");
    // Within the cooldown the other IPs go first, then nothing.
    let ips: Vec<_> = ["x", "y"].iter().map(|c| ds.assign(&key(c), "ns", "p", at(2_000)).unwrap().ip).collect();
    assert!(!ips.contains(&a.ip));
    assert!(ds.assign(&key("z"), "ns", "p", at(2_000)).is_err());
    // After it the IP is usable again.
    assert_eq!(ds.assign(&key("z"), "ns", "p", at(31_000)).unwrap().ip, a.ip);
}

#[test]
fn observation_keeps_allocations_and_drops_vanished_ips() {
    let mut ds = two_enis();
    let a = ds.assign(&key("c1"), "ns", "p1", at(0)).unwrap();
    ds.release(&key("c1"), t(0), Duration::from_millis(10_000));
    let b = ds.assign(&key("c2"), "ns", "p2", at(0)).unwrap();
    // EC2 no longer has eni-b's IP; the checkpointed cooldown and the allocation survive a re-observation.
    ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"])], "eni-a", t(5_000));
    assert_eq!(ds.enis.len(), 1);
    assert_eq!(ds.enis["eni-a"].ips[&a.ip], IpState::Cooling { until: t(10_000) });
    assert_eq!(ds.enis["eni-a"].ips[&b.ip], IpState::Assigned);
    assert!(ds.allocations.contains_key(&key("c2")));
    let s = ds.stats(t(5_000));
    assert_eq!((s.total, s.assigned, s.cooling, s.free), (2, 1, 1, 0));
}

#[test]
fn ips_given_back_stay_out_of_use_while_ec2_still_lists_them() {
    let mut ds = two_enis();
    let ip: Ipv4Addr = "10.0.1.11".parse().unwrap();
    assert_eq!(ds.reserve_for_release("eni-a", &[ip], t(0)), vec![ip]);
    // EC2 has not caught up with the unassign yet.
    ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"]), eni("eni-b", 1, &["10.0.1.20"])], "eni-a", t(1_000));
    assert_eq!(ds.enis["eni-a"].ips[&ip], IpState::Releasing);
    let got: Vec<Ipv4Addr> = ["a", "b"].iter().map(|c| ds.assign(&key(c), "ns", "p", at(1_000)).unwrap().ip).collect();
    assert!(!got.contains(&ip));
    // Once EC2 no longer lists it, the mark goes.
    ds.observe(vec![eni("eni-a", 0, &["10.0.1.10"])], "eni-a", t(2_000));
    assert!(ds.releasing.is_empty());
}

#[test]
fn enis_without_host_networking_are_not_used() {
    let mut ds = Datastore::default();
    let mut b = eni("eni-b", 1, &["10.0.1.20"]);
    b.ready = false;
    ds.observe(vec![eni("eni-a", 0, &[]), b], "eni-a", t(0));
    assert!(ds.assign(&key("c1"), "ns", "p", at(0)).is_err());
}

#[test]
fn a_reserved_primary_eni_is_neither_used_nor_planned_for() {
    let mut ds = two_enis();
    ds.primary_reserved = true;
    let ips: Vec<String> =
        ["a", "b"].iter().filter_map(|c| ds.assign(&key(c), "ns", "p", at(0)).ok()).map(|a| a.ip.to_string()).collect();
    assert_eq!(ips, ["10.0.1.20"], "only the secondary ENI's IP is handed out");
    let view = ds.view(t(0));
    assert_eq!(view.enis.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["eni-b"]);
}

#[test]
fn reserved_ips_and_enis_are_not_handed_out() {
    let mut ds = two_enis();
    let got = ds.reserve_for_release("eni-a", &["10.0.1.10".parse().unwrap()], t(0));
    assert_eq!(got.len(), 1);
    assert!(ds.reserve_eni_for_delete("eni-b", t(0)));
    assert!(!ds.reserve_eni_for_delete("eni-a", t(0)), "the primary ENI is never deleted");
    assert_eq!(ds.assign(&key("c1"), "ns", "p", at(0)).unwrap().ip.to_string(), "10.0.1.11");
    assert!(ds.assign(&key("c2"), "ns", "p", at(0)).is_err());
}

#[test]
fn a_prefix_serves_its_16_addresses_and_goes_back_only_when_all_are_free() {
    let net: Ipv4Net = "10.0.1.32/28".parse().unwrap();
    let mut ds = Datastore::default();
    ds.observe(vec![ObservedEni { prefixes: vec![net], ..eni("eni-a", 0, &[]) }], "eni-a", t(0));
    assert_eq!((ds.stats(t(0)).free, ds.enis["eni-a"].slots()), (16, 1));
    let view = ds.view(t(0));
    assert_eq!(view.enis[0].prefixes, [PrefixView { net, free: 16 }]);
    let got: Vec<Ipv4Addr> = (0..16).map(|i| ds.assign(&key(&format!("c{i}")), "ns", "p", at(0)).unwrap().ip).collect();
    assert_eq!(got.first().unwrap().to_string(), "10.0.1.32", "the network address of a /28 serves a pod too");
    assert_eq!(got.last().unwrap().to_string(), "10.0.1.47");
    assert!(ds.assign(&key("c16"), "ns", "p", at(0)).is_err());
    // One address still cooling keeps the prefix.
    for i in 0..16 {
        ds.release(&key(&format!("c{i}")), t(0), Duration::from_millis(if i == 5 { 10_000 } else { 0 }));
    }
    assert!(ds.reserve_prefixes_for_release("eni-a", &[net], t(1_000)).is_empty());
    assert_eq!(ds.reserve_prefixes_for_release("eni-a", &[net], t(10_000)), [net]);
    assert!(ds.assign(&key("late"), "ns", "p", at(10_000)).is_err(), "a prefix on its way back serves nobody");
    // EC2 took it back.
    ds.observe(vec![eni("eni-a", 0, &[])], "eni-a", t(11_000));
    assert_eq!((ds.stats(t(11_000)).total, ds.releasing.len()), (0, 0));
}

#[test]
fn a_restore_cools_every_saved_ip_again_and_ages_allocations_from_the_load() {
    let a = Allocation {
        ip: "10.0.1.11".parse().unwrap(),
        eni_id: "eni-a".into(),
        pod_namespace: "ns".into(),
        pod_name: "p".into(),
        pod_uid: String::new(),
        allocated_unix: 0,
    };
    let cooling = ["10.0.1.10".parse().unwrap()];
    let mut ds = Datastore::restore(BTreeMap::from([(key("c1"), a)]), cooling, t(5_000), Duration::from_secs(30));
    ds.observe(vec![eni("eni-a", 0, &["10.0.1.10", "10.0.1.11"])], "eni-a", t(5_000));
    assert_eq!(ds.enis["eni-a"].ips[&cooling[0]], IpState::Cooling { until: t(35_000) });
    assert_eq!((ds.age(&key("c1"), t(5_000)), ds.age(&key("c1"), t(6_000))), (Duration::ZERO, Duration::from_secs(1)));
    assert_eq!(ds.cooling_wall(Reading { mono: t(5_000), wall_ms: 1_000_000 })[&cooling[0]], 1_030_000);
    assert!(ds.assign(&key("c2"), "ns", "p", at(34_999)).is_err());
    assert_eq!(ds.assign(&key("c2"), "ns", "p", at(35_000)).unwrap().ip, cooling[0]);
    assert_eq!(ds.age(&key("c2"), t(36_000)), Duration::from_secs(1), "aged from its assignment");
    ds.release(&key("c2"), t(36_000), Duration::from_secs(30));
    assert_eq!(ds.age(&key("c2"), t(40_000)), Duration::ZERO, "gone with its allocation");
}

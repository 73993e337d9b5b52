//! ipamd against real LocalStack EC2: the warm pool as operators configure it, restarts, idempotency.
//! Each test has its own VPC, instance, IMDS emulator and ipamd process, so they run in parallel.
//! LocalStack must be running (`scripts/localstack.sh start`; `make test` does it).

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::Code;
use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::{
    NodeFixture, add, add_retrying, del, eventually, free_port, http_get, metric, pool_enis, rounds_pass, try_status,
};

const SERVING_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(45);

/// m5.large with defaults (WARM_ENI_TARGET=1): the primary ENI fills, the first pod brings a second full ENI,
/// and the instance limit (3 ENIs × 9 IPs) is enforced by ipamd because LocalStack enforces none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_eni_target_grows_to_the_instance_limit_and_no_further() {
    let node = NodeFixture::new("warm-eni", "m5.large").await;
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[("METRICS_BIND_ADDR", &metrics_addr), ("IPAMD_RECONCILE_INTERVAL", "1")]);
    let took = ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    eprintln!("ipamd start → SERVING: {took:?}");
    assert_eq!(node.ip_counts().await, vec![9], "after start: the primary ENI holds 9 secondary IPs, nothing else");

    let first = add(&ipamd, "c0").await.expect("first Add");
    eventually(SETTLE, "a second ENI with 9 IPs", || async { (node.ip_counts().await == vec![9, 9]).then_some(()) })
        .await;
    // Once ipamd's pool holds it (it observes EC2 after its apply step finished): warming that ENI took one
    // create (IPs and tags in the same call), one attach, one DeleteOnTermination.
    let m = eventually(SETTLE, "ipamd to see 2 ENIs", || async {
        let m = http_get(port, "/metrics").await.ok()?;
        (metric(&m, "awscni_eni_allocated") == Some(2.0)).then_some(m)
    })
    .await;
    for op in ["CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute"] {
        assert_eq!(metric(&m, &format!("ipamd_ec2_requests_total{{op=\"{op}\"}}")), Some(1.0), "{op} in\n{m}");
    }
    eprintln!(
        "EC2 requests so far:\n{}",
        m.lines().filter(|l| l.starts_with("ipamd_ec2_requests_total")).collect::<Vec<_>>().join("\n")
    );
    let enis = node.enis().await;
    let tags: BTreeSet<&str> = enis[1].tags.iter().map(|(k, _)| k.as_str()).collect();
    assert!(tags.contains("node.k8s.amazonaws.com/instance_id") && tags.contains("node.k8s.amazonaws.com/createdAt"));
    assert!(enis[1].tags.contains(&("node.k8s.amazonaws.com/instance_id".into(), node.instance_id().into())));

    let mut ips = vec![first.ipv4_addr.clone()];
    for i in 1..27 {
        let r = add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("Add #{i}: {s:?}"));
        ips.push(r.ipv4_addr);
    }
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 27, "every pod has its own IP");
    let in_ec2: BTreeSet<String> = node.enis().await.into_iter().flat_map(|e| e.secondary_ips).collect();
    for ip in &ips {
        assert!(in_ec2.contains(ip), "{ip} is a secondary IP of the node's ENIs in EC2");
    }

    let err = add_retrying(&ipamd, "c27", SETTLE).await.expect_err("28th pod must not get an IP");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit of 3 ENIs"), "{}", err.message());
    rounds_pass(&ipamd, 3).await;
    assert_eq!(node.ip_counts().await, vec![9, 9, 9], "no 4th ENI");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// WARM_IP_TARGET=5 / MINIMUM_IP_TARGET=10: EC2 holds exactly the planned counts through churn, and the
/// surplus is given back in EC2 (IPs unassigned, the idle ENI detached and deleted) after the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ip_and_minimum_targets_hold_exact_counts_through_churn() {
    let node = NodeFixture::new("warm-ip", "m5.large").await;
    let env = [("WARM_IP_TARGET", "5"), ("MINIMUM_IP_TARGET", "10"), ("IP_COOLDOWN_PERIOD", "2")];
    let mut ipamd = node.spawn_ipamd(&env);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    eventually(SETTLE, "10 IPs: 9 on the primary + 1 on a second ENI", || async {
        (node.ip_counts().await == vec![9, 1]).then_some(())
    })
    .await;

    for i in 0..20 {
        add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("Add #{i}: {s:?}"));
    }
    eventually(SETTLE, "25 IPs (20 assigned + 5 warm)", || async {
        (node.ip_counts().await.iter().sum::<usize>() == 25).then_some(())
    })
    .await;
    let third = node.enis().await.into_iter().find(|e| e.device_index == 2).expect("a third ENI").id;

    for i in 0..20 {
        assert!(del(&ipamd, &format!("c{i}")).await.unwrap().released);
    }
    eventually(SETTLE, "back to 10 IPs on 2 ENIs after the cooldown", || async {
        (node.ip_counts().await == vec![9, 1]).then_some(())
    })
    .await;
    assert!(!vpc_sim::localstack::eni_exists(&node.ec2, &third).await.unwrap(), "surplus ENI deleted in EC2");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// SIGKILL with 10 allocations, start again: the same 10 allocations, no IP handed out twice, no new ENI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_keeps_allocations() {
    let node = NodeFixture::new("restart", "m5.large").await;
    let mut ipamd = node.spawn_ipamd(&[]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap().ipv4_addr);
    }
    // 10 assigned of 18 leaves 8 free < 9: the third ENI comes; wait until the pool is at rest.
    eventually(SETTLE, "3 full ENIs", || async { (node.ip_counts().await == vec![9, 9, 9]).then_some(()) }).await;
    let enis_before: Vec<String> = node.enis().await.into_iter().map(|e| e.id).collect();
    ipamd.kill9().await;

    let mut ipamd = node.spawn_ipamd(&[("IPAMD_RECONCILE_INTERVAL", "1")]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    let list = ipamd.introspection().await.list_allocations(pb::ListAllocationsRequest {}).await.unwrap().into_inner();
    let mut restored: Vec<(String, String)> =
        list.allocations.iter().map(|a| (a.key.clone().unwrap().container_id, a.ipv4_addr.clone())).collect();
    restored.sort();
    let mut expected: Vec<(String, String)> =
        held.iter().enumerate().map(|(i, ip)| (format!("c{i}"), ip.clone())).collect();
    expected.sort();
    assert_eq!(restored, expected);
    for (i, ip) in held.iter().enumerate() {
        assert_eq!(&add(&ipamd, &format!("c{i}")).await.unwrap().ipv4_addr, ip, "a repeated Add after restart");
    }
    for i in 10..17 {
        let ip = add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap().ipv4_addr;
        assert!(!held.contains(&ip), "{ip} was already held by a pod before the restart");
    }
    rounds_pass(&ipamd, 3).await;
    let enis_after: Vec<String> = node.enis().await.into_iter().map(|e| e.id).collect();
    assert_eq!(enis_after, enis_before, "no ENI created or lost across the restart");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// Repeated Add returns the same IP, Del twice succeeds, and a released IP rests for IP_COOLDOWN_PERIOD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_del_are_idempotent_and_cooldown_is_respected() {
    let node = NodeFixture::new("idempotent", "m5.large").await;
    let cooldown = Duration::from_secs(8);
    let mut ipamd = node.spawn_ipamd(&[("IP_COOLDOWN_PERIOD", "8")]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();

    let a = add(&ipamd, "a").await.unwrap();
    assert_eq!(add(&ipamd, "a").await.unwrap().ipv4_addr, a.ipv4_addr, "repeated Add: same IP");
    assert_eq!(a.device_number, 0);
    assert_eq!(a.route_table, 254, "primary ENI pods route via main");
    // The second ENI (asked for as "a" took an IP) is ready before the cooldown starts, so that the adds
    // below fit in it on a slow machine.
    eventually(SETTLE, "the second ENI's IPs in the pool", || async {
        try_status(&ipamd).await.filter(|s| s.total_ips >= 18)
    })
    .await;
    let d1 = del(&ipamd, "a").await.unwrap();
    let released_at = std::time::Instant::now();
    assert!(d1.released && d1.ipv4_addr == a.ipv4_addr);
    let d2 = del(&ipamd, "a").await.unwrap();
    assert!(!d2.released, "second Del succeeds and releases nothing");

    // 8 other IPs are free on the primary ENI; more come on the second. None may be the resting one.
    let mut later = Vec::new();
    for i in 0..12 {
        later.push(add_retrying(&ipamd, &format!("b{i}"), SETTLE).await.unwrap());
    }
    assert!(released_at.elapsed() < cooldown, "the adds ran within the cooldown");
    assert!(later.iter().all(|r| r.ipv4_addr != a.ipv4_addr), "released IP reissued within IP_COOLDOWN_PERIOD");
    assert!(later.iter().any(|r| r.device_number == 1 && r.route_table == 2), "secondary ENI pods use table 2");

    tokio::time::sleep(cooldown.saturating_sub(released_at.elapsed()) + Duration::from_millis(200)).await;
    let again = add_retrying(&ipamd, "c", SETTLE).await.unwrap();
    assert_eq!(again.ipv4_addr, a.ipv4_addr, "after the cooldown the lowest free IP is reused");

    let bad = ipamd.ipam().await.add_network(pb::AddNetworkRequest::default()).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    ipamd.terminate().await;
    node.cleanup().await;
}

/// The socket answers only root (and IPAMD_ALLOWED_UIDS): `vpcctl` run as uid 65534 gets PERMISSION_DENIED from
/// the SO_PEERCRED check even when file permissions are opened up for the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn socket_refuses_a_non_root_peer() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let node = NodeFixture::new("peercred", "t3.medium").await;
    let mut ipamd = node.spawn_ipamd(&[]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    let mode = |m| std::fs::Permissions::from_mode(m);
    assert_eq!(std::fs::metadata(&ipamd.socket).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(node.dir.path(), mode(0o755)).unwrap();
    std::fs::set_permissions(&ipamd.socket, mode(0o666)).unwrap();
    // The checkout may sit in a directory uid 65534 cannot enter (a `mktemp -d` clone is 0700): run a copy of
    // vpcctl from the fixture's own directory, which the test opened to everyone above.
    let vpcctl = node.dir.path().join("vpcctl");
    std::fs::copy(vpc_sim::ipamd_proc::sibling_binary("vpcctl"), &vpcctl).unwrap();
    std::fs::set_permissions(&vpcctl, mode(0o755)).unwrap();
    let run = |uid: Option<u32>| {
        let mut c = std::process::Command::new(&vpcctl);
        c.arg("--socket").arg(&ipamd.socket).arg("status");
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        c.output().unwrap()
    };
    let nobody = run(Some(65534));
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success(), "uid 65534 must be refused");
    assert!(stderr.contains("peer uid 65534 may not use ipamd"), "{stderr}");
    let root = run(None);
    assert!(root.status.success(), "{}", String::from_utf8_lossy(&root.stderr));
    assert!(String::from_utf8_lossy(&root.stdout).contains("t3.medium"));
    ipamd.terminate().await;
    node.cleanup().await;
}

#[tokio::test]
async fn a_second_ipamd_on_the_same_state_dir_refuses_to_start() {
    let node = NodeFixture::new("lock", "t3.medium").await;
    let mut first = node.spawn_ipamd(&[]);
    first.wait_serving(SERVING_TIMEOUT).await.unwrap();
    let mut second = node.spawn_ipamd(&[]);
    let status = second.wait_exit(Duration::from_secs(20)).await.expect("the second ipamd must exit");
    assert!(!status.success());
    let log = second.log_text();
    assert!(log.contains("another ipamd (pid ") && log.contains("ipamd.lock"), "{log}");
    // The first one still owns its socket and serves.
    assert_eq!(first.serving().await, Some(true));
    assert!(add(&first, "c1").await.is_ok());
    first.terminate().await;
    node.cleanup().await;
}

#[tokio::test]
async fn enis_ipamd_did_not_create_or_no_manage_ones_are_left_alone() {
    let node = NodeFixture::new("foreign", "t3.medium").await;
    let me = node.instance_id().to_string();
    // One a user attached (no tag of ours), one of ours opted out with no_manage=true.
    let user = node.attach_eni(1, &[("team", "storage")]).await;
    let opted_out = node
        .attach_eni(2, &[(ipamd::reconcile::TAG_INSTANCE_ID, me.as_str()), (ipamd::reconcile::TAG_NO_MANAGE, "true")])
        .await;
    let mut ipamd = node.spawn_ipamd(&[("IPAMD_RECONCILE_INTERVAL", "1"), ("WARM_ENI_TARGET", "1")]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    // t3.medium: 3 ENIs, 5 secondary IPs each; two slots are taken, so the pool is the primary ENI alone.
    for i in 0..5 {
        add_retrying(&ipamd, &format!("c{i}"), Duration::from_secs(30)).await.expect("add");
    }
    let err = add(&ipamd, "c5").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("limit of 3 ENIs"), "{}", err.message());
    rounds_pass(&ipamd, 3).await;
    let enis = node.enis().await;
    assert_eq!(enis.len(), 3, "nothing detached or attached: {enis:?}");
    for (id, ips) in [&user, &opted_out] {
        let e = enis.iter().find(|e| &e.id == id).expect("still attached");
        assert_eq!(&e.secondary_ips, ips, "{id}: its IPs untouched");
    }
    let listed = ipamd.introspection().await.list_enis(pb::ListEnisRequest {}).await.unwrap().into_inner();
    assert_eq!(
        listed.enis.len(),
        1,
        "only the primary ENI is in the pool: {:?}",
        listed.enis.iter().map(|e| &e.eni_id).collect::<Vec<_>>()
    );
    ipamd.terminate().await;
    node.cleanup().await;
}

/// An attached ENI without any private IPv4 address: an EFA-only interface on p5/trn instances (or an IPv6-only ENI
/// a user attached), made here by the proxy cutting a user ENI's addresses from EC2's answers (IMDS, reading
/// through it, lists none either). ipamd reaches SERVING, serves pods from the rest, counts the ENI's slot
/// and leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eni_without_ipv4_never_stops_ipamd() {
    let node = NodeFixture::behind_proxy("efa", "t3.medium").await;
    let (efa, _) = node.attach_eni(1, &[]).await;
    node.proxy.as_ref().expect("proxy").without_ipv4(&efa);
    let mut ipamd = node.spawn_ipamd(&[("IPAMD_RECONCILE_INTERVAL", "1")]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.expect("SERVING with an EFA-only interface attached");
    // t3.medium: 3 ENIs of 5 secondary IPs; the EFA-only interface takes one slot, so two ENIs serve pods.
    for i in 0..10 {
        add_retrying(&ipamd, &format!("c{i}"), SETTLE).await.unwrap_or_else(|s| panic!("Add #{i}: {s:?}"));
    }
    let err = add_retrying(&ipamd, "c10", SETTLE).await.expect_err("the 11th pod finds the node full");
    assert!(err.message().contains("limit of 3 ENIs"), "{}", err.message());
    rounds_pass(&ipamd, 3).await;
    let enis: Vec<String> = node.enis().await.into_iter().map(|e| e.id).collect();
    assert_eq!(enis.len(), 3, "{enis:?}");
    assert!(enis.contains(&efa), "the EFA-only interface stays attached: {enis:?}");
    let pool: Vec<String> = pool_enis(&ipamd).await.into_iter().map(|e| e.eni_id).collect();
    assert!(!pool.contains(&efa) && pool.len() == 2, "the pool leaves it out: {pool:?}");
    ipamd.terminate().await;
    node.cleanup().await;
}

/// A CIDR associated with the VPC after ipamd started reaches new pods (their rules keep VPC traffic off
/// SNAT) without a restart: ipamd reads the VPC's CIDRs from IMDS every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpc_cidr_associated_later_reaches_new_pods() {
    let node = NodeFixture::new("vpc-cidr", "t3.medium").await;
    let mut ipamd = node.spawn_ipamd(&[]);
    ipamd.wait_serving(SERVING_TIMEOUT).await.unwrap();
    assert_eq!(add(&ipamd, "before").await.unwrap().vpc_cidrs, vec!["10.0.0.0/16".to_string()]);
    node.ec2.associate_vpc_cidr_block().vpc_id(&node.vpc.vpc_id).cidr_block("10.77.0.0/16").send().await.unwrap();
    let cidrs = eventually(SETTLE, "the new CIDR in an Add reply", || async {
        let r = add(&ipamd, "after").await.ok()?;
        r.vpc_cidrs.contains(&"10.77.0.0/16".to_string()).then_some(r.vpc_cidrs)
    })
    .await;
    assert!(cidrs.contains(&"10.0.0.0/16".to_string()), "{cidrs:?}");
    ipamd.terminate().await;
    node.cleanup().await;
}

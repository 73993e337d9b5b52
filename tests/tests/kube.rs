//! ipamd against a real Kubernetes API server (kube-apiserver + etcd from scripts/kube-apiserver.sh), running
//! as the DaemonSet's ServiceAccount through the RBAC of deploy/rbac.yaml: serving without an API server,
//! ENIConfig selection order and change, a missing / other-AZ ENIConfig and recovery, node facts, Events,
//! pod-aware clean-up and when it must hold back, and least privilege read off the API server's audit log.
//! EC2 is LocalStack; UnauthorizedOperation (which LocalStack never returns) comes from the fault proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::Client;
use serde_json::json;
use vpc_cni_proto::v1 as pb;
use vpc_sim::ec2faults::{CuttableRelay, Ec2FaultProxy};
use vpc_sim::fixture::{NodeFixture, add_pod, add_retrying, backoff_window, eventually, poll_until, try_status};
use vpc_sim::ipamd_proc::Ipamd;
use vpc_sim::kubeapi::{self, KubeEnv, SA_USER, SeenEvent};
use vpc_sim::localstack::REGION;

const WAIT: Duration = Duration::from_secs(60);
/// Where ipamd records Events about its Node (see ipamd::k8s::events).
const NODE_EVENTS: &str = "kube-system";
/// IPAMD_POD_GC_GRACE (seconds) of the scenarios where nothing may be released.
const GC_GRACE: &str = "1";

/// Long enough for the pod GC to have released a stale allocation if it were going to: the grace, then three
/// of its passes.
fn gc_window() -> Duration {
    let grace = Duration::from_secs(GC_GRACE.parse().expect("seconds"));
    grace + 3 * ipamd::k8s::podgc::tick(Some(grace))
}

struct Cluster {
    env: KubeEnv,
    admin: Client,
    /// Tests share the API server and the ServiceAccount; the least-privilege scenario runs alone (see
    /// [`cluster_alone`]), the others side by side.
    _turn: Turn,
}

#[allow(dead_code)] // Held for its Drop only.
enum Turn {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn cluster() -> Cluster {
    let turn = Turn::Shared(TURNS.read().await);
    connect(turn).await
}

/// The cluster with no other test of this suite running: every call the ServiceAccount makes meanwhile is this
/// test's own.
async fn cluster_alone() -> Cluster {
    let turn = Turn::Alone(TURNS.write().await);
    connect(turn).await
}

async fn connect(turn: Turn) -> Cluster {
    let env = KubeEnv::discover().expect("API server env (make test starts it: scripts/with-localstack.sh)");
    let admin = kubeapi::client(&env.admin).await.expect("admin client");
    kubeapi::install_deploy_basics(&admin).await.expect("CRD + RBAC from deploy/");
    Cluster { env, admin, _turn: turn }
}

/// ipamd settings for a node registered as `node` that reads the API server as the ServiceAccount.
fn kube_env<'a>(
    node: &'a str,
    kubeconfig: &'a std::path::Path,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, String)> {
    let mut env = vec![
        ("MY_NODE_NAME", node.to_string()),
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("IPAMD_RECONCILE_INTERVAL", "1".to_string()),
        ("LOG_LEVEL", "info,aws=warn,aws_smithy_runtime=warn,kube=warn".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn spawn(fx: &NodeFixture, env: &[(&str, String)]) -> Ipamd {
    Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), env).expect("spawn ipamd")
}

async fn status(ipamd: &Ipamd) -> pb::GetStatusReply {
    try_status(ipamd).await.expect("GetStatus")
}

/// Polls `vpcctl status`'s data until `pred` holds (ipamd may not have opened its socket yet).
async fn wait_status(ipamd: &Ipamd, what: &str, pred: impl Fn(&pb::GetStatusReply) -> bool) -> pb::GetStatusReply {
    eventually(WAIT, what, || async { try_status(ipamd).await.filter(|s| pred(s)) }).await
}

/// Waits for Events in `namespace` about `regarding` that `pred` accepts, and returns those.
async fn wait_events(
    admin: &Client,
    namespace: &str,
    regarding: &str,
    what: &str,
    pred: impl Fn(&SeenEvent) -> bool,
) -> Vec<SeenEvent> {
    eventually(WAIT, what, || async {
        let hit: Vec<_> = kubeapi::events_about(admin, namespace, regarding).await.into_iter().filter(&pred).collect();
        (!hit.is_empty()).then_some(hit)
    })
    .await
}

async fn allocated(ipamd: &Ipamd) -> BTreeSet<String> {
    let r = ipamd.introspection().await.list_allocations(pb::ListAllocationsRequest {}).await.expect("list");
    r.into_inner().allocations.into_iter().filter_map(|a| a.key.map(|k| k.container_id)).collect()
}

/// A subnet of the fixture's VPC in `az` (removed with the VPC).
async fn subnet(fx: &mut NodeFixture, cidr: &str, az: &str) -> String {
    let ec2 = fx.ec2.clone();
    fx.vpc.add_subnet(&ec2, cidr, az).await.expect("CreateSubnet")
}

/// A security group for pod ENIs (removed with the VPC).
async fn pod_sg(fx: &mut NodeFixture, name: &str) -> String {
    let ec2 = fx.ec2.clone();
    fx.vpc.add_security_group(&ec2, name).await.expect("CreateSecurityGroup")
}

/// (subnet, security groups, secondary IP count) of each ENI attached to the node, by device index.
/// LocalStack (moto) reports an attached ENI's groups as its own plus the instance's, so tests check that the
/// ENIConfig's groups are among them.
async fn eni_placements(fx: &NodeFixture) -> Vec<(String, Vec<String>, usize)> {
    let out = fx
        .ec2
        .describe_network_interfaces()
        .filters(aws_sdk_ec2::types::Filter::builder().name("attachment.instance-id").values(fx.instance_id()).build())
        .send()
        .await
        .expect("DescribeNetworkInterfaces");
    let mut v: Vec<(i32, String, Vec<String>, usize)> = out
        .network_interfaces()
        .iter()
        .map(|n| {
            (
                n.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
                n.subnet_id().unwrap_or_default().to_string(),
                n.groups().iter().filter_map(|g| g.group_id().map(String::from)).collect(),
                n.private_ip_addresses().iter().filter(|p| p.primary() != Some(true)).count(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s, g, n)| (s, g, n)).collect()
}

fn node_name(tag: &str, fx: &NodeFixture) -> String {
    format!("{tag}-{}", fx.instance_id())
}

#[tokio::test]
async fn ipamd_serves_without_an_api_server() {
    let c = cluster().await;
    let fx = NodeFixture::new("kube-noapi", "t3.medium").await;
    let kc = fx.dir.path().join("unreachable.kubeconfig");
    kubeapi::kubeconfig_with_server(&c.env.service_account, "https://127.0.0.1:1", &kc).unwrap();
    let node = node_name("kube-noapi", &fx);
    let mut ipamd = spawn(&fx, &kube_env(&node, &kc, &[]));
    ipamd.wait_serving(WAIT).await.expect("SERVING without an API server");
    let s = status(&ipamd).await;
    assert!(s.kube_api.starts_with("connecting"), "{}", s.kube_api);
    assert_eq!(s.max_pods_source, "instance limits");
    assert!(add_retrying(&ipamd, "c1", WAIT).await.is_ok(), "pods get IPs from EC2 alone");
    ipamd.terminate().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn eniconfig_selection_order_and_a_change_that_moves_new_enis_only() {
    let c = cluster().await;
    let tag = "kube-select";
    let mut fx = NodeFixture::new(tag, "m5.large").await;
    let az = format!("{REGION}a");
    let subnets = [
        subnet(&mut fx, "10.0.16.0/20", &az).await,
        subnet(&mut fx, "10.0.32.0/20", &az).await,
        subnet(&mut fx, "10.0.48.0/20", &az).await,
        subnet(&mut fx, "10.0.64.0/20", &az).await,
    ];
    let sg_name = format!("{tag}-pods-{}", fx.instance_id());
    let sg = pod_sg(&mut fx, &sg_name).await;
    let node = node_name(tag, &fx);
    let names = ["default".to_string(), format!("{node}-label"), format!("{node}-annotation"), format!("{node}-ext")];
    for (name, subnet) in names.iter().zip(&subnets) {
        kubeapi::put_eni_config(&c.admin, name, json!({"subnet": subnet, "securityGroups": [sg]})).await.unwrap();
    }
    kubeapi::put_node(&c.admin, &node, &BTreeMap::new(), None).await.unwrap();
    let env = kube_env(
        &node,
        &c.env.service_account,
        &[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"), ("IPAMD_POD_GC_GRACE", "0")],
    );
    let mut ipamd = spawn(&fx, &env);
    ipamd.wait_serving(WAIT).await.expect("SERVING");

    let s = wait_status(&ipamd, "the default ENIConfig", |s| s.eni_config == "default").await;
    assert!(s.eni_config_source.starts_with("default"), "{}", s.eni_config_source);
    assert_eq!(s.kube_api, "connected");
    let placed = eni_placements(&fx).await;
    assert_eq!(placed[0].2, 0, "the primary ENI holds no pod IP: {placed:?}");
    assert!(placed[1].0 == subnets[0] && placed[1].1.contains(&sg), "{placed:?}");

    let steps = [
        (json!({"labels": {"k8s.amazonaws.com/eniConfig": names[1]}}), &names[1], "label k8s.amazonaws.com/eniConfig"),
        (
            json!({"annotations": {"k8s.amazonaws.com/eniConfig": names[2]}}),
            &names[2],
            "annotation k8s.amazonaws.com/eniConfig",
        ),
        (
            json!({"labels": {"vpc.amazonaws.com/externalEniConfig": names[3]}}),
            &names[3],
            "label vpc.amazonaws.com/externalEniConfig",
        ),
    ];
    for (meta, name, source) in steps {
        kubeapi::patch_node_meta(&c.admin, &node, meta).await.unwrap();
        let s = wait_status(&ipamd, name, |s| &s.eni_config == name).await;
        assert_eq!(s.eni_config_source, source);
        assert_eq!(s.enis_from_other_eni_config.len(), 1, "the first ENI is reported: {s:?}");
        assert!(s.enis_from_other_eni_config[0].contains(&subnets[0]), "{s:?}");
    }
    // One pod more than the warm ENI keeps free makes ipamd attach another ENI: it follows the new ENIConfig,
    // the one attached before stays where it is.
    add_retrying(&ipamd, "c1", WAIT).await.expect("add");
    let placed = eventually(WAIT, "a third ENI", || async {
        let p = eni_placements(&fx).await;
        (p.len() == 3).then_some(p)
    })
    .await;
    assert_eq!(placed[1].0, subnets[0], "{placed:?}");
    assert!(placed[2].0 == subnets[3] && placed[2].1.contains(&sg), "{placed:?}");
    let events = kubeapi::events_about(&c.admin, NODE_EVENTS, &node).await;
    assert!(
        events.iter().any(|e| e.reason == "ENIConfigChanged" && e.type_ == "Normal" && e.controller == "vpc-cni"),
        "{events:?}"
    );
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn a_missing_or_other_zone_eniconfig_is_reported_and_ipamd_recovers() {
    let c = cluster().await;
    let tag = "kube-missing";
    let mut fx = NodeFixture::new(tag, "t3.medium").await;
    let good = subnet(&mut fx, "10.0.16.0/20", &format!("{REGION}a")).await;
    let elsewhere = subnet(&mut fx, "10.0.32.0/20", &format!("{REGION}b")).await;
    let sg_name = format!("{tag}-pods-{}", fx.instance_id());
    let sg = pod_sg(&mut fx, &sg_name).await;
    let node = node_name(tag, &fx);
    let zone = format!("{node}-zone");
    let labels = BTreeMap::from([("topology.kubernetes.io/zone".to_string(), zone.clone())]);
    kubeapi::put_node(&c.admin, &node, &labels, Some(58)).await.unwrap();
    let env = kube_env(
        &node,
        &c.env.service_account,
        &[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
            ("IPAMD_POD_GC_GRACE", "0"),
        ],
    );
    let mut ipamd = spawn(&fx, &env);

    let s = wait_status(&ipamd, "the missing ENIConfig", |s| s.eni_config_problem.contains("does not exist")).await;
    assert!(s.eni_config_problem.contains(&zone), "{}", s.eni_config_problem);
    assert!(!s.serving, "no pod can get an IP: the primary ENI serves none and no ENI can be made");
    assert_eq!((s.max_pods, s.max_pods_source.as_str()), (58, "node capacity"));
    wait_events(&c.admin, NODE_EVENTS, &node, "a MissingENIConfig Warning", |e| {
        e.reason == "MissingENIConfig" && e.type_ == "Warning" && e.controller == "vpc-cni"
    })
    .await;

    kubeapi::put_eni_config(&c.admin, &zone, json!({"subnet": elsewhere, "securityGroups": [sg]})).await.unwrap();
    let s = wait_status(&ipamd, "the other-zone subnet", |s| s.eni_config_problem.contains("us-east-1b")).await;
    assert!(s.eni_config_problem.contains("this node is in us-east-1a"), "{}", s.eni_config_problem);
    wait_events(&c.admin, NODE_EVENTS, &node, "an InvalidENIConfig Warning", |e| {
        e.reason == "InvalidENIConfig" && e.note.contains("us-east-1b")
    })
    .await;

    kubeapi::put_eni_config(&c.admin, &zone, json!({"subnet": good, "securityGroups": [sg]})).await.unwrap();
    ipamd.wait_serving(WAIT).await.expect("recovers once the ENIConfig is usable");
    let s = status(&ipamd).await;
    assert_eq!((s.eni_config.as_str(), s.eni_config_subnet.as_str()), (zone.as_str(), good.as_str()));
    assert_eq!(s.eni_config_source, "label topology.kubernetes.io/zone");
    assert!(s.eni_config_problem.is_empty(), "{}", s.eni_config_problem);
    let placed = eni_placements(&fx).await;
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert!(placed[0].2 == 0 && placed[1].0 == good && placed[1].1.contains(&sg), "{placed:?}");
    assert!(s.enis_from_other_eni_config.is_empty(), "{:?}", s.enis_from_other_eni_config);
    let reply = add_retrying(&ipamd, "c1", WAIT).await.expect("add");
    let cidr: ipnet::Ipv4Net = "10.0.16.0/20".parse().unwrap();
    assert!(cidr.contains(&reply.ipv4_addr.parse::<std::net::Ipv4Addr>().unwrap()), "{}", reply.ipv4_addr);
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

/// Registers `node`, creates namespace `ns` and returns the admin client's view for pods.
async fn pods_setup(c: &Cluster, node: &str, ns: &str) {
    kubeapi::put_node(&c.admin, node, &BTreeMap::new(), None).await.unwrap();
    kubeapi::ensure_namespace(&c.admin, ns).await.unwrap();
}

#[tokio::test]
async fn allocations_of_deleted_or_replaced_pods_are_released_after_the_grace_period() {
    let c = cluster().await;
    let tag = "kube-gc";
    let fx = NodeFixture::new(tag, "t3.medium").await;
    let node = node_name(tag, &fx);
    let ns = format!("gc-{}", fx.instance_id().trim_start_matches("i-"));
    pods_setup(&c, &node, &ns).await;
    let keep = kubeapi::create_pod(&c.admin, &ns, "keep", &node).await.unwrap();
    let gone = kubeapi::create_pod(&c.admin, &ns, "gone", &node).await.unwrap();
    let again = kubeapi::create_pod(&c.admin, &ns, "again", &node).await.unwrap();
    let env = kube_env(&node, &c.env.service_account, &[("IPAMD_POD_GC_GRACE", "3")]);
    let mut ipamd = spawn(&fx, &env);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    let mut ips = BTreeMap::new();
    for (container, name, uid) in [("c-keep", "keep", &keep), ("c-gone", "gone", &gone), ("c-again", "again", &again)] {
        let r = add_pod(&ipamd, container, (&ns, name, uid)).await.expect("add");
        kubeapi::set_pod_running(&c.admin, &ns, name, &r.ipv4_addr).await.unwrap();
        ips.insert(container, r.ipv4_addr);
    }
    kubeapi::create_pod(&c.admin, &ns, "foreign", &node).await.unwrap();
    kubeapi::set_pod_running(&c.admin, &ns, "foreign", "10.0.250.250").await.unwrap();
    let s = wait_status(&ipamd, "the foreign pod", |s| !s.unknown_pod_ips.is_empty()).await;
    assert_eq!(s.unknown_pod_ips, [format!("{ns}/foreign 10.0.250.250")]);
    assert!(s.pod_gc.starts_with("active"), "{}", s.pod_gc);

    // "gone" is deleted; "again" is deleted and created anew under the same name (another UID), as a
    // StatefulSet does: both allocations belong to pods that no longer exist.
    kubeapi::delete_pod(&c.admin, &ns, "gone").await.unwrap();
    kubeapi::delete_pod(&c.admin, &ns, "again").await.unwrap();
    kubeapi::create_pod(&c.admin, &ns, "again", &node).await.unwrap();
    let left = eventually(WAIT, "the two stale allocations released", || async {
        let a = allocated(&ipamd).await;
        (a.len() == 1).then_some(a)
    })
    .await;
    assert_eq!(left, BTreeSet::from(["c-keep".to_string()]));
    // The counter goes up just after each allocation is gone (after its log line and event).
    let s = wait_status(&ipamd, "stale_allocations_released to reach 2", |s| s.stale_allocations_released >= 2).await;
    assert_eq!(s.stale_allocations_released, 2);
    for pod in ["gone", "again"] {
        let what = format!("StaleAllocationReleased about {pod}");
        wait_events(&c.admin, &ns, pod, &what, |e| e.reason == "StaleAllocationReleased").await;
    }
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn nothing_is_released_when_pods_cannot_be_listed() {
    let c = cluster().await;
    let tag = "kube-norbac";
    let fx = NodeFixture::new(tag, "t3.medium").await;
    let node = node_name(tag, &fx);
    pods_setup(&c, &node, "default").await;
    // This user may not list pods: the cache stays empty because of an error, never "no pods".
    let env = kube_env(&node, &c.env.no_rbac, &[("IPAMD_POD_GC_GRACE", GC_GRACE)]);
    let mut ipamd = spawn(&fx, &env);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    add_pod(&ipamd, "ghost", ("default", "no-such-pod", "")).await.expect("add");
    // GC pauses as soon as the pod list is not ready ("listing"), and says why once the 403 comes back.
    wait_status(&ipamd, "GC paused on a forbidden list", |s| {
        s.pod_gc.starts_with("paused") && s.pod_gc.contains("forbidden") && s.kube_api.contains("forbidden")
    })
    .await;
    tokio::time::sleep(gc_window()).await;
    assert_eq!(allocated(&ipamd).await, BTreeSet::from(["ghost".to_string()]), "nothing released");
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn nothing_is_released_while_the_api_server_is_unreachable() {
    let c = cluster().await;
    let tag = "kube-cut";
    let fx = NodeFixture::new(tag, "t3.medium").await;
    let node = node_name(tag, &fx);
    pods_setup(&c, &node, "default").await;
    let pod = format!("cut-{}", fx.instance_id());
    let uid = kubeapi::create_pod(&c.admin, "default", &pod, &node).await.unwrap();
    let relay = CuttableRelay::start(c.env.server.trim_start_matches("https://")).await.unwrap();
    let kc = fx.dir.path().join("relay.kubeconfig");
    kubeapi::kubeconfig_with_server(&c.env.service_account, &format!("https://{}", relay.addr), &kc).unwrap();
    let env = kube_env(&node, &kc, &[("IPAMD_POD_GC_GRACE", GC_GRACE)]);
    let mut ipamd = spawn(&fx, &env);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    add_pod(&ipamd, "c1", ("default", &pod, &uid)).await.expect("add");
    wait_status(&ipamd, "GC active", |s| s.pod_gc.starts_with("active")).await;

    relay.cut();
    wait_status(&ipamd, "GC paused by the outage", |s| s.pod_gc.starts_with("paused")).await;
    kubeapi::delete_pod(&c.admin, "default", &pod).await.unwrap();
    tokio::time::sleep(gc_window()).await;
    assert_eq!(allocated(&ipamd).await, BTreeSet::from(["c1".to_string()]), "nothing released during the outage");

    relay.restore();
    eventually(Duration::from_secs(90), "release once the API server is back", || async {
        allocated(&ipamd).await.is_empty().then_some(())
    })
    .await;
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn unauthorized_operation_becomes_a_missing_iam_permissions_event() {
    let c = cluster().await;
    let tag = "kube-iam";
    let fx = NodeFixture::new(tag, "t3.medium").await;
    let node = node_name(tag, &fx);
    kubeapi::put_node(&c.admin, &node, &BTreeMap::new(), None).await.unwrap();
    let proxy = Ec2FaultProxy::to_localstack().await.unwrap();
    proxy.fail(
        "CreateNetworkInterface",
        403,
        "UnauthorizedOperation",
        "You are not authorized to perform this operation.",
    );
    let mut env = kube_env(&node, &c.env.service_account, &[("WARM_ENI_TARGET", "2"), ("IPAMD_POD_GC_GRACE", "0")]);
    env.push(("AWS_ENDPOINT_URL_EC2", proxy.endpoint.clone()));
    let mut ipamd = spawn(&fx, &env);
    let ev = wait_events(&c.admin, NODE_EVENTS, &node, "a MissingIAMPermissions Warning", |e| {
        e.reason == "MissingIAMPermissions"
    })
    .await;
    assert!(ev[0].note.contains("ec2:CreateNetworkInterface") && ev[0].type_ == "Warning", "{ev:?}");
    // The loop backs off rather than hammering EC2, and the Event is not repeated for every failure.
    // Over three doubling waits of the error backoff: at most four tries, and at least one (not given up).
    let before = proxy.calls("CreateNetworkInterface");
    let window = backoff_window(3);
    tokio::time::sleep(window).await;
    let during = proxy.calls("CreateNetworkInterface") - before;
    assert!((1..=4).contains(&during), "{during} CreateNetworkInterface calls in {window:?}");
    let ev = kubeapi::events_about(&c.admin, NODE_EVENTS, &node).await;
    assert_eq!(ev.iter().filter(|e| e.reason == "MissingIAMPermissions").count(), 1, "{ev:?}");
    let s = status(&ipamd).await;
    assert!(s.last_error.contains("UnauthorizedOperation"), "{}", s.last_error);
    proxy.heal("CreateNetworkInterface");
    ipamd.wait_serving(WAIT).await.expect("SERVING once the permission is there");
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

/// Prefix mode on a fragmented subnet (the fault proxy answers InsufficientCidrBlocks to prefix requests, as EC2
/// does; LocalStack ignores prefixes): the ENI falls back to single IPs and a PrefixFallback Warning says so.
#[tokio::test]
async fn a_prefix_fallback_becomes_a_warning_event() {
    let c = cluster().await;
    let tag = "kube-pfx";
    let fx = NodeFixture::behind_proxy(tag, "t3.medium").await;
    let proxy = fx.proxy.as_ref().unwrap();
    proxy.fail("AssignPrivateIpAddresses:prefix", 400, "InsufficientCidrBlocks", "no free /28 (test)");
    let node = node_name(tag, &fx);
    kubeapi::put_node(&c.admin, &node, &BTreeMap::new(), None).await.unwrap();
    let mut env =
        kube_env(&node, &c.env.service_account, &[("ENABLE_PREFIX_DELEGATION", "true"), ("IPAMD_POD_GC_GRACE", "0")]);
    env.push(("AWS_ENDPOINT_URL_EC2", proxy.endpoint.clone()));
    let mut ipamd = spawn(&fx, &env);
    let ev =
        wait_events(&c.admin, NODE_EVENTS, &node, "a PrefixFallback Warning", |e| e.reason == "PrefixFallback").await;
    let primary = fx.enis().await[0].id.clone();
    assert!(ev[0].type_ == "Warning" && ev[0].note.contains(&primary) && ev[0].note.contains("single"), "{ev:?}");
    ipamd.wait_serving(WAIT).await.expect("SERVING on single IPs");
    assert_eq!(status(&ipamd).await.prefix_fallback_enis, [primary]);
    ipamd.terminate().await;
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

/// (apiGroup, resource, verb) triples the ClusterRole in deploy/rbac.yaml grants.
fn granted() -> BTreeSet<(String, String, String)> {
    let docs = kubeapi::deploy_docs("rbac.yaml").unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").expect("ClusterRole in deploy/rbac.yaml");
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_daemonset_cluster_role_is_exactly_what_ipamd_uses() {
    // Alone, and reading only what is logged from here on: "granted but never used" is this scenario's proof.
    let c = cluster_alone().await;
    let window = kubeapi::audit_len(&c.env.audit_log);
    let tag = "kube-rbac";
    let mut fx = NodeFixture::new(tag, "t3.medium").await;
    let pods_subnet = subnet(&mut fx, "10.0.16.0/20", &format!("{REGION}a")).await;
    let node = node_name(tag, &fx);
    let labels = BTreeMap::from([("k8s.amazonaws.com/eniConfig".to_string(), format!("{node}-cfg"))]);
    kubeapi::put_node(&c.admin, &node, &labels, None).await.unwrap();
    kubeapi::put_eni_config(&c.admin, &format!("{node}-cfg"), json!({"subnet": pods_subnet})).await.unwrap();
    let pod = format!("rbac-{}", fx.instance_id());
    let uid = kubeapi::create_pod(&c.admin, "default", &pod, &node).await.unwrap();
    // Every feature that talks to the API server: custom networking, pod-aware clean-up (GET + Event), the
    // pod IP annotation (patch), NetworkPolicy (its watches; nothing is put in place outside a node's netns).
    let env = kube_env(
        &node,
        &c.env.service_account,
        &[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("IPAMD_POD_GC_GRACE", "1"),
            ("ANNOTATE_POD_IP", "true"),
            ("ENABLE_NETWORK_POLICY", "true"),
        ],
    );
    let mut ipamd = spawn(&fx, &env);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    add_pod(&ipamd, "c1", ("default", &pod, &uid)).await.expect("add");
    kubeapi::delete_pod(&c.admin, "default", &pod).await.unwrap();
    eventually(WAIT, "the stale allocation released", || async { allocated(&ipamd).await.is_empty().then_some(()) })
        .await;
    wait_events(&c.admin, "default", &pod, "its Event", |e| e.reason == "StaleAllocationReleased").await;
    ipamd.terminate().await;

    let granted = granted();
    // A watch is logged when it ends, a moment after ipamd's exit closed it: read until the log has caught up.
    let read = || async {
        let mine: Vec<_> =
            kubeapi::audit_entries_since(&c.env.audit_log, window).into_iter().filter(|a| a.user == SA_USER).collect();
        let used: BTreeSet<(String, String, String)> = mine
            .iter()
            .filter(|a| a.code < 400 || a.code == 404)
            .map(|a| (a.api_group.clone(), a.resource.clone(), a.verb.clone()))
            .collect();
        (mine, used)
    };
    let (mine, used) = poll_until(Duration::from_secs(15), read, |(_, used)| granted.is_subset(used)).await;
    let refused: Vec<_> = mine.iter().filter(|a| a.code == 401 || a.code == 403).collect();
    assert!(refused.is_empty(), "calls RBAC refused: {refused:?}");
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?} (used: {used:?})");
    let beyond: Vec<_> = used.difference(&granted).collect();
    assert!(beyond.is_empty(), "used without a grant: {beyond:?}");
    kubeapi::delete_node(&c.admin, &node).await;
    fx.cleanup().await;
}

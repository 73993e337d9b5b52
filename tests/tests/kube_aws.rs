//! aws-vpc-cni's Kubernetes-side settings on the real ipamd against a real API server (scripts/kube-apiserver.sh),
//! as the DaemonSet's ServiceAccount through deploy/rbac.yaml: ANNOTATE_POD_IP, AWS_MANAGE_ENIS_NON_SCHEDULABLE
//! and CLUSTER_ENDPOINT. EC2 is LocalStack.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tonic::Code;
use vpc_cni_proto::v1 as pb;
use vpc_sim::fixture::{NodeFixture, add, add_pod, del, eventually, rounds_pass};
use vpc_sim::ipamd_proc::Ipamd;
use vpc_sim::kubeapi::{self, KubeEnv};

const WAIT: Duration = Duration::from_secs(60);
const POD_IPS: &str = "vpc.amazonaws.com/pod-ips";

async fn admin() -> (KubeEnv, Client) {
    let env = KubeEnv::discover().expect("API server env (make test starts it: scripts/with-localstack.sh)");
    let admin = kubeapi::client(&env.admin).await.expect("admin client");
    kubeapi::install_deploy_basics(&admin).await.expect("CRD + RBAC from deploy/");
    (env, admin)
}

/// ipamd on `fx` registered as `node`, reading the API server as the DaemonSet's ServiceAccount.
fn spawn(fx: &NodeFixture, env: &KubeEnv, node: &str, extra: &[(&str, &str)]) -> Ipamd {
    let mut all = vec![
        ("MY_NODE_NAME", node.to_string()),
        ("KUBECONFIG", env.service_account.display().to_string()),
        ("IPAMD_RECONCILE_INTERVAL", "1".to_string()),
        ("LOG_LEVEL", "info,aws=warn,aws_smithy_runtime=warn,kube=warn".to_string()),
    ];
    all.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &all).expect("spawn ipamd")
}

async fn annotation(admin: &Client, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(admin.clone(), "default").get(name).await.ok()?;
    pod.metadata.annotations?.get(POD_IPS).cloned()
}

#[tokio::test]
async fn annotate_pod_ip_writes_the_pods_ip_and_empties_it_on_del() {
    let (env, admin) = admin().await;
    let fx = NodeFixture::new("kube-annotate", "t3.medium").await;
    let node = format!("annotate-{}", fx.instance_id());
    kubeapi::put_node(&admin, &node, &BTreeMap::new(), None).await.unwrap();
    let pod = format!("web-{}", fx.instance_id());
    let uid = kubeapi::create_pod(&admin, "default", &pod, &node).await.unwrap();
    let mut ipamd = spawn(&fx, &env, &node, &[("ANNOTATE_POD_IP", "true"), ("WARM_IP_TARGET", "3")]);
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    // The API side connects in the background: an ADD before it is "try again later", as for any patch failure.
    let ip = eventually(WAIT, "the ADD with its annotation", || async {
        add_pod(&ipamd, "c1", ("default", &pod, &uid)).await.ok().map(|r| r.ipv4_addr)
    })
    .await;
    assert_eq!(annotation(&admin, &pod).await.as_deref(), Some(ip.as_str()), "set on ADD");
    del(&ipamd, "c1").await.expect("DEL");
    eventually(WAIT, "the annotation emptied on DEL", || async {
        (annotation(&admin, &pod).await.as_deref() == Some("")).then_some(())
    })
    .await;

    // A newer value (another ADD's) is never wiped by an older pod's DEL.
    let ip = add_pod(&ipamd, "c2", ("default", &pod, &uid)).await.expect("ADD").ipv4_addr;
    let newer = json!({"metadata": {"annotations": {POD_IPS: "10.9.9.9"}}});
    Api::<Pod>::namespaced(admin.clone(), "default")
        .patch(&pod, &PatchParams::default(), &Patch::Merge(&newer))
        .await
        .unwrap();
    del(&ipamd, "c2").await.expect("DEL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(annotation(&admin, &pod).await.as_deref(), Some("10.9.9.9"), "the newer value is kept ({ip} was ours)");

    // A pod the API server does not know: the ADD fails naming it, and its retry (once the pod exists) gets the
    // IP the sandbox was holding.
    let ghost = format!("ghost-{}", fx.instance_id());
    let err = add_pod(&ipamd, "c3", ("default", &ghost, "uid-ghost")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&ghost) && err.message().contains("ANNOTATE_POD_IP"), "{}", err.message());
    let held = err.message().split_whitespace().find(|w| w.parse::<std::net::Ipv4Addr>().is_ok()).unwrap().to_string();
    let uid = kubeapi::create_pod(&admin, "default", &ghost, &node).await.unwrap();
    let retried = add_pod(&ipamd, "c3", ("default", &ghost, &uid)).await.expect("the retry").ipv4_addr;
    assert_eq!(retried, held, "the retry gets the IP the sandbox held");
    assert_eq!(annotation(&admin, &ghost).await.as_deref(), Some(held.as_str()));
    ipamd.terminate().await;
    for p in [&pod, &ghost] {
        kubeapi::delete_pod(&admin, "default", p).await.unwrap();
    }
    kubeapi::delete_node(&admin, &node).await;
    fx.cleanup().await;
}

async fn cordon(admin: &Client, node: &str, on: bool) {
    let patch = json!({"spec": {"unschedulable": on}});
    Api::<Node>::all(admin.clone()).patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Waits for the pool event `kind` on a stream opened before the change that causes it.
async fn next_event(events: &mut tonic::Streaming<pb::Event>, kind: &str) -> String {
    let wait = async {
        while let Some(ev) = events.message().await.expect("events") {
            if ev.kind == kind {
                return ev.message;
            }
        }
        panic!("event stream ended before {kind}");
    };
    tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| panic!("no {kind} event in {WAIT:?}"))
}

/// With aws' default, a cordoned node's pool is held: pods take the warm IPs, and no new one is assigned until
/// the node is uncordoned. With AWS_MANAGE_ENIS_NON_SCHEDULABLE=true it follows its targets regardless.
#[tokio::test]
async fn a_cordoned_nodes_pool_is_held_unless_told_otherwise() {
    let (env, admin) = admin().await;
    for manage in [false, true] {
        let fx = NodeFixture::new(&format!("kube-cordon-{manage}"), "t3.medium").await;
        let node = format!("cordon-{}", fx.instance_id());
        kubeapi::put_node(&admin, &node, &BTreeMap::new(), None).await.unwrap();
        let manage_text = manage.to_string();
        let extra = [("WARM_IP_TARGET", "2"), ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", manage_text.as_str())];
        let mut ipamd = spawn(&fx, &env, &node, &extra);
        ipamd.wait_serving(WAIT).await.expect("SERVING");
        eventually(WAIT, "2 warm IPs", || async { (fx.ip_counts().await == [2]).then_some(()) }).await;
        let mut events =
            ipamd.introspection().await.watch_events(pb::WatchEventsRequest {}).await.unwrap().into_inner();
        cordon(&admin, &node, true).await;
        if !manage {
            let why = next_event(&mut events, "pool-held").await;
            assert!(why.contains("cordoned"), "{why}");
        }
        // Pods still get the warm IPs; the pool would now want 2 more.
        for c in ["c1", "c2"] {
            add(&ipamd, c).await.expect("a cordoned node still serves pods");
        }
        rounds_pass(&ipamd, 3).await;
        let counts = fx.ip_counts().await;
        if manage {
            eventually(WAIT, "the pool refilled while cordoned", || async {
                (fx.ip_counts().await.iter().sum::<usize>() >= 4).then_some(())
            })
            .await;
        } else {
            assert_eq!(counts, [2], "cordoned: no IP assigned");
            cordon(&admin, &node, false).await;
            next_event(&mut events, "pool-released").await;
            eventually(WAIT, "the pool refilled once uncordoned", || async {
                (fx.ip_counts().await.iter().sum::<usize>() >= 4).then_some(())
            })
            .await;
        }
        ipamd.terminate().await;
        kubeapi::delete_node(&admin, &node).await;
        fx.cleanup().await;
    }
}

/// CLUSTER_ENDPOINT wins over the kubeconfig's server (here an address where nothing listens).
#[tokio::test]
async fn cluster_endpoint_is_the_api_servers_address() {
    let (env, admin) = admin().await;
    let fx = NodeFixture::new("kube-endpoint", "t3.medium").await;
    let node = format!("endpoint-{}", fx.instance_id());
    kubeapi::put_node(&admin, &node, &BTreeMap::new(), None).await.unwrap();
    let dead = fx.dir.path().join("dead.kubeconfig");
    let port = vpc_sim::fixture::free_port();
    kubeapi::kubeconfig_with_server(&env.service_account, &format!("https://127.0.0.1:{port}"), &dead).unwrap();
    let server = kubeapi::server_of(&env.service_account).expect("the kubeconfig's server");
    let mut all = vec![
        ("MY_NODE_NAME", node.clone()),
        ("KUBECONFIG", dead.display().to_string()),
        ("CLUSTER_ENDPOINT", server),
        ("LOG_LEVEL", "info,aws=warn,kube=warn".to_string()),
    ];
    all.push(("IPAMD_RECONCILE_INTERVAL", "1".to_string()));
    let mut ipamd = Ipamd::spawn(fx.dir.path(), &fx.imds.endpoint(), &all).expect("spawn ipamd");
    ipamd.wait_serving(WAIT).await.expect("SERVING");
    eventually(WAIT, "connected through CLUSTER_ENDPOINT", || async {
        let s = ipamd.introspection().await.get_status(pb::GetStatusRequest {}).await.ok()?.into_inner();
        (s.kube_api == "connected").then_some(())
    })
    .await;
    ipamd.terminate().await;
    kubeapi::delete_node(&admin, &node).await;
    fx.cleanup().await;
}

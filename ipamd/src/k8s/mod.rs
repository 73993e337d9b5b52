//! The Kubernetes side of ipamd, optional by design: without MY_NODE_NAME it is off, and without a reachable
//! API server ipamd still serves from EC2 and IMDS while a background task keeps trying (waiting for the API
//! server at start deadlocked node bootstrap in aws-vpc-cni). Once connected it watches this
//! node's Node object, this node's pods and the ENIConfigs (reflectors, not polling) into one [`KubeView`]
//! that says how fresh each part is; [`events`] records Events, [`podgc`] releases allocations of pods that
//! are gone, [`eniconfig`] picks the node's ENIConfig for custom networking.
//!
//! With ENABLE_NETWORK_POLICY it also watches NetworkPolicies, Namespaces and every pod of the cluster, converted by
//! [`policies`] into the model that NetworkPolicy enforcement reads.
//!
//! May use: pool and state (pod GC releases through the pool), cloud (EC2 errors become Events), tasks, clock
//! (pod GC's grace).

pub mod annotate;
pub mod eniconfig;
pub mod events;
pub mod podgc;
pub mod policies;
mod watch;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use tokio::sync::watch as chan;

use crate::tasks::Tasks;

use eniconfig::{EniConfig, EniConfigSpec, Selection};
pub use events::Recorder;

/// What ipamd reads from its Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.capacity.pods`, when the kubelet reported it.
    pub capacity_pods: Option<u32>,
    /// Cordoned: `spec.unschedulable`, or the `node.kubernetes.io/unschedulable` NoSchedule taint.
    pub unschedulable: bool,
}

/// What ipamd reads from a pod on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    pub phase: String,
    pub host_network: bool,
    pub ip: Option<Ipv4Addr>,
}

/// One watched collection and whether it can be trusted right now.
#[derive(Debug, Clone)]
pub struct Feed<T> {
    pub items: BTreeMap<String, T>,
    /// The initial list completed and no watch error has been seen since the stream last delivered.
    pub synced: bool,
    /// The last watch error (empty while healthy).
    pub error: String,
}

impl<T> Default for Feed<T> {
    fn default() -> Self {
        Self { items: BTreeMap::new(), synced: false, error: String::new() }
    }
}

/// Connection to the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ApiState {
    /// MY_NODE_NAME is not set: no Kubernetes features.
    #[default]
    Disabled,
    /// Not connected yet; the last attempt's error.
    Connecting(String),
    Connected,
}

const HEALTHY: &str = "connected";

/// Everything the watches know, published as a whole after every change.
#[derive(Debug, Clone, Default)]
pub struct KubeView {
    pub api: ApiState,
    /// Keyed by node name (at most one: this node).
    pub node: Feed<NodeFacts>,
    /// Keyed by `namespace/name`.
    pub pods: Feed<PodFacts>,
    /// Keyed by ENIConfig name; a malformed one holds the reason.
    pub eni_configs: Feed<Result<EniConfigSpec, String>>,
    /// ENABLE_NETWORK_POLICY: NetworkPolicies (`namespace/name`), Namespaces' labels, every pod of the cluster.
    pub policies: Feed<policies::Converted>,
    pub namespaces: Feed<BTreeMap<String, String>>,
    pub cluster_pods: Feed<netpol::PodInfo>,
    /// Whether the three feeds above are watched (they count for health then).
    pub network_policy: bool,
}

impl KubeView {
    /// Connected, every watch it needs listed and healthy (`ipamd_kube_api_connected`).
    pub fn healthy(&self, custom_networking: bool) -> bool {
        self.describe_api(custom_networking) == HEALTHY
    }

    /// One line for `vpcctl status`.
    pub fn describe_api(&self, custom_networking: bool) -> String {
        match &self.api {
            ApiState::Disabled => "disabled (MY_NODE_NAME unset)".into(),
            ApiState::Connecting(e) => format!("connecting: {e}"),
            ApiState::Connected => {
                let mut feeds =
                    vec![("node", self.node.synced, &self.node.error), ("pods", self.pods.synced, &self.pods.error)];
                if custom_networking {
                    feeds.push(("ENIConfigs", self.eni_configs.synced, &self.eni_configs.error));
                }
                if self.network_policy {
                    feeds.push(("NetworkPolicies", self.policies.synced, &self.policies.error));
                    feeds.push(("Namespaces", self.namespaces.synced, &self.namespaces.error));
                    feeds.push(("cluster pods", self.cluster_pods.synced, &self.cluster_pods.error));
                }
                let broken: Vec<String> =
                    feeds.iter().filter(|(_, _, e)| !e.is_empty()).map(|(n, _, e)| format!("{n}: {e}")).collect();
                if !broken.is_empty() {
                    format!("unreachable or refused: {}", broken.join("; "))
                } else if feeds.iter().all(|(_, synced, _)| *synced) {
                    HEALTHY.into()
                } else {
                    "connected, listing".into()
                }
            }
        }
    }
}

/// Settings of the Kubernetes side.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub node_name: String,
    /// Reporting instance of Events (MY_POD_NAME, else the node name).
    pub pod_name: Option<String>,
    pub custom_networking: bool,
    pub label_def: String,
    pub annotation_def: String,
    /// CLUSTER_ENDPOINT: the API server's address instead of the inferred one.
    pub endpoint: Option<String>,
    /// ENABLE_NETWORK_POLICY: watch NetworkPolicies, Namespaces and every pod.
    pub network_policy: bool,
}

/// What the reconciler and the clean-up report for `vpcctl status` and metrics.
#[derive(Debug, Clone, Default)]
pub struct KubeStatus {
    pub eni_config: Option<(Selection, EniConfigSpec)>,
    pub eni_config_problem: String,
    pub enis_from_other_config: Vec<String>,
    pub unknown_pod_ips: Vec<String>,
    pub stale_released: u64,
    pub pod_gc: String,
}

/// Handle on the Kubernetes side, cheap to clone; a disabled one answers with empty views.
#[derive(Clone)]
pub struct Kube {
    pub settings: Option<KubeSettings>,
    pub view: chan::Receiver<KubeView>,
    pub client: chan::Receiver<Option<Client>>,
    pub events: Recorder,
    pub status: Arc<Mutex<KubeStatus>>,
}

impl Kube {
    /// No API server use at all.
    pub fn disabled() -> Self {
        let (_, view) = chan::channel(KubeView::default());
        let (_, client) = chan::channel(None);
        Self { settings: None, view, client, events: Recorder::disabled(), status: Arc::default() }
    }

    /// Starts connecting in the background (under the supervisor) and returns at once.
    pub fn start(settings: KubeSettings, tasks: &Tasks) -> Self {
        let (view_tx, view) = chan::channel(KubeView {
            api: ApiState::Connecting("starting".into()),
            network_policy: settings.network_policy,
            ..KubeView::default()
        });
        let (client_tx, client) = chan::channel(None);
        let instance = settings.pod_name.clone().unwrap_or_else(|| settings.node_name.clone());
        let events = events::spawn(client.clone(), view.clone(), settings.node_name.clone(), instance, tasks);
        tasks.spawn_job("kube connect", connect_and_watch(settings.clone(), view_tx, client_tx, tasks.clone()));
        Self { settings: Some(settings), view, client, events, status: Arc::default() }
    }

    pub fn custom_networking(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.custom_networking)
    }

    /// Whether this node is cordoned, as far as a synced watch of its Node says (unknown counts as not).
    pub fn node_cordoned(&self) -> bool {
        let v = self.view.borrow();
        v.node.synced && v.node.items.values().any(|n| n.unschedulable)
    }

    /// The status, for a reader that only looks.
    pub fn status(&self) -> KubeStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut KubeStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// In-cluster config or KUBECONFIG (its server replaced by `endpoint` when given), proven by a request (so that a
/// wrong address or credential shows as such).
async fn connect(endpoint: Option<&str>) -> Result<Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| format!("no API server configuration: {e}"))?;
    if let Some(url) = endpoint {
        config.cluster_url = url.parse().map_err(|e| format!("CLUSTER_ENDPOINT '{url}': {e}"))?;
    }
    let client = Client::try_from(config).map_err(|e| format!("API client: {e}"))?;
    client.apiserver_version().await.map_err(|e| format!("API server: {e}"))?;
    Ok(client)
}

async fn connect_and_watch(
    settings: KubeSettings,
    view: chan::Sender<KubeView>,
    client_tx: chan::Sender<Option<Client>>,
    tasks: Tasks,
) {
    let mut backoff = backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let client = loop {
        match connect(settings.endpoint.as_deref()).await {
            Ok(c) => break c,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("Kubernetes API: {e}; retrying in {delay:.1?} (ipamd serves from EC2 meanwhile)");
                view.send_modify(|v| v.api = ApiState::Connecting(e));
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!(node = %settings.node_name, "Kubernetes API connected");
    view.send_modify(|v| v.api = ApiState::Connected);
    let _ = client_tx.send(Some(client.clone()));
    let node_sel = format!("metadata.name={}", settings.node_name);
    let pod_sel = format!("spec.nodeName={}", settings.node_name);
    let nodes = kube::Api::<Node>::all(client.clone());
    let pods = kube::Api::<Pod>::all(client.clone());
    tasks.spawn_loop(
        "kube watch Node",
        watch::follow(nodes, node_sel, view.clone(), |v| &mut v.node, watch::node_facts),
    );
    tasks.spawn_loop("kube watch Pods", watch::follow(pods, pod_sel, view.clone(), |v| &mut v.pods, watch::pod_facts));
    if settings.network_policy {
        use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
        let policies = kube::Api::<NetworkPolicy>::all(client.clone());
        tasks.spawn_loop(
            "kube watch NetworkPolicies",
            watch::follow(policies, String::new(), view.clone(), |v| &mut v.policies, watch::policy_facts),
        );
        let namespaces = kube::Api::<Namespace>::all(client.clone());
        tasks.spawn_loop(
            "kube watch Namespaces",
            watch::follow(namespaces, String::new(), view.clone(), |v| &mut v.namespaces, policies::namespace),
        );
        let all = kube::Api::<Pod>::all(client.clone());
        tasks.spawn_loop(
            "kube watch cluster Pods",
            watch::follow(all, String::new(), view.clone(), |v| &mut v.cluster_pods, watch::cluster_pod_facts),
        );
    }
    if settings.custom_networking {
        let configs = kube::Api::<EniConfig>::all(client);
        tasks.spawn_loop(
            "kube watch ENIConfigs",
            watch::follow(configs, String::new(), view, |v| &mut v.eni_configs, eniconfig::facts),
        );
    }
}

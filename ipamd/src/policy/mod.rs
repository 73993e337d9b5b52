//! NetworkPolicy enforcement (ENABLE_NETWORK_POLICY=true): one task owns what is enforced on this node. It follows
//! the Kubernetes side's feeds (NetworkPolicies, Namespaces, every pod) and the pods this node's AddNetwork
//! starts, compiles them with the pure `netpol` crate off the async runtime, and puts the result in place as one
//! nftables table of its own (`table inet vpc-cni-netpol`), replaced atomically by one `nft -f -` run. The kernel
//! keeps the last table across an ipamd restart: until the feeds are listed again nothing is replaced.
//!
//! An ADD waits ([`Enforcer::pod_started`]) until a table that knows the new pod (its veth in the verdict maps,
//! its IP in the peer sets) is in force — so its first packet already meets its policies. When the feeds are not
//! listed yet it waits at most [`UNSYNCED_WAIT`], then answers with the mode's default (standard: the pod is open
//! until its policies are known).
//!
//! May use: k8s (the feeds), node (the `nft` runner), tasks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::k8s::{Kube, KubeView};

/// How long an ADD waits for the feeds to be listed before the mode's default applies.
pub const UNSYNCED_WAIT: Duration = Duration::from_millis(500);
/// One `nft` run's limit.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ADD's IP for a pod is used while the API server does not report it.
const IP_HINT_FOR: Duration = Duration::from_secs(600);
/// Changes arriving this close together go into one table.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// What `vpcctl policy status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Tables put in place since start (0: none yet; the kernel may hold an earlier run's).
    pub generation: u64,
    pub applied_unix: i64,
    pub policies: usize,
    /// Pods of this node in the verdict maps.
    pub local_pods: usize,
    pub chains: usize,
    pub rules: usize,
    /// Policies' parts that could not be expressed and were dropped (narrowed, never widened).
    pub problems: Vec<String>,
    /// Why the last table could not be put in place (empty when it was).
    pub error: String,
    /// Every feed listed.
    pub synced: bool,
}

/// A pod this node's AddNetwork just started, and who waits for its table.
struct Started {
    key: String,
    ip: Ipv4Addr,
    done: oneshot::Sender<Result<u64, String>>,
}

/// Handle on the enforcer, cheap to clone.
#[derive(Clone)]
pub struct Enforcer {
    tx: mpsc::UnboundedSender<Started>,
    pub status: watch::Receiver<Status>,
    kube: Kube,
}

impl Enforcer {
    /// Starts the enforcing task under `tasks`.
    /// With `host_network` false (IPAMD_HOST_NETWORK=false: ipamd is not on a node it may change) every table is
    /// compiled and counted but none is put in place.
    pub fn start(kube: Kube, veth_prefix: String, host_network: bool, tasks: &crate::tasks::Tasks) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::default());
        let task = Task {
            kube: kube.clone(),
            veth_prefix,
            host_network,
            started: rx,
            status: status_tx,
            ips: BTreeMap::new(),
            generation: 0,
            cut: None,
        };
        tasks.spawn_loop("network policy", task.run());
        Self { tx, status, kube }
    }

    /// Both ends' verdicts on one new flow as the API server's objects say now (what the table enforces once
    /// it is in place). `from`/`to`: "namespace/name" of a pod, or an IPv4 address.
    pub fn explain(&self, from: &str, to: &str, proto: netpol::Proto, port: u16) -> Result<netpol::Decision, String> {
        let (policies, cluster) = model_of(&self.kube.view.borrow());
        let end = |s: &str| -> Result<netpol::Endpoint, String> {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                return Ok(cluster.endpoint_for(ip));
            }
            let (ns, name) =
                s.split_once('/').ok_or_else(|| format!("'{s}' is neither namespace/name nor an IPv4 address"))?;
            cluster.pod_index(ns, name).map(netpol::Endpoint::Pod).ok_or_else(|| format!("no pod {s} in the cluster"))
        };
        let flow = netpol::Flow { src: end(from)?, dst: end(to)?, proto, port };
        Ok(netpol::evaluate(&policies, &cluster, &flow))
    }

    /// Returns once a table knowing `namespace/name` at `ip` is in force (its generation), or the mode's default
    /// applies (0); an error when the table could not be put in place (the pod must not start unprotected).
    pub async fn pod_started(&self, namespace: &str, name: &str, ip: Ipv4Addr) -> Result<u64, String> {
        let (done, wait) = oneshot::channel();
        let key = format!("{namespace}/{name}");
        self.tx.send(Started { key, ip, done }).map_err(|_| "the network policy task has stopped".to_string())?;
        wait.await.map_err(|_| "the network policy task has stopped".to_string())?
    }
}

struct Task {
    kube: Kube,
    veth_prefix: String,
    host_network: bool,
    started: mpsc::UnboundedReceiver<Started>,
    status: watch::Sender<Status>,
    /// IPs this node's ADDs gave pods (and when), until the API server reports them.
    ips: BTreeMap<String, (Ipv4Addr, Instant)>,
    generation: u64,
    /// The table just put in place, for the conntrack cut that follows it.
    cut: Option<(netpol::Compiled, netpol::Cluster)>,
}

/// Deletes the conntrack entries of pod-opened flows that `compiled` denies (run in the node's namespace). Flows
/// opened from an address that is no pod's are left alone: the node's own (kubelet probes, which policy exempts)
/// cannot be told from another host's here.
fn cut_denied_flows(compiled: &netpol::Compiled, cluster: &netpol::Cluster) -> std::io::Result<usize> {
    datapath::conntrack::forget_flows(&|f| {
        let proto = match f.proto {
            6 => netpol::Proto::Tcp,
            17 => netpol::Proto::Udp,
            132 => netpol::Proto::Sctp,
            _ => return false,
        };
        let src = cluster.endpoint_for(f.src);
        if !matches!(src, netpol::Endpoint::Pod(_)) {
            return false;
        }
        let flow = netpol::Flow { src, dst: cluster.endpoint_for(f.dst), proto, port: f.dport };
        !compiled.allows(&flow)
    })
}

/// The policies and the cluster as the feeds hold them.
fn model_of(v: &KubeView) -> (Vec<netpol::Policy>, netpol::Cluster) {
    let policies = v.policies.items.values().map(|c| c.policy.clone()).collect();
    let mut cluster = netpol::Cluster::default();
    for (name, labels) in &v.namespaces.items {
        cluster.insert_namespace(name, labels.clone());
    }
    cluster.pods = v.cluster_pods.items.values().cloned().collect();
    (policies, cluster)
}

fn synced(v: &KubeView) -> bool {
    v.policies.synced && v.namespaces.synced && v.cluster_pods.synced && v.pods.synced
}

impl Task {
    async fn run(mut self) {
        let mut view = self.kube.view.clone();
        let mut waiting: Vec<(Instant, oneshot::Sender<Result<u64, String>>)> = Vec::new();
        let mut dirty = true;
        loop {
            if !dirty {
                tokio::select! {
                    changed = view.changed() => {
                        if changed.is_err() { return; }
                    }
                    Some(s) = self.started.recv() => self.take(s, &mut waiting),
                    // Unsynced waiters get the mode's default after UNSYNCED_WAIT.
                    _ = tokio::time::sleep(UNSYNCED_WAIT), if !waiting.is_empty() => {}
                }
            }
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(s) = self.started.try_recv() {
                self.take(s, &mut waiting);
            }
            dirty = false;
            if !synced(&view.borrow_and_update()) {
                // Nothing is replaced on a partial view; ADDs past their wait get the mode's default (open).
                let now = Instant::now();
                let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting)
                    .into_iter()
                    .partition(|(since, _)| now.duration_since(*since) >= UNSYNCED_WAIT);
                waiting = keep;
                for (_, done) in late {
                    let _ = done.send(Ok(0));
                }
                continue;
            }
            let result = self.apply().await;
            for (_, done) in waiting.drain(..) {
                let _ = done.send(result.clone());
            }
            // After the ADDs have their answer: flows the new table denies must not live on in conntrack.
            if let Some((compiled, cluster)) = self.cut.take() {
                match tokio::task::spawn_blocking(move || cut_denied_flows(&compiled, &cluster)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(flows = n, "network policy: established flows now denied were cut"),
                    Ok(Err(e)) => tracing::warn!("network policy: cutting denied flows: {e}"),
                    Err(e) => tracing::warn!("network policy: cutting denied flows: {e}"),
                }
            }
        }
    }

    fn take(&mut self, s: Started, waiting: &mut Vec<(Instant, oneshot::Sender<Result<u64, String>>)>) {
        self.ips.insert(s.key, (s.ip, Instant::now()));
        waiting.push((Instant::now(), s.done));
    }

    /// Compiles the current view (off the runtime) and puts the table in place.
    async fn apply(&mut self) -> Result<u64, String> {
        let (policies, cluster, local, problems) = {
            let v = self.kube.view.borrow();
            let (policies, mut cluster) = model_of(&v);
            let problems: Vec<String> = v
                .policies
                .items
                .iter()
                .flat_map(|(k, c)| c.problems.iter().map(move |p| format!("{k}: {p}")))
                .collect();
            // This node's ADDs know a pod's IP before the API server does; once it reports the same one (or after
            // a while: a pod deleted before it showed), the API server's word is the one kept.
            self.ips.retain(|k, (ip, at)| {
                at.elapsed() < IP_HINT_FOR && v.cluster_pods.items.get(k).is_none_or(|p| p.ip != Some(*ip))
            });
            for p in cluster.pods.iter_mut() {
                if let Some((ip, _)) = self.ips.get(&p.key()) {
                    p.ip = Some(*ip);
                }
            }
            let mut local: BTreeMap<String, String> = BTreeMap::new();
            for key in v.pods.items.keys().chain(self.ips.keys()) {
                if let Some((ns, name)) = key.split_once('/') {
                    local.insert(key.clone(), datapath::podnet::host_veth_name(&self.veth_prefix, ns, name));
                }
            }
            (policies, cluster, local, problems)
        };
        let local_pods = local.len();
        let built = tokio::task::spawn_blocking(move || {
            let compiled = netpol::compile(&policies, &cluster);
            let script = netpol::render(&compiled, &|k: &str| local.get(k).cloned());
            let chains = compiled.ingress.chains.len() + compiled.egress.chains.len();
            let rules = compiled.ingress.chains.iter().chain(&compiled.egress.chains).map(|c| c.rules.len()).sum();
            (script, policies.len(), chains, rules, compiled, cluster)
        })
        .await;
        let (script, policies, chains, rules, compiled, cluster) = built.map_err(|e| format!("compiling: {e}"))?;
        let applied = match self.host_network {
            true => crate::node::snat::nft(&["-f", "-"], Some(script), NFT_TIMEOUT).await.map(drop),
            false => Ok(()),
        };
        let mut st = self.status.borrow().clone();
        st.synced = true;
        st.problems = problems;
        let out = match applied {
            Ok(_) => {
                self.generation += 1;
                st.generation = self.generation;
                st.applied_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                (st.policies, st.local_pods, st.chains, st.rules) = (policies, local_pods, chains, rules);
                st.error.clear();
                if self.host_network {
                    self.cut = Some((compiled, cluster));
                }
                Ok(self.generation)
            }
            Err(e) => {
                st.error = e.to_string();
                tracing::warn!("network policy table not put in place: {e}");
                Err(format!("network policy not in force: {e}"))
            }
        };
        self.status.send_replace(st);
        out
    }
}

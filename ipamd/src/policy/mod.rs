//! NetworkPolicy enforcement (ENABLE_NETWORK_POLICY=true): one task owns what is enforced on this node. It follows
//! the Kubernetes side's feeds (NetworkPolicies, Namespaces, every pod) and the pods this node's AddNetwork
//! starts, compiles them with the pure `netpol` crate off the async runtime, and puts the result in place as one
//! nftables table of its own (`table inet vpc-cni-netpol`), replaced atomically by one `nft -f -` run. The kernel
//! keeps the last table across an ipamd restart: until the feeds are listed again nothing is replaced.
//!
//! An ADD waits ([`Enforcer::pod_started`]) until a table that knows the new pod (its veth in the verdict maps,
//! its IP in the peer sets) is in force — so its first packet already meets its policies. When the feeds are not
//! listed yet it waits at most [`UNSYNCED_WAIT`], then answers with the mode's default: standard, the pod is open
//! until its policies are known; strict, the ADD fails (the runtime retries it) and no pod starts open.
//!
//! May use: k8s (the feeds), node (libnftables), tasks.

mod load;
mod readback;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::k8s::{Kube, KubeView};

/// How long an ADD waits for the feeds to be listed before the mode's default applies.
pub const UNSYNCED_WAIT: Duration = Duration::from_millis(500);
/// Why a strict-mode ADD fails while the feeds are not listed.
const STRICT_UNSYNCED: &str = "the API server's NetworkPolicies, Namespaces and pods are not listed yet, and strict \
                               mode starts no pod before its policies are known";
/// How often the table is read back and compared with what was loaded.
pub const REPAIR_EVERY: Duration = Duration::from_secs(10);
/// How long an ADD's IP for a pod is used while the API server does not report it.
const IP_HINT_FOR: Duration = Duration::from_secs(600);
/// Feed changes arriving this close together go into one change (an ADD is not held back by it).
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
    /// How the last change went in: "elements" or "table" (replaced); empty before the first.
    pub last_change: &'static str,
    /// Times the table read back differed from what was loaded, and was replaced.
    pub repairs: u64,
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
    strict: bool,
    /// Pod "ns/name" → the generation in force when its ADD returned (`vpcctl pods`).
    started_in: StartedIn,
}

/// Shared between the handle (written when an ADD returns) and the task (pruned to this node's pods).
type StartedIn = std::sync::Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

impl Enforcer {
    /// Starts the enforcing task under `tasks`.
    /// With `host_network` false (IPAMD_HOST_NETWORK=false: ipamd is not on a node it may change) every table is
    /// compiled and counted but none is put in place. `strict`: NETWORK_POLICY_ENFORCING_MODE=strict.
    pub fn start(
        kube: Kube,
        veth_prefix: String,
        host_network: bool,
        strict: bool,
        tasks: &crate::tasks::Tasks,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::default());
        let started_in = StartedIn::default();
        let task = Task {
            started_in: started_in.clone(),
            fresh: Vec::new(),
            kube: kube.clone(),
            veth_prefix,
            started: rx,
            status: status_tx,
            ips: BTreeMap::new(),
            generation: 0,
            loader: Some(load::Loader::new(host_network)),
            host_network,
            strict,
        };
        tasks.spawn_loop("network policy", task.run());
        Self { tx, status, kube, strict, started_in }
    }

    /// Both ends' verdicts on one new flow as the API server's objects say now (what the table enforces once
    /// it is in place). `from`/`to`: "namespace/name" of a pod, or an IPv4 address.
    pub fn explain(&self, from: &str, to: &str, proto: netpol::Proto, port: u16) -> Result<netpol::Decision, String> {
        let (policies, cluster) = model_of(&self.kube.view.borrow(), self.strict);
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
        self.tx
            .send(Started { key: key.clone(), ip, done })
            .map_err(|_| "the network policy task has stopped".to_string())?;
        let generation = wait.await.map_err(|_| "the network policy task has stopped".to_string())??;
        self.started_in.lock().unwrap_or_else(|e| e.into_inner()).insert(key, generation);
        Ok(generation)
    }

    /// The generation in force when the pod's ADD returned, if it did since ipamd started.
    pub fn started_in(&self, namespace: &str, name: &str) -> Option<u64> {
        self.started_in.lock().unwrap_or_else(|e| e.into_inner()).get(&format!("{namespace}/{name}")).copied()
    }
}

struct Task {
    kube: Kube,
    veth_prefix: String,
    started: mpsc::UnboundedReceiver<Started>,
    status: watch::Sender<Status>,
    /// IPs this node's ADDs gave pods (and when), until the API server reports them.
    ips: BTreeMap<String, (Ipv4Addr, Instant)>,
    generation: u64,
    /// Moved onto the blocking pool for each load (None meanwhile).
    loader: Option<load::Loader>,
    host_network: bool,
    strict: bool,
    started_in: StartedIn,
    /// Pods whose ADD came since the last load: (key, address).
    fresh: Vec<(String, Ipv4Addr)>,
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

/// What a full compile tells the status.
struct Full {
    problems: Vec<String>,
    policies: usize,
    chains: usize,
    rules: usize,
}

/// The policies ("ns/name") isolating a pod of this node (`local`), in either direction.
fn isolating_here(compiled: &netpol::Compiled, local: &BTreeMap<String, String>) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for hook in [&compiled.ingress, &compiled.egress] {
        for (_, &chain) in hook.chain_of.iter().filter(|(pod, _)| local.contains_key(*pod)) {
            out.extend(hook.chains[chain].policies.iter().cloned());
        }
    }
    out
}

/// The policies and the cluster as the feeds hold them.
fn model_of(v: &KubeView, strict: bool) -> (Vec<netpol::Policy>, netpol::Cluster) {
    let policies = v.policies.items.values().map(|c| c.policy.clone()).collect();
    let mut cluster = netpol::Cluster { strict, ..netpol::Cluster::default() };
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
        let mut repair = tokio::time::interval(REPAIR_EVERY);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repair.reset();
        let mut dirty = true;
        // The feeds changed since the last full compile.
        let mut view_dirty = true;
        loop {
            if !dirty {
                tokio::select! {
                    changed = view.changed() => {
                        if changed.is_err() { return; }
                        view_dirty = true;
                        // Feed events come in bursts (a rollout, a relist): one change for the burst.
                        tokio::time::sleep(DEBOUNCE).await;
                    }
                    Some(s) = self.started.recv() => self.take(s, &mut waiting),
                    // Unsynced waiters get the mode's default after UNSYNCED_WAIT.
                    _ = tokio::time::sleep(UNSYNCED_WAIT), if !waiting.is_empty() => {}
                    _ = repair.tick() => {
                        if !self.drifted().await { continue; }
                    }
                }
            }
            while let Ok(s) = self.started.try_recv() {
                self.take(s, &mut waiting);
            }
            dirty = false;
            view_dirty |= view.has_changed().unwrap_or(true);
            if !synced(&view.borrow_and_update()) {
                // Nothing is replaced on a partial view; ADDs past their wait get the mode's default.
                let now = Instant::now();
                let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting)
                    .into_iter()
                    .partition(|(since, _)| now.duration_since(*since) >= UNSYNCED_WAIT);
                waiting = keep;
                for (_, done) in late {
                    let _ = done.send(match self.strict {
                        false => Ok(0),
                        true => Err(STRICT_UNSYNCED.to_string()),
                    });
                }
                continue;
            }
            // Only ADDs since the last load: their pods' addresses alone, not the whole cluster again.
            let fresh = std::mem::take(&mut self.fresh);
            let fast = match view_dirty || fresh.is_empty() {
                true => None,
                false => self.readdress(fresh).await,
            };
            let applied = match fast {
                Some(r) => r,
                None => {
                    view_dirty = false;
                    self.apply().await
                }
            };
            let (result, narrows) = match applied {
                Ok((generation, narrows)) => (Ok(generation), narrows),
                Err(e) => (Err(e), false),
            };
            for (_, done) in waiting.drain(..) {
                let _ = done.send(result.clone());
            }
            // After the ADDs have their answer: flows the new verdicts deny must not live on in conntrack.
            if narrows && self.host_network {
                self.cut_denied_flows().await;
            }
        }
    }

    /// Runs `f` on the loader on the blocking pool (the loader blocks: libnftables, conntrack, compiling) and puts
    /// it back; when `f` panics, a new loader that knows of no table takes its place (the next load replaces it).
    async fn on_loader<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut load::Loader) -> T + Send + 'static,
    ) -> Result<T, String> {
        let mut loader = self.loader.take().unwrap_or_else(|| load::Loader::new(self.host_network));
        match tokio::task::spawn_blocking(move || (f(&mut loader), loader)).await {
            Ok((out, loader)) => {
                self.loader = Some(loader);
                Ok(out)
            }
            Err(e) => {
                self.loader = Some(load::Loader::new(self.host_network));
                Err(e.to_string())
            }
        }
    }

    /// Reads the table back; on drift, says what and makes the next load a replacement.
    async fn drifted(&mut self) -> bool {
        let found = match self.on_loader(|l| l.drift()).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("network policy: reading the table back: {e}");
                return true;
            }
        };
        match found {
            Ok(found) if found.is_empty() => false,
            Ok(found) => {
                tracing::warn!(drift = %found.join("; "), "network policy: the table was changed by something else; replacing it");
                self.loader.as_mut().expect("just put back").forget();
                self.status.send_modify(|st| st.repairs += 1);
                true
            }
            Err(e) => {
                tracing::warn!("network policy: reading the table back: {e}");
                false
            }
        }
    }

    /// The ADD path ([`load::Loader::readdress`]); None when the whole view must be compiled instead.
    async fn readdress(&mut self, fresh: Vec<(String, Ipv4Addr)>) -> Option<Result<(u64, bool), String>> {
        let prefix = self.veth_prefix.clone();
        let r = self.on_loader(move |l| l.readdress(&fresh, &prefix)).await.ok()??;
        let local_pods = self.loader.as_ref().and_then(|l| l.loaded.as_ref()).map(|l| l.local.len());
        Some(self.record(r, None, local_pods))
    }

    /// Deletes the conntrack entries of flows the loaded table denies.
    async fn cut_denied_flows(&mut self) {
        let cut = |l: &mut load::Loader| l.loaded.as_ref().map_or(Ok(0), |l| cut_denied_flows(&l.compiled, &l.cluster));
        match self.on_loader(cut).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(flows = n, "network policy: established flows now denied were cut"),
            Ok(Err(e)) => tracing::warn!("network policy: cutting denied flows: {e}"),
            Err(e) => tracing::warn!("network policy: cutting denied flows: {e}"),
        }
    }

    fn take(&mut self, s: Started, waiting: &mut Vec<(Instant, oneshot::Sender<Result<u64, String>>)>) {
        self.fresh.push((s.key.clone(), s.ip));
        self.ips.insert(s.key, (s.ip, Instant::now()));
        waiting.push((Instant::now(), s.done));
    }

    /// A Warning Event on each policy that isolates a pod of this node and could not be expressed in full (the
    /// recorder sends the same note at most once per 10 minutes). Nodes where the policy selects no pod stay
    /// quiet, so a cluster of many nodes does not repeat it on every one.
    fn warn_narrowed(&self, narrowed: &[(String, String, Vec<String>)], here: &std::collections::BTreeSet<String>) {
        let node = self.kube.settings.as_ref().map_or("this node", |s| s.node_name.as_str());
        for (key, uid, problems) in narrowed.iter().filter(|(k, _, _)| here.contains(k)) {
            let Some((namespace, name)) = key.split_once('/') else { continue };
            self.kube.events.record(crate::k8s::events::Note {
                warning: true,
                reason: "PolicyNarrowed",
                action: "EnforceNetworkPolicy",
                note: format!("enforced on {node} narrower than written (never wider): {}", problems.join("; ")),
                regarding: crate::k8s::events::Regarding::NetworkPolicy {
                    namespace: namespace.into(),
                    name: name.into(),
                    uid: uid.clone(),
                },
            });
        }
    }

    /// Compiles the current view and puts it in place (off the runtime); the generation in force, and whether
    /// flows allowed before may now be denied.
    async fn apply(&mut self) -> Result<(u64, bool), String> {
        let (policies, cluster, local, problems, narrowed) = {
            let v = self.kube.view.borrow();
            let (policies, mut cluster) = model_of(&v, self.strict);
            let narrowed: Vec<(String, String, Vec<String>)> = v
                .policies
                .items
                .iter()
                .filter(|(_, c)| !c.problems.is_empty())
                .map(|(k, c)| (k.clone(), c.uid.clone(), c.problems.clone()))
                .collect();
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
            (policies, cluster, local, problems, narrowed)
        };
        let local_pods = local.len();
        let local_keys: std::collections::BTreeSet<String> = local.keys().cloned().collect();
        let done = self
            .on_loader(move |loader| {
                let compiled = netpol::compile(&policies, &cluster);
                let chains = compiled.ingress.chains.len() + compiled.egress.chains.len();
                let rules = compiled.ingress.chains.iter().chain(&compiled.egress.chains).map(|c| c.rules.len()).sum();
                let here = isolating_here(&compiled, &local);
                let outcome = loader.load(compiled, cluster, local);
                (outcome, policies.len(), chains, rules, here)
            })
            .await;
        let (applied, policies, chains, rules, here) = done.map_err(|e| format!("compiling: {e}"))?;
        self.warn_narrowed(&narrowed, &here);
        self.started_in.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| local_keys.contains(k));
        let full = Full { problems, policies, chains, rules };
        self.record(applied, Some(full), Some(local_pods))
    }

    /// Puts a load's outcome in the status; the generation in force and whether the change narrowed. `full`: what
    /// only a full compile knows.
    fn record(
        &mut self,
        applied: Result<load::Outcome, String>,
        full: Option<Full>,
        local_pods: Option<usize>,
    ) -> Result<(u64, bool), String> {
        let mut st = self.status.borrow().clone();
        st.synced = true;
        let out = match applied {
            Ok(outcome) => {
                if outcome.how != load::How::Unchanged {
                    self.generation += 1;
                    st.applied_unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                }
                st.generation = self.generation;
                match outcome.how {
                    load::How::Unchanged => {}
                    load::How::Elements => st.last_change = "elements",
                    load::How::Table => st.last_change = "table",
                }
                if let Some(f) = full {
                    (st.problems, st.policies, st.chains, st.rules) = (f.problems, f.policies, f.chains, f.rules);
                }
                st.local_pods = local_pods.unwrap_or(st.local_pods);
                st.error.clear();
                Ok((self.generation, outcome.narrows))
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

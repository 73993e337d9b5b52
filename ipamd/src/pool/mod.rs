//! The pool actor: the one owner of the datastore, driven by [`Command`]s over a channel. gRPC handlers and
//! the reconciler talk to it through [`PoolHandle`]; nothing else mutates pool state. Every change that a pod
//! depends on is checkpointed before the reply goes out (in groups: [`commit`]), so a crash loses nothing
//! that was promised. [`surge`] counts the pods waiting for an IP; [`deferred`] carries out the DELs the plugin
//! left on disk while ipamd was away.
//!
//! Its deadlines (cooldowns, the release grace, surge's window) and the ages it compares (GcNetworks) run on
//! the monotonic [`crate::clock`]; the wall clock only stamps what is shown or saved.
//!
//! May use: state, planner, cloud (the node facts it saves), tasks (its thread runs under the supervisor), clock.

mod commit;
pub mod deferred;
mod gauges;
mod handle;
pub use gauges::Gauges;
pub mod surge;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::clock::{Mono, Reading, SharedClock};
use crate::planner::{self, Action, Limits, Targets};
use crate::state::checkpoint::{Checkpoint, SavedEni, Store};
use crate::state::datastore::{AllocKey, Allocation, AssignError, Datastore, IpState, ObservedEni, Stats};
use crate::tasks::Tasks;

/// The actor's name under the supervisor.
pub const TASK: &str = "pool actor";

/// The wall clock, unix millis: for stamps that are shown or saved (events, status, tags), never a deadline.
pub fn now_ms() -> i64 {
    crate::clock::wall_ms()
}

/// One line of the event stream (`vpcctl events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub unix_millis: i64,
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("ipamd is starting: the first reconcile with EC2 has not completed yet")]
    NotReady,
    #[error("{0}; more IPs are being requested from EC2, retry shortly")]
    Exhausted(AssignError),
    #[error("{0}; the node is at its limit of {1} ENIs")]
    AtLimit(AssignError, u32),
    #[error("could not persist the allocation: {0}")]
    Checkpoint(String),
    #[error("the pool actor has stopped")]
    Stopped,
}

/// Reply to an Add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOutcome {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_number: u32,
}

/// Reply to a Del; `None` when nothing was held.
pub type DelOutcome = Option<(Allocation, u32)>;

/// A consistent copy of the pool for introspection and metrics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ds: Datastore,
    pub stats: Stats,
    pub limits: Option<Limits>,
    /// Pods the node can hold from the instance limits (one ENI fewer when the primary ENI is reserved).
    pub max_pods: Option<u32>,
    pub serving: bool,
    pub last_reconcile_unix: i64,
    /// Reconcile rounds finished since start, ok or failed.
    pub reconcile_rounds: u64,
    pub last_error: String,
    /// Set while serving from the last known pool because EC2 or IMDS cannot be reached.
    pub degraded: Option<String>,
    /// ENABLE_PREFIX_DELEGATION.
    pub prefix_delegation: bool,
    /// Checkpoint writes since start (group commit makes this fewer than the changes it made durable).
    pub checkpoint_writes: u64,
    /// The clocks when the snapshot was taken: what `ds`'s deadlines are compared with and shown as.
    pub taken: Reading,
}

pub enum Command {
    Add {
        key: AllocKey,
        pod_namespace: String,
        pod_name: String,
        pod_uid: String,
        reply: oneshot::Sender<Result<AddOutcome, PoolError>>,
    },
    Del {
        key: AllocKey,
        reply: oneshot::Sender<Result<DelOutcome, PoolError>>,
    },
    Check {
        key: AllocKey,
        reply: oneshot::Sender<Option<(Allocation, u32)>>,
    },
    Gc {
        network_name: String,
        valid: Vec<AllocKey>,
        reply: oneshot::Sender<Result<Vec<(AllocKey, Ipv4Addr)>, PoolError>>,
    },
    Observe {
        enis: Vec<ObservedEni>,
        limits: Limits,
        /// Attached ENIs ipamd does not manage: they take attachment slots.
        foreign: u32,
        reply: oneshot::Sender<()>,
    },
    /// Plans the next actions and reserves what they will remove.
    Plan {
        reply: oneshot::Sender<(Vec<Action>, Duration)>,
    },
    /// EC2 or IMDS cannot be reached: serve from what is known if there is anything. Replies whether serving.
    Degraded {
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    Reconciled {
        error: Option<String>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    /// Shutdown: commit and answer what came before, then end.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Static settings of the actor.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub primary_eni_id: String,
    pub targets: Targets,
    pub cooldown: Duration,
    pub reconcile_interval: Duration,
    /// Custom networking: the primary ENI serves no pods.
    pub primary_reserved: bool,
    /// IPAMD_SURGE: pods refused for want of an IP are asked for in one step (see [`crate::pool::surge`]).
    pub surge: bool,
    /// The node, saved in the checkpoint for a start without IMDS.
    pub node: Option<crate::cloud::imds::NodeInfo>,
}

struct Actor {
    ds: Datastore,
    clock: SharedClock,
    settings: PoolSettings,
    limits: Option<Limits>,
    store: Store,
    events: broadcast::Sender<Event>,
    kick: Arc<Notify>,
    serving: bool,
    last_reconcile_unix: i64,
    reconcile_rounds: u64,
    last_error: String,
    /// Attached ENIs ipamd does not manage (last observation).
    foreign: u32,
    /// Why ipamd serves from what it last knew (EC2 or IMDS unreachable).
    degraded: Option<String>,
    /// The ENIs as last written to the checkpoint.
    saved_enis: Vec<SavedEni>,
    /// Pods waiting for an IP.
    surge: crate::pool::surge::Surge,
    /// Checkpoint writes made (for metrics and the group-commit test).
    checkpoint_writes: u64,
    gauges: tokio::sync::watch::Sender<Gauges>,
}

/// Cheap, cloneable access to the actor.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::Sender<Command>,
    pub events: broadcast::Sender<Event>,
    pub kick: Arc<Notify>,
    /// The latest [`Gauges`] (for `/metrics`: read without a command to the actor).
    pub gauges: tokio::sync::watch::Receiver<Gauges>,
}

/// Starts the actor, under the supervisor, with the state restored from `checkpoint`.
pub fn spawn(
    settings: PoolSettings,
    store: Store,
    checkpoint: Checkpoint,
    tasks: &Tasks,
) -> std::io::Result<PoolHandle> {
    spawn_with_clock(settings, store, checkpoint, crate::clock::system(), tasks)
}

/// [`spawn`] on the given clocks (tests step them).
pub fn spawn_with_clock(
    settings: PoolSettings,
    store: Store,
    checkpoint: Checkpoint,
    clock: SharedClock,
    tasks: &Tasks,
) -> std::io::Result<PoolHandle> {
    let (tx, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(1024);
    let kick = Arc::new(Notify::new());
    let (gauges_tx, gauges) = gauges::channel();
    let now = clock.now();
    // The saved deadlines are another process's wall-clock times: what was cooling cools again from now.
    let mut ds = Datastore::restore(checkpoint.allocations, checkpoint.cooling.into_keys(), now, settings.cooldown);
    ds.primary_reserved = settings.primary_reserved;
    // The last known ENIs: used only if EC2 and IMDS cannot be reached (see `Degraded`); the first real
    // observation replaces them.
    ds.observe(checkpoint.enis.clone(), &settings.primary_eni_id, now);
    let limits = checkpoint.limits;
    let actor = Actor {
        ds,
        clock,
        settings,
        limits,
        store,
        events: events.clone(),
        kick: kick.clone(),
        serving: false,
        last_reconcile_unix: 0,
        reconcile_rounds: 0,
        last_error: String::new(),
        foreign: 0,
        degraded: None,
        saved_enis: checkpoint.enis,
        surge: crate::pool::surge::Surge::default(),
        checkpoint_writes: 0,
        gauges: gauges_tx,
    };
    actor.publish();
    // Its own thread: the checkpoint's fsyncs block, and must not hold up a runtime worker serving gRPC.
    tasks.spawn_thread(TASK, move || actor.run(rx))?;
    Ok(PoolHandle { tx, events, kick, gauges })
}

/// The actor for a unit test, under a supervisor nobody watches.
#[cfg(test)]
pub(crate) fn spawn_unsupervised(settings: PoolSettings, store: Store, checkpoint: Checkpoint) -> PoolHandle {
    spawn(settings, store, checkpoint, &crate::tasks::Supervisor::new().tasks()).unwrap()
}

impl Actor {
    fn emit(&self, kind: &'static str, message: String) {
        send_event(&self.events, kind, message);
    }

    /// Both clocks now; every deadline the actor sets or checks is on `.mono`.
    fn read(&self) -> Reading {
        self.clock.read()
    }

    fn checkpoint(&mut self) -> Result<(), PoolError> {
        let enis = self.saved_enis();
        let cooling = self.ds.cooling_wall(self.read());
        let parts = crate::state::checkpoint::Parts {
            allocations: &self.ds.allocations,
            cooling: &cooling,
            node: self.settings.node.as_ref(),
            limits: self.limits,
            enis: &enis,
            // The pool runs only once start-up has dealt with aws-node's checkpoint.
            aws_node_import: crate::state::checkpoint::AwsNodeImport::Done,
        };
        self.store.save_parts(parts).map_err(|e| PoolError::Checkpoint(e.to_string()))?;
        self.checkpoint_writes += 1;
        self.saved_enis = enis;
        Ok(())
    }

    /// The ENIs and their usable IPs as the checkpoint keeps them (IPs IMDS does not show yet, or on their
    /// way back to EC2, are left out: they are not to be served from).
    fn saved_enis(&self) -> Vec<SavedEni> {
        self.ds
            .enis
            .values()
            .map(|e| {
                let servable =
                    |ip: &Ipv4Addr| e.ips.get(ip).is_some_and(|s| !matches!(s, IpState::Pending | IpState::Releasing));
                SavedEni {
                    id: e.id.clone(),
                    mac: e.mac.clone(),
                    device_number: e.device_number,
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: e.subnet_cidr,
                    primary_ip: e.primary_ip,
                    secondary_ips: e
                        .ips
                        .keys()
                        .filter(|ip| servable(ip) && !crate::state::datastore::in_prefixes(&e.prefixes, ip))
                        .copied()
                        .collect(),
                    unconfirmed: Vec::new(),
                    ready: true,
                    // A prefix on its way back is left out; one IMDS does not show yet is too, unless a pod already
                    // holds an address of it (IMDS flapped): the pod's address must survive a restart.
                    prefixes: e
                        .prefixes
                        .iter()
                        .filter(|p| {
                            let states: Vec<IpState> = crate::state::datastore::prefix_addresses(p)
                                .filter_map(|ip| e.ips.get(&ip).copied())
                                .collect();
                            !states.contains(&IpState::Releasing) && states.iter().any(|s| *s != IpState::Pending)
                        })
                        .copied()
                        .collect(),
                    fallback: false,
                }
            })
            .collect()
    }

    /// Adds and Dels join `batch` (answered when it is committed, see pool_commit); anything else first commits
    /// it, so it sees (and may write) only committed state.
    fn handle(&mut self, cmd: Command, batch: &mut commit::Batch) {
        if !matches!(cmd, Command::Add { .. } | Command::Del { .. }) {
            self.commit(batch);
        }
        match cmd {
            Command::Add { key, pod_namespace, pod_name, pod_uid, reply } => {
                self.stage_add(batch, key, (&pod_namespace, &pod_name, pod_uid), Some(reply));
            }
            Command::Del { key, reply } => self.stage_del(batch, key, Some(reply)),
            Command::Check { key, reply } => {
                let found = self.ds.allocations.get(&key).map(|a| (a.clone(), self.ds.device_number(&a.eni_id)));
                let _ = reply.send(found);
            }
            Command::Gc { network_name, valid, reply } => {
                // Nothing younger than the cooldown: the runtime's list may predate an ADD still in flight. The age
                // is monotonic (a wall step forward must not make a new pod look old) and, for what was loaded from
                // the checkpoint, counts from the load.
                let now = self.read().mono;
                let stale: Vec<AllocKey> = self
                    .ds
                    .allocations
                    .keys()
                    .filter(|k| {
                        k.network_name == network_name
                            && !valid.contains(k)
                            && self.ds.age(k, now) >= self.settings.cooldown
                    })
                    .cloned()
                    .collect();
                // All or nothing, with one checkpoint write.
                for k in stale {
                    self.stage_del(batch, k, None);
                }
                let mut released = Vec::new();
                for s in self.commit(batch) {
                    match s {
                        commit::Staged::Del { key, result: Ok(Some((a, _))), .. } => released.push((key, a.ip)),
                        commit::Staged::Del { result: Err(e), .. } => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                        _ => {}
                    }
                }
                let _ = reply.send(Ok(released));
            }
            Command::Observe { enis, limits, foreign, reply } => {
                let now = self.read().mono;
                let before = self.ds.cooling.len();
                self.ds.observe(enis, &self.settings.primary_eni_id, now);
                self.limits = Some(limits);
                self.foreign = foreign;
                if (self.ds.cooling.len() != before || self.saved_enis() != self.saved_enis)
                    && let Err(e) = self.checkpoint()
                {
                    tracing::warn!("{e}");
                }
                let _ = reply.send(());
            }
            Command::Plan { reply } => {
                let _ = reply.send(self.plan());
            }
            Command::Degraded { reason, reply } => {
                let can_serve = self.limits.is_some() && self.ds.enis.values().any(|e| e.ready);
                if can_serve && self.degraded.is_none() {
                    self.emit("degraded", format!("serving from the last known pool: {reason}"));
                }
                self.serving |= can_serve;
                self.last_error = reason.clone();
                self.degraded = Some(reason);
                let _ = reply.send(can_serve);
            }
            Command::Reconciled { error } => {
                self.reconcile_rounds += 1;
                match error {
                    None => {
                        if self.degraded.take().is_some() {
                            self.emit("recovered", "EC2 and IMDS reachable again".into());
                        }
                        self.serving = true;
                        self.last_reconcile_unix = self.clock.wall_ms() / 1000;
                        self.last_error.clear();
                    }
                    Some(e) => {
                        self.emit("reconcile-error", e.clone());
                        self.last_error = e;
                    }
                }
            }
            Command::Stop { .. } => unreachable!("the run loop ends the actor on Stop"),
            Command::Snapshot { reply } => {
                let taken = self.read();
                let _ = reply.send(Snapshot {
                    stats: self.ds.stats(taken.mono),
                    ds: self.ds.clone(),
                    limits: self.limits,
                    max_pods: self.pod_limits().map(|l| l.max_pods(self.settings.targets.warm_prefix.is_some())),
                    serving: self.serving,
                    last_reconcile_unix: self.last_reconcile_unix,
                    reconcile_rounds: self.reconcile_rounds,
                    last_error: self.last_error.clone(),
                    degraded: self.degraded.clone(),
                    prefix_delegation: self.settings.targets.warm_prefix.is_some(),
                    checkpoint_writes: self.checkpoint_writes,
                    taken,
                });
            }
        }
    }

    /// The limits as the planner sees the pool: without the primary ENI when it is reserved, and without the
    /// slots of ENIs ipamd does not manage.
    fn pod_limits(&self) -> Option<Limits> {
        let reserved = u32::from(self.settings.primary_reserved) + self.foreign;
        self.limits.map(|l| Limits { max_enis: l.max_enis.saturating_sub(reserved), ..l })
    }

    /// Gives `key` an IP in memory (`true`: a new allocation, to be checkpointed before the reply).
    fn assign(
        &mut self,
        key: &AllocKey,
        (ns, name, uid): (&str, &str, String),
    ) -> Result<(AddOutcome, bool), PoolError> {
        if !self.serving && self.ds.enis.is_empty() {
            return Err(PoolError::NotReady);
        }
        let at = self.read();
        match self.ds.assign(key, ns, name, at) {
            Ok(a) => {
                self.surge.served(&crate::pool::surge::waiter(key, ns, name));
                if a.new
                    && let Some(al) = self.ds.allocations.get_mut(key)
                {
                    al.pod_uid = uid;
                }
                Ok((AddOutcome { ip: a.ip, eni_id: a.eni_id, device_number: a.device_number }, a.new))
            }
            Err(e) => {
                self.surge.refused(crate::pool::surge::waiter(key, ns, name), at.mono);
                self.kick.notify_one();
                let reserved = self.settings.primary_reserved;
                let enis: Vec<_> = self.ds.enis.values().filter(|e| !(reserved && e.primary)).collect();
                let at_limit = self.pod_limits().filter(|l| {
                    enis.len() as u32 >= l.max_enis
                        && enis.iter().all(|e| e.slots() as u32 >= l.ips_per_eni)
                        // IPs waiting for IMDS are about to be usable: not the end of the road.
                        && enis.iter().all(|e| e.ips.values().all(|s| *s != IpState::Pending))
                });
                match at_limit {
                    Some(_) => Err(PoolError::AtLimit(e, self.limits.map_or(0, |l| l.max_enis))),
                    None => Err(PoolError::Exhausted(e)),
                }
            }
        }
    }

    /// Whether the planner would add ENIs or IPs now. A pod's ADD kicks the reconciler only then: a round reads
    /// IMDS and the host, which a burst that the warm pool absorbs should not pay once per pod.
    fn wants_growth(&mut self) -> bool {
        let Some(limits) = self.pod_limits() else { return true };
        let now = self.read().mono;
        let targets = self.targets(now);
        planner::plan(&self.ds.view(now), targets, limits).iter().any(Action::grows)
    }

    /// The configured targets, with the pods waiting now when surge is on.
    fn targets(&mut self, now: Mono) -> Targets {
        let surge = if self.settings.surge { self.surge.demand(now) } else { 0 };
        Targets { surge, ..self.settings.targets }
    }

    fn plan(&mut self) -> (Vec<Action>, Duration) {
        let now = self.read().mono;
        let idle = self.settings.reconcile_interval;
        let requeue = match self.ds.next_cooldown_expiry(now) {
            Some(t) => idle.min(t.since(now) + Duration::from_millis(50)),
            None => idle,
        };
        let Some(limits) = self.pod_limits() else {
            return (Vec::new(), requeue);
        };
        let targets = self.targets(now);
        let mut actions = planner::plan(&self.ds.view(now), targets, limits);
        if targets.surge > 0 && actions.iter().any(Action::grows) {
            self.emit(
                "surge",
                format!("{} pods are waiting for an IP: asking EC2 for them in one step ({actions:?})", targets.surge),
            );
        }
        // Reserve what will be removed, so no pod is handed an address that is on its way out.
        actions.retain_mut(|a| match a {
            Action::UnassignIps { eni_id, ips } => {
                *ips = self.ds.reserve_for_release(eni_id, ips, now);
                !ips.is_empty()
            }
            Action::UnassignPrefixes { eni_id, prefixes } => {
                *prefixes = self.ds.reserve_prefixes_for_release(eni_id, prefixes, now);
                !prefixes.is_empty()
            }
            Action::DeleteEni { eni_id } => self.ds.reserve_eni_for_delete(eni_id, now),
            _ => true,
        });
        (actions, requeue)
    }
}

fn send_event(events: &broadcast::Sender<Event>, kind: &'static str, message: String) {
    tracing::info!(kind, "{message}");
    // No subscriber is fine: events are for whoever is watching.
    let _ = events.send(Event { unix_millis: now_ms(), kind, message });
}

#[cfg(test)]
pub(crate) mod tests;

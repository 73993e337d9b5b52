//! Group commit for the pool actor: the Add and Del commands already waiting in the channel are applied
//! together and made durable with one checkpoint write, and only then answered. A burst of pods (or a busy
//! node's churn) costs one write per batch instead of one per pod, while each reply still promises only what is
//! on disk. A failed write undoes the whole batch, newest change first, and every change in it is answered with
//! the error (the runtime retries).

use tokio::sync::{mpsc, oneshot};

use super::{Actor, AddOutcome, Command, DelOutcome, PoolError};
use crate::clock::Mono;
use crate::state::datastore::AllocKey;

/// At most this many changes share one checkpoint write (the channel holds 256 commands).
const MAX_BATCH: usize = 256;

type AddReply = oneshot::Sender<Result<AddOutcome, PoolError>>;
type DelReply = oneshot::Sender<Result<DelOutcome, PoolError>>;

/// One Add or Del applied in memory, waiting for the batch's checkpoint write (a Del keeps when its allocation
/// was made, `born`, for an undo).
pub(super) enum Staged {
    Add { key: AllocKey, new: bool, result: Result<AddOutcome, PoolError>, reply: Option<AddReply> },
    Del { key: AllocKey, born: Option<Mono>, result: Result<DelOutcome, PoolError>, reply: Option<DelReply> },
}

#[derive(Default)]
pub(super) struct Batch {
    staged: Vec<Staged>,
    /// Something in memory changed: the checkpoint must be written before anyone is answered.
    dirty: bool,
}

impl Actor {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Batch::default();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut stop = None;
            while let Some(cmd) = next {
                if let Command::Stop { reply } = cmd {
                    stop = Some(reply);
                    break;
                }
                self.handle(cmd, &mut batch);
                if batch.staged.len() >= MAX_BATCH {
                    self.commit(&mut batch);
                }
                next = rx.try_recv().ok();
            }
            self.commit(&mut batch);
            self.publish();
            // Everything sent before the stop is durable and answered.
            if let Some(reply) = stop {
                let _ = reply.send(());
                return;
            }
        }
    }

    pub(super) fn stage_add(
        &mut self,
        batch: &mut Batch,
        key: AllocKey,
        (ns, name, uid): (&str, &str, String),
        reply: Option<AddReply>,
    ) {
        let result = self.assign(&key, (ns, name, uid));
        let new = matches!(result, Ok((_, true)));
        batch.dirty |= new;
        batch.staged.push(Staged::Add { key, new, result: result.map(|(o, _)| o), reply });
    }

    pub(super) fn stage_del(&mut self, batch: &mut Batch, key: AllocKey, reply: Option<DelReply>) {
        let born = self.ds.born.get(&key).copied();
        let out = self.ds.release(&key, self.read().mono, self.settings.cooldown);
        batch.dirty |= out.is_some();
        batch.staged.push(Staged::Del { key, born, result: Ok(out), reply });
    }

    /// Writes the checkpoint if the batch changed anything, then answers every staged command; returns the
    /// final outcomes (for callers without a reply channel).
    pub(super) fn commit(&mut self, batch: &mut Batch) -> Vec<Staged> {
        let mut staged = std::mem::take(&mut batch.staged);
        if std::mem::take(&mut batch.dirty) {
            match self.checkpoint() {
                Ok(()) => self.announce(&staged),
                Err(e) => {
                    let now = self.read().mono;
                    for s in staged.iter().rev() {
                        match s {
                            // Not durable means not promised: a restart must not hand the IP out twice.
                            Staged::Add { key, new: true, result: Ok(_), .. } => {
                                self.ds.release(key, now, std::time::Duration::ZERO);
                            }
                            // Memory follows the disk: the allocation stays until a DEL is durable (the runtime
                            // retries DEL), so the IP cannot go to a new pod while a restart would still give it
                            // to the old one.
                            Staged::Del { key, born, result: Ok(Some((a, _))), .. } => {
                                // As old as it was: pod GC retries a gone pod's release at its next pass, not
                                // a whole grace later.
                                self.ds.restore_allocation(key.clone(), a.clone(), born.unwrap_or(now));
                                // Written nowhere: if the runtime gives up on this DEL, the log says whose IP
                                // stays held, and who releases it (pod GC once the pod is gone, or the
                                // runtime's CNI GC).
                                tracing::error!(
                                    ip = %a.ip, pod = %format!("{}/{}", a.pod_namespace, a.pod_name),
                                    container = %key.container_id,
                                    "DEL not carried out, the checkpoint cannot be written ({e}): the IP stays held \
                                     until a retried DEL, pod GC (once the pod is gone) or the runtime's GC is written"
                                );
                            }
                            _ => {}
                        }
                    }
                    for s in &mut staged {
                        match s {
                            Staged::Add { result, .. } if result.is_ok() => *result = Err(e.clone()),
                            Staged::Del { result, .. } if result.is_ok() => *result = Err(e.clone()),
                            _ => {}
                        }
                    }
                }
            }
        }
        for s in &mut staged {
            match s {
                Staged::Add { result, reply, .. } => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(result.clone());
                    }
                }
                Staged::Del { result, reply, .. } => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(result.clone());
                    }
                }
            }
        }
        staged
    }

    /// Events for the committed changes; a new allocation shrank the pool: if that takes it below its targets,
    /// the reconciler tops it up now rather than at its next tick.
    fn announce(&mut self, staged: &[Staged]) {
        let mut assigned = false;
        for s in staged {
            match s {
                Staged::Add { key, new: true, result: Ok(a), .. } => {
                    assigned = true;
                    if let Some(al) = self.ds.allocations.get(key) {
                        let pod = format!("{}/{}", al.pod_namespace, al.pod_name);
                        self.emit("ip-assigned", format!("{} to {pod} ({})", a.ip, key.container_id));
                    }
                }
                Staged::Del { key, result: Ok(Some((a, _))), .. } => self.emit(
                    "ip-released",
                    format!(
                        "{} from {}/{} ({}), cooling {}s",
                        a.ip,
                        a.pod_namespace,
                        a.pod_name,
                        key.container_id,
                        self.settings.cooldown.as_secs()
                    ),
                ),
                _ => {}
            }
        }
        if assigned && self.wants_growth() {
            self.kick.notify_one();
        }
    }
}

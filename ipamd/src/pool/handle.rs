//! The pool's handle: one async method per [`Command`], each a message to the actor and its reply (the only way
//! in; the actor owns the state).

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::sync::oneshot;

use super::*;

impl PoolHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }

    pub async fn add(
        &self,
        key: AllocKey,
        pod_namespace: String,
        pod_name: String,
        pod_uid: String,
    ) -> Result<AddOutcome, PoolError> {
        self.call(|reply| Command::Add { key, pod_namespace, pod_name, pod_uid, reply }).await?
    }

    pub async fn del(&self, key: AllocKey) -> Result<DelOutcome, PoolError> {
        self.call(|reply| Command::Del { key, reply }).await?
    }

    pub async fn check(&self, key: AllocKey) -> Result<Option<(Allocation, u32)>, PoolError> {
        self.call(|reply| Command::Check { key, reply }).await
    }

    pub async fn gc(&self, network_name: String, valid: Vec<AllocKey>) -> Result<Vec<(AllocKey, Ipv4Addr)>, PoolError> {
        self.call(|reply| Command::Gc { network_name, valid, reply }).await?
    }

    pub async fn observe(&self, enis: Vec<ObservedEni>, limits: Limits, foreign: u32) -> Result<(), PoolError> {
        self.call(|reply| Command::Observe { enis, limits, foreign, reply }).await
    }

    pub async fn plan(&self) -> Result<(Vec<Action>, Duration), PoolError> {
        self.call(|reply| Command::Plan { reply }).await
    }

    /// Reports EC2 or IMDS unreachable; returns whether the pool serves anyway (from what it last knew).
    pub async fn degraded(&self, reason: String) -> Result<bool, PoolError> {
        self.call(|reply| Command::Degraded { reason, reply }).await
    }

    pub async fn reconciled(&self, error: Option<String>) -> Result<(), PoolError> {
        self.tx.send(Command::Reconciled { error }).await.map_err(|_| PoolError::Stopped)
    }

    /// Ends the actor once everything sent before is durable and answered.
    pub async fn stop(&self) -> Result<(), PoolError> {
        self.call(|reply| Command::Stop { reply }).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, PoolError> {
        self.call(|reply| Command::Snapshot { reply }).await
    }

    pub fn emit(&self, kind: &'static str, message: String) {
        send_event(&self.events, kind, message);
    }
}

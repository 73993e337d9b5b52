//! Carrying out the planner's actions in EC2, keeping the EC2 view ([`super::ec2sync`]) in step with each
//! result so that the next round needs no Describe, and repairing what an interrupted action left: an ENI
//! created but never attached is deleted, an attachment without DeleteOnTermination gets it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use backoff::Backoff;

use super::placement::Placement;
use super::{ReconcileError, Reconciler, TAG_CLUSTER, TAG_CREATED_AT, TAG_INSTANCE_ID};
use crate::cloud::ec2::{Ec2Api, Ec2Eni, Ec2Error, ErrorKind, NewEni};
use crate::cloud::imds::Metadata;
use crate::planner::{Action, PREFIX_IPS};
use datapath::HostNet;

impl<E: Ec2Api, M: Metadata, N: HostNet> Reconciler<E, M, N> {
    fn tags(&self) -> std::collections::BTreeMap<String, String> {
        let mut tags = self.settings.additional_tags.clone();
        tags.insert(TAG_INSTANCE_ID.into(), self.node.instance_id.clone());
        let created = crate::pool::now_ms() / 1000;
        tags.insert(TAG_CREATED_AT.into(), created.to_string());
        if !self.settings.cluster_name.is_empty() {
            tags.insert(TAG_CLUSTER.into(), self.settings.cluster_name.clone());
        }
        tags
    }

    /// Applies one action. On an error the EC2 view is dropped (what EC2 did is no longer known), so the next
    /// round asks EC2.
    pub(super) async fn apply(
        &mut self,
        action: &Action,
        used: &mut BTreeSet<u32>,
        placement: &Result<Placement, String>,
    ) -> Result<(), ReconcileError> {
        let result = self.apply_inner(action, used, placement).await;
        if matches!(result, Err(ReconcileError::Ec2(_))) {
            self.sync.invalidate();
        }
        result
    }

    async fn apply_inner(
        &mut self,
        action: &Action,
        used: &mut BTreeSet<u32>,
        placement: &Result<Placement, String>,
    ) -> Result<(), ReconcileError> {
        match action {
            Action::CreateEni { ip_count } => {
                self.create_eni(*ip_count, 0, used, placement).await?;
            }
            Action::CreateEniWithPrefixes { prefix_count } => {
                match self.create_eni(0, *prefix_count, used, placement).await {
                    Err(ReconcileError::Ec2(e)) if e.kind == ErrorKind::InsufficientCidrBlocks => {
                        // No free aligned /28 in the subnet: an ENI of single IPs still serves pods.
                        let ip_count = (prefix_count * PREFIX_IPS).min(self.limits().await?.ips_per_eni);
                        let id = self.create_eni(ip_count, 0, used, placement).await?;
                        self.fall_back(&id, &e);
                    }
                    other => {
                        other?;
                    }
                }
            }
            Action::AssignPrefixes { eni_id, count } => match self.ec2.assign_prefixes(eni_id, *count).await {
                Ok(prefixes) => {
                    self.sync.assigned_prefixes(eni_id, &prefixes, Instant::now());
                    let list = prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                    self.pool.emit("prefixes-assigned", format!("{list} to {eni_id}"));
                }
                // The planner asks for single IPs on this ENI from the next round (at once: this round acted).
                Err(e) if e.kind == ErrorKind::InsufficientCidrBlocks => self.fall_back(eni_id, &e),
                Err(e) => return Err(e.into()),
            },
            Action::UnassignPrefixes { eni_id, prefixes } => {
                self.ec2.unassign_prefixes(eni_id, prefixes).await?;
                let list = prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                self.pool.emit("prefixes-unassigned", format!("{list} from {eni_id}"));
                self.settings.telemetry.awscni().reconciled("eniIPPoolReconcileDel", prefixes.len() as u64);
                self.sync.unassigned_prefixes(eni_id, prefixes, Instant::now());
            }
            Action::AssignIps { eni_id, count } => {
                let ips = self.ec2.assign_ips(eni_id, *count).await?;
                let added = self.sync.assigned(eni_id, &ips, Instant::now());
                self.pool.emit("ips-assigned", format!("{added} IPs to {eni_id}"));
            }
            Action::UnassignIps { eni_id, ips } => {
                self.ec2.unassign_ips(eni_id, ips).await?;
                self.pool.emit("ips-unassigned", format!("{} IPs from {eni_id}", ips.len()));
                self.settings.telemetry.awscni().reconciled("eniIPPoolReconcileDel", ips.len() as u64);
                self.sync.unassigned(eni_id, ips, Instant::now());
            }
            Action::DeleteEni { eni_id } => {
                let attachment =
                    self.sync.enis().iter().find(|e| &e.id == eni_id).and_then(|e| e.attachment_id.clone());
                if let Some(att) = attachment {
                    self.ec2.detach_eni(&att).await?;
                    self.settings.telemetry.eni("detached");
                }
                self.delete_with_retry(eni_id).await?;
                self.pool.emit("eni-deleted", format!("{eni_id} detached and deleted"));
                self.sync.deleted(eni_id, Instant::now());
            }
        }
        Ok(())
    }

    /// Creates an ENI with `ip_count` IPs or `prefix_count` prefixes, attaches it at the lowest free device
    /// index and sets DeleteOnTermination. Returns its id.
    async fn create_eni(
        &mut self,
        ip_count: u32,
        prefix_count: u32,
        used: &mut BTreeSet<u32>,
        placement: &Result<Placement, String>,
    ) -> Result<String, ReconcileError> {
        let mut place = placement.clone().map_err(ReconcileError::EniConfig)?;
        if place.discover {
            // Its primary address, and its IPs (or prefixes: the subnet's free count is in addresses).
            place.subnet_id = self.discover_subnet(ip_count + prefix_count * PREFIX_IPS + 1).await?;
        }
        let device_index = (1..).find(|d| !used.contains(d)).unwrap_or(1);
        let new = NewEni {
            subnet_id: place.subnet_id,
            security_groups: place.security_groups,
            ip_count,
            prefix_count,
            description: format!("aws-K8S-{}", self.node.instance_id),
            tags: self.tags(),
        };
        let eni = self.ec2.create_eni(&new).await?;
        let attachment = match self.ec2.attach_eni(&eni.id, &self.node.instance_id, device_index).await {
            Ok(a) => a,
            Err(e) => {
                // Do not leak it: an unattached ENI still holds an address per IP in the subnet.
                self.delete_orphan(eni.id.clone()).await;
                return Err(e.into());
            }
        };
        used.insert(device_index);
        self.ec2.set_delete_on_termination(&eni.id, &attachment).await?;
        let what = if prefix_count > 0 {
            format!("{} prefixes", eni.prefixes.len())
        } else {
            format!("{} IPs", eni.secondary_ips.len())
        };
        self.pool.emit("eni-attached", format!("{} at device {device_index} with {what} in {}", eni.id, eni.subnet_id));
        let id = eni.id.clone();
        self.sync.attached(eni, device_index, attachment, Instant::now());
        self.settings.telemetry.eni("attached");
        Ok(id)
    }

    /// EC2 had no free /28 for `eni_id`'s subnet: the ENI grows by single IPs from now on, which status,
    /// metrics and an Event say (aws-vpc-cni fails the pod instead).
    fn fall_back(&mut self, eni_id: &str, e: &Ec2Error) {
        if self.prefix_fallback.insert(eni_id.to_string()) {
            let note = format!(
                "{eni_id}: EC2 has no free /28 prefix in the subnet ({}): this ENI now takes single secondary IPs",
                e.message
            );
            self.pool.emit("prefix-fallback", note.clone());
            self.kube.events.warning("PrefixFallback", "AssignPrefixes", note);
            self.settings.telemetry.prefix_fallback();
        }
    }

    /// Deletes an ENI this ipamd created but could not attach; remembered and retried every round until done.
    async fn delete_orphan(&mut self, eni_id: String) {
        match self.ec2.delete_eni(&eni_id).await {
            Ok(()) => self.pool.emit("eni-deleted", format!("{eni_id} (created, attach failed)")),
            Err(e) => {
                tracing::warn!("deleting unattached {eni_id} after a failed attach: {e}; retrying next round");
                self.orphans.insert(eni_id);
            }
        }
    }

    /// Fixes what an earlier round left half-done: orphaned ENIs still to delete, and ENIs of ours attached
    /// without DeleteOnTermination (they would outlive the instance). A failure fails the round, so the loop's
    /// backoff spaces the retries, and drops the EC2 view, so the next try sees EC2's state.
    pub(super) async fn repair(&mut self, managed: &[Ec2Eni]) -> Result<(), ReconcileError> {
        for eni_id in std::mem::take(&mut self.orphans) {
            match self.ec2.delete_eni(&eni_id).await {
                Ok(()) => self.pool.emit("eni-deleted", format!("{eni_id} (created, attach failed)")),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => {
                    self.orphans.insert(eni_id);
                    return Err(e.into());
                }
            }
        }
        for e in managed.iter().filter(|e| e.id != self.node.primary_eni_id && e.delete_on_termination == Some(false)) {
            let Some(att) = &e.attachment_id else { continue };
            if let Err(err) = self.ec2.set_delete_on_termination(&e.id, att).await {
                self.sync.invalidate();
                return Err(err.into());
            }
            self.sync.delete_on_termination_done(&e.id);
            self.pool.emit("eni-repaired", format!("{}: DeleteOnTermination set", e.id));
        }
        Ok(())
    }

    /// EC2 detaches asynchronously: deletion fails with InUse until the detach has finished.
    async fn delete_with_retry(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.ec2.delete_eni(eni_id).await {
                Err(e) if e.kind == ErrorKind::InUse && backoff.attempts() < 8 => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => return other,
            }
        }
    }
}

//! The leaked-ENI sweep: ENIs an ipamd created but that never got attached (a crash between Create and
//! Attach, a failed delete) still hold subnet addresses. Deleted only when all of these hold:
//! - status `available` (attached ENIs are never touched here);
//! - created by a vpc-cni ipamd: it carries the instance tag, and in scope: this instance's tag, or with
//!   CLUSTER_NAME set, the cluster tag with that name (so a node can clean up after a node that is gone);
//! - not opted out with `node.k8s.amazonaws.com/no_manage=true`;
//! - created for this instance (only this ipamd, holding the state-dir lock, creates those, and the sweep runs
//!   between its own actions, so one that is `available` is a leftover of a crash between Create and Attach),
//!   or else older than [`MIN_AGE`] by its createdAt tag (or, without the tag, seen `available` that long
//!   ago), so an ENI another node's ipamd is about to attach is never taken away.
//!
//! At most [`MAX_DELETES`] per sweep, through the same EC2 rate limit as everything else. Runs at start and then
//! with every full EC2 sync.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ReconcileError, Reconciler, TAG_CLUSTER, TAG_CREATED_AT, TAG_INSTANCE_ID, TAG_NO_MANAGE};
use crate::cloud::ec2::{Ec2Api, Ec2Eni};
use crate::cloud::imds::Metadata;
use datapath::HostNet;

pub const MIN_AGE: Duration = Duration::from_secs(300);
pub const MAX_DELETES: usize = 10;

/// Which available ENIs may go, given when each was first seen available (unix seconds). Pure.
pub fn leaked<'a>(
    candidates: &'a [Ec2Eni],
    instance_id: &str,
    cluster_name: &str,
    first_seen: &BTreeMap<String, i64>,
    now_unix: i64,
) -> Vec<&'a Ec2Eni> {
    let min_age = MIN_AGE.as_secs() as i64;
    candidates
        .iter()
        .filter(|e| e.status == "available" && e.attachment_id.is_none())
        .filter(|e| e.tags.contains_key(TAG_INSTANCE_ID))
        .filter(|e| {
            if cluster_name.is_empty() {
                e.tags.get(TAG_INSTANCE_ID).is_some_and(|v| v == instance_id)
            } else {
                e.tags.get(TAG_CLUSTER).is_some_and(|v| v == cluster_name)
            }
        })
        .filter(|e| e.tags.get(TAG_NO_MANAGE).is_none_or(|v| !v.eq_ignore_ascii_case("true")))
        .filter(|e| {
            let own = e.tags.get(TAG_INSTANCE_ID).is_some_and(|v| v == instance_id);
            let since =
                e.tags.get(TAG_CREATED_AT).and_then(|t| t.parse::<i64>().ok()).or(first_seen.get(&e.id).copied());
            own || since.is_some_and(|t| now_unix - t >= min_age)
        })
        .take(MAX_DELETES)
        .collect()
}

impl<E: Ec2Api, M: Metadata, N: HostNet> Reconciler<E, M, N> {
    pub(super) async fn sweep_leaked_enis(&mut self) -> Result<(), ReconcileError> {
        let (key, value) = if self.settings.cluster_name.is_empty() {
            (TAG_INSTANCE_ID, self.node.instance_id.as_str())
        } else {
            (TAG_CLUSTER, self.settings.cluster_name.as_str())
        };
        let candidates = self.ec2.unattached_tagged_enis(key, value).await?;
        let now = crate::pool::now_ms() / 1000;
        self.available_since.retain(|id, _| candidates.iter().any(|e| &e.id == id));
        for e in &candidates {
            self.available_since.entry(e.id.clone()).or_insert(now);
        }
        let doomed: Vec<String> =
            leaked(&candidates, &self.node.instance_id, &self.settings.cluster_name, &self.available_since, now)
                .into_iter()
                .map(|e| e.id.clone())
                .collect();
        for id in doomed {
            match self.ec2.delete_eni(&id).await {
                Ok(()) => {
                    self.available_since.remove(&id);
                    self.pool.emit("eni-deleted", format!("{id} leaked (created by vpc-cni, never attached)"));
                }
                Err(e) => tracing::warn!("leaked {id}: {e}"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, tags: &[(&str, &str)]) -> Ec2Eni {
        Ec2Eni {
            prefixes: Vec::new(),
            id: id.into(),
            subnet_id: "subnet-1".into(),
            primary_ip: Some("10.0.1.9".parse().unwrap()),
            secondary_ips: Vec::new(),
            device_index: None,
            attachment_id: None,
            delete_on_termination: None,
            status: "available".into(),
            security_groups: Vec::new(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn ids(v: Vec<&Ec2Eni>) -> Vec<&str> {
        v.into_iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn only_unattached_enis_of_ours_in_scope_and_others_only_when_old() {
        let old = (NOW - 600).to_string();
        let young = (NOW - 60).to_string();
        let enis = [
            eni("eni-mine", &[(TAG_INSTANCE_ID, "i-1"), (TAG_CREATED_AT, &young)]),
            eni("eni-other-node", &[(TAG_INSTANCE_ID, "i-2"), (TAG_CREATED_AT, &old)]),
            eni("eni-opted-out", &[(TAG_INSTANCE_ID, "i-1"), (TAG_CREATED_AT, &old), (TAG_NO_MANAGE, "True")]),
            eni("eni-user", &[(TAG_CREATED_AT, &old)]),
        ];
        // This instance's own leftovers go at once, whatever their age; nobody else's without CLUSTER_NAME.
        assert_eq!(ids(leaked(&enis, "i-1", "", &BTreeMap::new(), NOW)), ["eni-mine"]);
        let mut attached = enis[0].clone();
        attached.attachment_id = Some("attach-1".into());
        assert!(leaked(&[attached], "i-1", "", &BTreeMap::new(), NOW).is_empty());
    }

    #[test]
    fn cluster_name_widens_the_scope_to_the_cluster_and_only_it() {
        let old = (NOW - 600).to_string();
        let young = (NOW - 60).to_string();
        let enis = [
            eni("eni-gone-node", &[(TAG_INSTANCE_ID, "i-2"), (TAG_CLUSTER, "prod"), (TAG_CREATED_AT, &old)]),
            eni("eni-being-attached", &[(TAG_INSTANCE_ID, "i-4"), (TAG_CLUSTER, "prod"), (TAG_CREATED_AT, &young)]),
            eni("eni-untimed", &[(TAG_INSTANCE_ID, "i-5"), (TAG_CLUSTER, "prod")]),
            eni("eni-other-cluster", &[(TAG_INSTANCE_ID, "i-3"), (TAG_CLUSTER, "dev"), (TAG_CREATED_AT, &old)]),
            eni("eni-no-cluster", &[(TAG_INSTANCE_ID, "i-1"), (TAG_CREATED_AT, &old)]),
        ];
        // Another node's ENI only when old enough: it may be between that ipamd's Create and Attach.
        assert_eq!(ids(leaked(&enis, "i-1", "prod", &BTreeMap::new(), NOW)), ["eni-gone-node"]);
        // Without a createdAt tag: once it has been seen available for the minimum age.
        let seen = BTreeMap::from([("eni-untimed".to_string(), NOW - 301)]);
        assert_eq!(ids(leaked(&enis, "i-1", "prod", &seen, NOW)), ["eni-gone-node", "eni-untimed"]);
    }

    #[test]
    fn a_sweep_deletes_at_most_its_quota() {
        let old = (NOW - 600).to_string();
        let enis: Vec<Ec2Eni> =
            (0..25).map(|i| eni(&format!("eni-{i:02}"), &[(TAG_INSTANCE_ID, "i-1"), (TAG_CREATED_AT, &old)])).collect();
        assert_eq!(leaked(&enis, "i-1", "", &BTreeMap::new(), NOW).len(), MAX_DELETES);
    }
}

//! Where new ENIs go: the node's own subnet and security groups, or under custom networking
//! (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG) those of the node's ENIConfig, checked before use (it exists, is
//! well-formed, its subnet is in the node's zone). Each reconcile round reports the ENIConfig in use, any
//! problem (status + a Warning Event), and which attached ENIs came from an earlier ENIConfig: they keep
//! serving until the node is recycled, which aws-vpc-cni users are regularly surprised by (an ENIConfig change there
//! silently applies only to ENIs created after it).
//! Without custom networking, subnet discovery ([`super::subnets`]) may put new ENIs in a tagged subnet of the
//! node's zone instead of the node's own.

use super::{ReconcileError, Reconciler};
use crate::cloud::ec2::{Ec2Api, Ec2Eni};
use crate::cloud::imds::Metadata;
use crate::k8s::eniconfig::{self, EniConfigSpec, Selection};
use crate::k8s::{ApiState, KubeSettings};
use datapath::HostNet;

/// Subnet and security groups for the next ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    /// Subnet discovery picks the subnet when the ENI is created (`subnet_id` is then the node's own).
    pub discover: bool,
}

/// Why no ENI can be placed; `reason` is the Event reason when an operator must act.
struct Problem {
    reason: Option<&'static str>,
    message: String,
}

impl Problem {
    fn waiting(message: String) -> Self {
        Self { reason: None, message }
    }
    fn invalid(message: String) -> Self {
        Self { reason: Some("InvalidENIConfig"), message }
    }
}

impl<E: Ec2Api, M: Metadata, N: HostNet> Reconciler<E, M, N> {
    /// This round's placement; also updates status and records Events.
    pub(super) async fn placement(&mut self, attached: &[Ec2Eni]) -> Result<Placement, String> {
        let Some(ks) = self.kube.settings.clone().filter(|s| s.custom_networking) else {
            return Ok(Placement {
                subnet_id: self.node.subnet_id.clone(),
                security_groups: self.node.security_groups.clone(),
                discover: self.settings.subnet_discovery && !self.node.vpc_id.is_empty(),
            });
        };
        match self.eni_config(&ks).await {
            Ok((selection, spec)) => {
                let sgs = if spec.security_groups.is_empty() {
                    self.node.security_groups.clone()
                } else {
                    spec.security_groups.clone()
                };
                // An ENI from this ENIConfig is in its subnet and carries its groups (EC2 may list more: LocalStack
                // adds the instance's to every attached ENI).
                let others: Vec<String> = attached
                    .iter()
                    .filter(|e| e.id != self.node.primary_eni_id && self.managed(e))
                    .filter(|e| e.subnet_id != spec.subnet || !sgs.iter().all(|g| e.security_groups.contains(g)))
                    .map(|e| format!("{} {} ({})", e.id, e.subnet_id, e.security_groups.join(",")))
                    .collect();
                let now = (selection.name.clone(), spec.clone());
                if self.last_eni_config.as_ref().is_some_and(|before| before != &now) {
                    let note = format!(
                        "new ENIs now come from ENIConfig '{}' ({}, {}); ENIs from the earlier one keep serving until \
                         the node is recycled: {}",
                        selection.name,
                        spec.subnet,
                        selection.source,
                        if others.is_empty() { "none".to_string() } else { others.join("; ") }
                    );
                    self.pool.emit("eniconfig-changed", note.clone());
                    self.kube.events.normal("ENIConfigChanged", "CreateENI", note);
                }
                self.last_eni_config = Some(now);
                self.kube.update_status(|s| {
                    s.eni_config = Some((selection, spec.clone()));
                    s.eni_config_problem.clear();
                    s.enis_from_other_config = others;
                });
                Ok(Placement { subnet_id: spec.subnet, security_groups: sgs, discover: false })
            }
            Err(p) => {
                if let Some(reason) = p.reason {
                    self.kube.events.warning(reason, "CreateENI", p.message.clone());
                }
                self.kube.update_status(|s| s.eni_config_problem = p.message.clone());
                Err(p.message)
            }
        }
    }

    /// Subnet discovery for an ENI that needs `need` addresses: asks EC2 for the zone's subnets (only when an
    /// ENI is about to be created) and applies [`super::subnets::choose`].
    pub(super) async fn discover_subnet(&mut self, need: u32) -> Result<String, ReconcileError> {
        let subnets = self.ec2.subnets_in_zone(&self.node.vpc_id, &self.node.availability_zone).await?;
        match super::subnets::choose(&subnets, &self.node.subnet_id, need) {
            Ok(c) => {
                if !c.others.is_empty() || c.subnet_id != self.node.subnet_id {
                    self.pool.emit(
                        "subnet-chosen",
                        format!(
                            "new ENI in {} ({} free); other candidates: {}",
                            c.subnet_id,
                            c.free,
                            if c.others.is_empty() { "none".to_string() } else { c.others.join(", ") }
                        ),
                    );
                }
                Ok(c.subnet_id)
            }
            Err(message) => {
                self.kube.events.warning("NoSubnetForENI", "CreateENI", message.clone());
                Err(ReconcileError::NoSubnet(message))
            }
        }
    }

    async fn eni_config(&self, ks: &KubeSettings) -> Result<(Selection, EniConfigSpec), Problem> {
        let (selection, resolved) = {
            let view = self.kube.view.borrow();
            if let ApiState::Connecting(e) = &view.api {
                return Err(Problem::waiting(format!("waiting for the Kubernetes API server: {e}")));
            }
            let Some(node) = view.node.items.get(&ks.node_name) else {
                let why = if view.node.error.is_empty() { "not listed yet".into() } else { view.node.error.clone() };
                return Err(Problem::waiting(format!("Node {} is not known: {why}", ks.node_name)));
            };
            let selection = eniconfig::select(&node.labels, &node.annotations, &ks.label_def, &ks.annotation_def);
            if !view.eni_configs.synced {
                let e = &view.eni_configs.error;
                return Err(Problem::waiting(format!(
                    "ENIConfigs are not listed yet{}",
                    if e.is_empty() { String::new() } else { format!(": {e}") }
                )));
            }
            let resolved = eniconfig::resolve(&selection, &view.eni_configs.items);
            (selection, resolved)
        };
        let spec = resolved.map_err(|m| Problem {
            reason: Some(if m.contains("does not exist") { "MissingENIConfig" } else { "InvalidENIConfig" }),
            message: m,
        })?;
        let name = &selection.name;
        let subnet = self
            .subnet(&spec.subnet)
            .await
            .map_err(|e| Problem::invalid(format!("ENIConfig '{name}' subnet {}: {e}", spec.subnet)))?;
        if subnet.availability_zone != self.node.availability_zone {
            return Err(Problem::invalid(format!(
                "ENIConfig '{name}' (from {}) names subnet {} in {}, but this node is in {}",
                selection.source, spec.subnet, subnet.availability_zone, self.node.availability_zone
            )));
        }
        Ok((selection, spec))
    }
}

//! `vpccni.v1.Introspection`: read-only views of the pool for `vpcctl`, built from one actor snapshot each.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};
use vpc_cni_proto::v1 as pb;

use crate::cloud::imds::NodeInfo;
use crate::k8s::Kube;
use crate::pool::{PoolHandle, now_ms};
use crate::state::datastore::IpState;

use super::ipam::{pb_key, status};

pub struct IntrospectionService {
    pub pool: PoolHandle,
    pub node: std::sync::Arc<NodeInfo>,
    /// (name, value, fate) as [`crate::config::Config::shown`] gives them.
    pub config: Vec<(String, String, String)>,
    pub kube: Kube,
    pub telemetry: crate::telemetry::Telemetry,
    /// ENABLE_NETWORK_POLICY's enforcer.
    pub policy: Option<crate::policy::Enforcer>,
}

#[tonic::async_trait]
impl pb::introspection_server::Introspection for IntrospectionService {
    async fn get_policy_status(
        &self,
        _r: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::GetPolicyStatusReply>, Status> {
        let Some(p) = &self.policy else { return Ok(Response::new(pb::GetPolicyStatusReply::default())) };
        let s = p.status.borrow().clone();
        Ok(Response::new(pb::GetPolicyStatusReply {
            enabled: true,
            synced: s.synced,
            generation: s.generation,
            applied_unix: s.applied_unix,
            policies: s.policies as u32,
            local_pods: s.local_pods as u32,
            chains: s.chains as u32,
            rules: s.rules as u32,
            problems: s.problems,
            error: s.error,
            last_change: s.last_change.to_string(),
            repairs: s.repairs,
        }))
    }

    async fn explain_policy(
        &self,
        r: Request<pb::ExplainPolicyRequest>,
    ) -> Result<Response<pb::ExplainPolicyReply>, Status> {
        let r = r.into_inner();
        let p = self.policy.as_ref().ok_or_else(|| Status::failed_precondition("ENABLE_NETWORK_POLICY is off"))?;
        let proto = match r.protocol.to_ascii_lowercase().as_str() {
            "tcp" => netpol::Proto::Tcp,
            "udp" => netpol::Proto::Udp,
            "sctp" => netpol::Proto::Sctp,
            other => return Err(Status::invalid_argument(format!("protocol '{other}': accepted tcp, udp or sctp"))),
        };
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("port {}: accepted 1-65535", r.port)))?;
        let d = p.explain(&r.from, &r.to, proto, port).map_err(Status::not_found)?;
        let side = |s: &netpol::Side| pb::PolicySide {
            isolated_by: s.isolated_by.clone(),
            allowed_by: s.allowed_by.iter().map(|(p, i)| format!("{p} rule {i}")).collect(),
            allows: s.allows(),
        };
        Ok(Response::new(pb::ExplainPolicyReply {
            allowed: d.allowed(),
            egress: Some(side(&d.egress)),
            ingress: Some(side(&d.ingress)),
        }))
    }

    async fn get_status(&self, _r: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusReply>, Status> {
        let s = self.pool.snapshot().await.map_err(status)?;
        let l = s.limits;
        let custom = self.kube.custom_networking();
        let (api, capacity_pods) = {
            let v = self.kube.view.borrow();
            let node = self.kube.settings.as_ref().and_then(|k| v.node.items.get(&k.node_name));
            (v.describe_api(custom), node.and_then(|n| n.capacity_pods))
        };
        let (max_pods, max_pods_source) = match capacity_pods {
            Some(n) => (n, "node capacity"),
            None => (s.max_pods.unwrap_or(0), "instance limits"),
        };
        let k = self.kube.status();
        let (selection, spec) = k.eni_config.clone().unzip();
        Ok(Response::new(pb::GetStatusReply {
            instance_id: self.node.instance_id.clone(),
            instance_type: self.node.instance_type.clone(),
            max_enis: l.map_or(0, |l| l.max_enis),
            ips_per_eni: l.map_or(0, |l| l.ips_per_eni),
            max_pods,
            max_pods_source: max_pods_source.into(),
            kube_api: api,
            custom_networking: custom,
            eni_config: selection.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            eni_config_source: selection.map(|s| s.source).unwrap_or_default(),
            eni_config_subnet: spec.as_ref().map(|s| s.subnet.clone()).unwrap_or_default(),
            eni_config_security_groups: spec.map(|s| s.security_groups).unwrap_or_default(),
            eni_config_problem: k.eni_config_problem,
            enis_from_other_eni_config: k.enis_from_other_config,
            unknown_pod_ips: k.unknown_pod_ips,
            stale_allocations_released: k.stale_released,
            pod_gc: k.pod_gc,
            enis: s.stats.enis as u32,
            total_ips: s.stats.total as u32,
            assigned_ips: s.stats.assigned as u32,
            cooling_ips: s.stats.cooling as u32,
            free_ips: s.stats.free as u32,
            serving: s.serving,
            last_reconcile_unix: s.last_reconcile_unix,
            reconcile_rounds: s.reconcile_rounds,
            last_error: s.last_error,
            degraded: s.degraded.unwrap_or_default(),
            pending_ips: s.stats.pending as u32,
            prefix_delegation: s.prefix_delegation,
            prefixes: s.ds.prefix_count() as u32,
            prefix_fallback_enis: s.ds.fallback_enis().map(String::from).collect(),
            snat: self.telemetry.snat(),
            version: format!("{} ({})", crate::telemetry::VERSION, crate::telemetry::RUSTC),
        }))
    }

    async fn list_enis(&self, _r: Request<pb::ListEnisRequest>) -> Result<Response<pb::ListEnisReply>, Status> {
        let s = self.pool.snapshot().await.map_err(status)?;
        let by_ip: std::collections::BTreeMap<_, _> = s.ds.allocations.iter().map(|(k, a)| (a.ip, (k, a))).collect();
        let mut enis: Vec<pb::Eni> =
            s.ds.enis
                .values()
                .map(|e| pb::Eni {
                    eni_id: e.id.clone(),
                    mac: e.mac.clone(),
                    device_number: e.device_number,
                    primary: e.primary,
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: e.subnet_cidr.to_string(),
                    primary_ip: e.primary_ip.to_string(),
                    prefixes: e.prefixes.iter().map(ToString::to_string).collect(),
                    prefix_fallback: e.fallback,
                    ips: e
                        .ips
                        .iter()
                        .map(|(ip, st)| {
                            let mut out = pb::IpAddress { address: ip.to_string(), ..Default::default() };
                            match *st {
                                IpState::Assigned => {
                                    out.state = "assigned".into();
                                    if let Some((k, a)) = by_ip.get(ip) {
                                        out.key = Some(pb_key(k));
                                        out.k8s_pod_namespace = a.pod_namespace.clone();
                                        out.k8s_pod_name = a.pod_name.clone();
                                    }
                                }
                                IpState::Cooling { until } if until > s.taken.mono => {
                                    out.state = "cooling".into();
                                    // Shown on the wall clock as it reads now; the deadline itself is monotonic.
                                    out.cooldown_until_unix = s.taken.wall_of(until) / 1000;
                                }
                                IpState::Releasing => out.state = "releasing".into(),
                                IpState::Pending => out.state = "pending".into(),
                                _ => out.state = "free".into(),
                            }
                            out
                        })
                        .collect(),
                })
                .collect();
        enis.sort_by_key(|e| e.device_number);
        Ok(Response::new(pb::ListEnisReply { enis }))
    }

    async fn list_allocations(
        &self,
        _r: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsReply>, Status> {
        let s = self.pool.snapshot().await.map_err(status)?;
        let allocations =
            s.ds.allocations
                .iter()
                .map(|(k, a)| pb::Allocation {
                    key: Some(pb_key(k)),
                    ipv4_addr: a.ip.to_string(),
                    eni_id: a.eni_id.clone(),
                    k8s_pod_namespace: a.pod_namespace.clone(),
                    k8s_pod_name: a.pod_name.clone(),
                    allocated_unix: a.allocated_unix,
                    policy_generation: self.policy.as_ref().and_then(|p| p.started_in(&a.pod_namespace, &a.pod_name)),
                })
                .collect();
        Ok(Response::new(pb::ListAllocationsReply { allocations }))
    }

    async fn get_config(&self, _r: Request<pb::GetConfigRequest>) -> Result<Response<pb::GetConfigReply>, Status> {
        let entries = self
            .config
            .iter()
            .map(|(n, v, f)| pb::ConfigEntry { name: n.clone(), value: v.clone(), fate: f.clone() })
            .collect();
        Ok(Response::new(pb::GetConfigReply { entries }))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        _r: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = BroadcastStream::new(self.pool.events.subscribe()).map(|ev| match ev {
            Ok(e) => Ok(pb::Event { unix_millis: e.unix_millis, kind: e.kind.to_string(), message: e.message }),
            Err(lagged) => Ok(pb::Event { unix_millis: now_ms(), kind: "lagged".into(), message: lagged.to_string() }),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

//! `vpccni.v1.Ipam`: a thin adapter from the plugin's requests to pool commands, and from pool errors to gRPC
//! statuses the plugin maps onto CNI error codes.

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use vpc_cni_proto::v1 as pb;

use crate::pool::{PoolError, PoolHandle};
use crate::state::datastore::{AllocKey, MAX_POD_NAME, MAX_POD_UID, too_long};

/// Per-node facts every AddNetwork reply carries.
#[derive(Debug, Clone)]
pub struct NetFacts {
    /// The VPC's CIDRs, kept current by the reconcile loop (a CIDR associated later reaches new pods).
    pub vpc_cidrs: tokio::sync::watch::Receiver<Vec<String>>,
    pub exclude_snat_cidrs: Vec<String>,
    pub pod_mtu: u32,
    pub external_snat: bool,
}

pub struct IpamService {
    pub pool: PoolHandle,
    /// Where the plugin leaves DELs it could not hand over (carried out before any ADD).
    pub deferred_dir: std::path::PathBuf,
    pub telemetry: crate::telemetry::Telemetry,
    pub facts: NetFacts,
    /// Released IPs and when (no later than the release), for the conntrack janitor (only when ipamd manages
    /// the host network).
    pub released: Option<tokio::sync::mpsc::UnboundedSender<(std::net::Ipv4Addr, Instant)>>,
    /// The node's netlink (only when ipamd manages the host network): GcNetworks removes what the pods it
    /// releases left on the host, as no DEL will.
    pub hostnet: Option<std::sync::Arc<datapath::netlink::Netlink>>,
    /// ANNOTATE_POD_IP: the Kubernetes side that writes pods' `vpc.amazonaws.com/pod-ips`.
    pub annotate: Option<crate::k8s::Kube>,
    /// ENABLE_NETWORK_POLICY: an ADD answers once its pod's policies are in force.
    pub policy: Option<crate::policy::Enforcer>,
}

impl IpamService {
    /// `asked`: a moment taken before the pool was asked, so never after the release (the janitor's second
    /// flush must come before the pool's cooldown ends).
    fn forget(&self, ip: std::net::Ipv4Addr, asked: Instant) {
        if let Some(tx) = &self.released {
            let _ = tx.send((ip, asked));
        }
    }
}

pub(crate) fn key(k: Option<pb::AllocationKey>) -> Result<AllocKey, Status> {
    let k = k.ok_or_else(|| Status::invalid_argument("key is required"))?;
    if k.container_id.is_empty() || k.if_name.is_empty() || k.network_name.is_empty() {
        return Err(Status::invalid_argument("key needs network_name, container_id and if_name"));
    }
    let key = AllocKey { network_name: k.network_name, container_id: k.container_id, if_name: k.if_name };
    // What the checkpoint keeps per pod stays small whatever a caller sends.
    match key.too_long() {
        Some(why) => Err(Status::invalid_argument(why)),
        None => Ok(key),
    }
}

pub(crate) fn pb_key(k: &AllocKey) -> pb::AllocationKey {
    pb::AllocationKey {
        network_name: k.network_name.clone(),
        container_id: k.container_id.clone(),
        if_name: k.if_name.clone(),
    }
}

/// The status a pool error answers with. Whatever passes is "try again later" for the plugin (CNI code 11):
/// a checkpoint that could not be written (a full disk) is undone in memory and may well succeed on the next
/// try, and a stopped pool is an ipamd on its way out, soon replaced.
pub(crate) fn status(e: PoolError) -> Status {
    match e {
        PoolError::NotReady | PoolError::Checkpoint(_) | PoolError::Stopped => Status::unavailable(e.to_string()),
        PoolError::Exhausted(_) | PoolError::AtLimit(..) => Status::resource_exhausted(e.to_string()),
    }
}

/// The result label of a pod request in the metrics.
fn outcome<T>(r: &Result<T, Status>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(s) if s.code() == tonic::Code::ResourceExhausted => "no_ip",
        Err(_) => "error",
    }
}

impl IpamService {
    async fn add(&self, req: Request<pb::AddNetworkRequest>) -> Result<Response<pb::AddNetworkReply>, Status> {
        let r = req.into_inner();
        let key = key(r.key)?;
        // A DEL deferred while ipamd was unreachable goes before any later ADD (the runtime may retry an ADD
        // with the same container id after that DEL).
        let drained = crate::pool::deferred::drain(&self.deferred_dir, &self.pool).await;
        for (_, ip, asked) in drained.released {
            self.forget(ip, asked);
        }
        if drained.left.contains(&key) {
            // Answering with what the key holds would give the pod the IP that DEL is about to release.
            return Err(Status::unavailable(
                "a DEL of this sandbox, deferred while ipamd was unreachable, cannot be carried out yet",
            ));
        }
        let pod = [
            ("k8s_pod_namespace", r.k8s_pod_namespace.as_str(), MAX_POD_NAME),
            ("k8s_pod_name", &r.k8s_pod_name, MAX_POD_NAME),
            ("k8s_pod_uid", &r.k8s_pod_uid, MAX_POD_UID),
        ];
        if let Some(why) = too_long(&pod) {
            return Err(Status::invalid_argument(why));
        }
        let pod = (r.k8s_pod_namespace.clone(), r.k8s_pod_name.clone());
        let out = self.pool.add(key, r.k8s_pod_namespace, r.k8s_pod_name, r.k8s_pod_uid).await.map_err(status)?;
        if let Some(kube) = self.annotate.as_ref().filter(|_| !pod.1.is_empty()) {
            // The allocation stays: the runtime's retry of this sandbox gets the same IP and patches again.
            kube.annotate_pod_ip(&pod.0, &pod.1, out.ip).await.map_err(|why| {
                Status::unavailable(format!("{why} (ANNOTATE_POD_IP); {} stays held for this sandbox", out.ip))
            })?;
        }
        if let Some(policy) = self.policy.as_ref().filter(|_| !pod.1.is_empty()) {
            // A pod never starts unprotected: no table, no network (the runtime retries).
            policy.pod_started(&pod.0, &pod.1, out.ip).await.map_err(|why| {
                Status::unavailable(format!("{why} (ENABLE_NETWORK_POLICY); {} stays held for this sandbox", out.ip))
            })?;
        }
        Ok(Response::new(pb::AddNetworkReply {
            ipv4_addr: out.ip.to_string(),
            eni_id: out.eni_id,
            device_number: out.device_number,
            route_table: datapath::eni_route_table(out.device_number),
            vpc_cidrs: self.facts.vpc_cidrs.borrow().clone(),
            pod_mtu: self.facts.pod_mtu,
            external_snat: self.facts.external_snat,
            exclude_snat_cidrs: self.facts.exclude_snat_cidrs.clone(),
        }))
    }

    async fn del(&self, req: Request<pb::DelNetworkRequest>) -> Result<Response<pb::DelNetworkReply>, Status> {
        let key = key(req.into_inner().key)?;
        let asked = Instant::now();
        let reply = match self.pool.del(key).await.map_err(status)? {
            Some((a, dev)) => {
                self.forget(a.ip, asked);
                if let Some(kube) = self.annotate.as_ref().filter(|_| !a.pod_name.is_empty()) {
                    kube.clear_pod_ip(a.pod_namespace.clone(), a.pod_name.clone(), a.ip);
                }
                pb::DelNetworkReply {
                    released: true,
                    ipv4_addr: a.ip.to_string(),
                    device_number: dev,
                    route_table: datapath::eni_route_table(dev),
                }
            }
            None => pb::DelNetworkReply::default(),
        };
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl pb::ipam_server::Ipam for IpamService {
    async fn add_network(&self, req: Request<pb::AddNetworkRequest>) -> Result<Response<pb::AddNetworkReply>, Status> {
        let started = std::time::Instant::now();
        // Debug builds only: the shutdown tests hold requests in flight here.
        if let Some(d) = crate::tasks::fault::delay("add") {
            tokio::time::sleep(d).await;
        }
        let result = self.add(req).await;
        self.telemetry.pod_request("add", outcome(&result), started.elapsed());
        result
    }

    async fn del_network(&self, req: Request<pb::DelNetworkRequest>) -> Result<Response<pb::DelNetworkReply>, Status> {
        let started = std::time::Instant::now();
        // Debug builds only: the plugin tests make ipamd answer a DEL with an error.
        if let Some(message) = crate::tasks::fault::error("del") {
            return Err(Status::internal(message));
        }
        let result = self.del(req).await;
        self.telemetry.pod_request("del", outcome(&result), started.elapsed());
        result
    }

    async fn check_network(
        &self,
        req: Request<pb::CheckNetworkRequest>,
    ) -> Result<Response<pb::CheckNetworkReply>, Status> {
        let key = key(req.into_inner().key)?;
        let reply = match self.pool.check(key).await.map_err(status)? {
            Some((a, dev)) => pb::CheckNetworkReply {
                found: true,
                ipv4_addr: a.ip.to_string(),
                route_table: datapath::eni_route_table(dev),
                vpc_cidrs: self.facts.vpc_cidrs.borrow().clone(),
                exclude_snat_cidrs: self.facts.exclude_snat_cidrs.clone(),
                external_snat: self.facts.external_snat,
                pod_mtu: self.facts.pod_mtu,
            },
            None => pb::CheckNetworkReply::default(),
        };
        Ok(Response::new(reply))
    }

    async fn gc_networks(&self, req: Request<pb::GcNetworksRequest>) -> Result<Response<pb::GcNetworksReply>, Status> {
        let r = req.into_inner();
        if r.network_name.is_empty() {
            return Err(Status::invalid_argument("network_name is required"));
        }
        if r.valid.is_empty() {
            // An empty list would release every pod's IP on the node: far more likely a broken caller than a
            // node without a single pod, and a wrong guess cuts every pod off.
            return Err(Status::invalid_argument(format!(
                "refusing GC of network {:?} with an empty list of valid attachments: that would release every \
                 allocation; pods without a network are released one by one by DEL or by ipamd's pod GC",
                r.network_name
            )));
        }
        let valid = r.valid.into_iter().map(|k| key(Some(k))).collect::<Result<Vec<_>, _>>()?;
        let asked = Instant::now();
        let released = self.pool.gc(r.network_name, valid).await.map_err(status)?;
        for (_, ip) in &released {
            self.forget(*ip, asked);
        }
        if let Some(net) = self.hostnet.as_deref().filter(|_| !released.is_empty()) {
            let ips: Vec<_> = released.iter().map(|(_, ip)| *ip).collect();
            // The release stands either way (the pool has it); leftovers are only logged.
            if let Err(errors) = datapath::forget_pod_ips(net, &ips).await {
                tracing::warn!("GC: removing the released pods' host rules and routes: {errors:?}");
            }
        }
        Ok(Response::new(pb::GcNetworksReply { released: released.iter().map(|(k, _)| pb_key(k)).collect() }))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.pool.snapshot().await.map_err(status)?;
        let can_grow = s.limits.is_some_and(|l| {
            s.stats.enis < l.max_enis as usize || s.ds.enis.values().any(|e| (e.ips.len() as u32) < l.ips_per_eni)
        });
        Ok(Response::new(pb::StatusReply { serving: s.serving, free_ips: s.stats.free as u32, can_grow }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk or an ipamd on its way out is "try again later" for the runtime (the plugin maps
    /// UNAVAILABLE to CNI code 11), never a hard failure of the pod.
    #[test]
    fn passing_trouble_is_unavailable() {
        let write = PoolError::Checkpoint("writing ipam.json: No space left on device".into());
        let s = status(write);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("No space left"), "{}", s.message());
        assert_eq!(status(PoolError::Stopped).code(), tonic::Code::Unavailable);
        assert_eq!(status(PoolError::NotReady).code(), tonic::Code::Unavailable);
    }

    /// A DEL of this very sandbox was deferred while ipamd was unreachable and cannot be carried out yet (the
    /// disk is full): the ADD is "try again later", not answered with the IP that DEL is about to release; once it
    /// can be carried out, the ADD gets a fresh allocation.
    #[tokio::test]
    async fn an_add_waits_for_its_own_deferred_del() {
        use crate::state::checkpoint::{Checkpoint, Store};
        use crate::state::datastore::ObservedEni;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let eni = ObservedEni::test_eni(&["10.0.1.10", "10.0.1.11"]);
        let settings = crate::pool::PoolSettings {
            primary_eni_id: "eni-a".into(),
            targets: Default::default(),
            cooldown: std::time::Duration::from_secs(30),
            reconcile_interval: std::time::Duration::from_secs(5),
            primary_reserved: false,
            surge: false,
            node: None,
        };
        // Served from the checkpoint's ENI: no observation needed.
        let cp = Checkpoint { enis: vec![eni], ..Checkpoint::default() };
        let pool = crate::pool::spawn(settings, Store::new(&state), cp, &crate::tasks::Supervisor::new().tasks());
        let (_, vpc_cidrs) = tokio::sync::watch::channel(Vec::new());
        let service = IpamService {
            pool: pool.unwrap(),
            deferred_dir: dir.path().join(crate::pool::deferred::DIR),
            telemetry: crate::telemetry::Telemetry::default(),
            facts: NetFacts { vpc_cidrs, exclude_snat_cidrs: Vec::new(), pod_mtu: 9001, external_snat: false },
            released: None,
            hostnet: None,
            annotate: None,
            policy: None,
        };
        let k = pb::AllocationKey { network_name: "aws-cni".into(), container_id: "c1".into(), if_name: "eth0".into() };
        let add = || pb::AddNetworkRequest { key: Some(k.clone()), ..Default::default() };
        let first = service.add(Request::new(add())).await.unwrap().into_inner().ipv4_addr;
        let entry = crate::pool::deferred::Entry {
            network_name: k.network_name.clone(),
            container_id: k.container_id.clone(),
            if_name: k.if_name.clone(),
            unix_ms: 1,
        };
        crate::pool::deferred::record(&service.deferred_dir, &entry).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        let refused = service.add(Request::new(add())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        std::fs::create_dir(&state).unwrap();
        let again = service.add(Request::new(add())).await.unwrap().into_inner().ipv4_addr;
        assert_ne!(again, first, "the deferred DEL went first: {first} is cooling, the ADD got a new IP");
    }
}

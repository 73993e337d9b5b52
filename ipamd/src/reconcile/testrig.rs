//! The reconcile loop, the pool actor and the checkpoint on the recording EC2 fake ([`crate::cloud::ec2::fake`])
//! with its IMDS: a node without a network, for the reconcile tests beside this file.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cloud::ec2::fake::{FakeEc2, FakeEc2Imds, PRIMARY_ENI};
use crate::planner::Targets;
use crate::pool::{PoolSettings, spawn_unsupervised};
use crate::state::checkpoint::{Checkpoint, Store};
use crate::state::datastore::AllocKey;

pub struct Rig {
    pub ec2: Arc<FakeEc2>,
    pub pool: PoolHandle,
    pub r: Reconciler<FakeEc2, FakeEc2Imds, datapath::netlink::Netlink>,
    _dir: tempfile::TempDir,
}

pub async fn rig(targets: Targets) -> Rig {
    let ec2 = Arc::new(FakeEc2::new(InstanceLimits { max_enis: 3, ipv4_per_eni: 10, vcpus: 2 }));
    let imds = Arc::new(FakeEc2Imds(ec2.clone()));
    let node = Arc::new(NodeInfo::load(imds.as_ref()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let settings = PoolSettings {
        primary_eni_id: PRIMARY_ENI.into(),
        targets,
        cooldown: Duration::ZERO,
        reconcile_interval: Duration::from_secs(5),
        primary_reserved: false,
        surge: true,
        node: None,
    };
    let pool = spawn_unsupervised(settings, Store::new(dir.path()), Checkpoint::default());
    let (vpc_cidrs, _) = tokio::sync::watch::channel(Vec::new());
    let rs = ReconcileSettings {
        max_eni: None,
        cluster_name: String::new(),
        additional_tags: BTreeMap::new(),
        leaked_eni_cleanup: false,
        error_backoff: Duration::from_millis(10),
        ec2_resync: Duration::from_secs(1800),
        telemetry: crate::telemetry::Telemetry::default(),
        deferred_dir: dir.path().join("deferred-del"),
        veth_prefix: "eni".into(),
        recovered: false,
        vpc_cidrs: Arc::new(vpc_cidrs),
        eni_mtu: 9001,
        link_wait: Duration::ZERO,
        subnet_discovery: true,
        released: None,
        provisioning: true,
        manage_cordoned: false,
    };
    let r = Reconciler::new(ec2.clone(), imds, None, node, pool.clone(), rs, crate::k8s::Kube::disabled());
    Rig { ec2, pool, r, _dir: dir }
}

impl Rig {
    /// Rounds until one changes nothing in EC2.
    pub async fn settle(&mut self) {
        for _ in 0..6 {
            let before = self.ec2.calls().len();
            self.r.reconcile_once().await.unwrap();
            let acted = self.ec2.calls()[before..].iter().any(|c| !c.starts_with("Describe"));
            if !acted {
                return;
            }
        }
        panic!("still acting after 6 rounds: {:?}", self.ec2.calls());
    }

    pub async fn add(&self, c: &str) -> Result<std::net::Ipv4Addr, crate::pool::PoolError> {
        let key = AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() };
        self.pool.add(key, "ns".into(), c.into(), String::new()).await.map(|o| o.ip)
    }
}

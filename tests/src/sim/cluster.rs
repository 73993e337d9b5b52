//! `vpc-sim up --kube`: the sim's Kubernetes side. Starts (or reuses) the local API server, applies deploy/'s
//! ENIConfig CRD and RBAC, registers one Node per sim node (zone and instance-type labels, as a kubelet on EC2
//! sets them), with `--custom-networking` one ENIConfig per zone (named after the zone, its own pod subnet and
//! security group), and points each ipamd at the API server as the DaemonSet's ServiceAccount. `vpc-sim pod
//! add|del` keep Pod objects in step (created before ADD, Running + podIP after it, deleted after DEL), so
//! pod-aware clean-up sees a consistent cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::kubeapi::{self, KubeApiError, KubeEnv};

/// The label ipamd is told to read the ENIConfig name from under `--custom-networking`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What a sim made in the API server (kept in sim.json so pod commands and clean-up find it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimKube {
    pub admin: PathBuf,
    pub service_account: PathBuf,
    /// host:port of the API server on loopback (proxied into each node namespace at the same address).
    pub server_addr: String,
    pub nodes: Vec<String>,
    pub eni_configs: Vec<String>,
}

/// One zone's pod network under custom networking.
#[derive(Debug, Clone)]
pub struct ZonePods {
    pub zone: String,
    pub subnet_id: String,
    pub security_group: String,
}

impl SimKube {
    /// Starts the API server if needed and registers the sim's nodes and ENIConfigs.
    pub async fn setup(
        prefix: &str,
        node_zones: &[String],
        instance_type: &str,
        zone_pods: &[ZonePods],
    ) -> Result<Self, KubeApiError> {
        let env = KubeEnv::ensure_running()?;
        let admin = kubeapi::client(&env.admin).await?;
        kubeapi::install_deploy_basics(&admin).await?;
        let mut me = Self {
            admin: env.admin.clone(),
            service_account: env.service_account.clone(),
            server_addr: env.server.trim_start_matches("https://").to_string(),
            nodes: Vec::new(),
            eni_configs: Vec::new(),
        };
        for (i, zone) in node_zones.iter().enumerate() {
            let name = node_name(prefix, i);
            let labels = [
                (ZONE_LABEL.to_string(), zone.clone()),
                ("node.kubernetes.io/instance-type".to_string(), instance_type.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ];
            kubeapi::put_node(&admin, &name, &labels.into_iter().collect(), None).await?;
            me.nodes.push(name);
        }
        for z in zone_pods {
            kubeapi::put_eni_config(
                &admin,
                &z.zone,
                json!({"subnet": z.subnet_id, "securityGroups": [z.security_group]}),
            )
            .await?;
            me.eni_configs.push(z.zone.clone());
        }
        Ok(me)
    }

    /// ipamd's settings on node `i`.
    pub fn ipamd_env(&self, i: usize, custom_networking: bool, network_policy: bool) -> Vec<(&'static str, String)> {
        let mut env =
            vec![("MY_NODE_NAME", self.nodes[i].clone()), ("KUBECONFIG", self.service_account.display().to_string())];
        if network_policy {
            env.push(("ENABLE_NETWORK_POLICY", "true".into()));
        }
        if custom_networking {
            env.push(("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true".into()));
            env.push(("ENI_CONFIG_LABEL_DEF", ZONE_LABEL.into()));
        }
        env
    }

    /// Removes the Nodes and ENIConfigs it made (best effort).
    pub async fn teardown(&self) {
        let Ok(admin) = kubeapi::client(&self.admin).await else { return };
        for n in &self.nodes {
            kubeapi::delete_node(&admin, n).await;
        }
        for c in &self.eni_configs {
            kubeapi::delete_eni_config(&admin, c).await;
        }
    }

    /// Creates the Pod object bound to node `node` with `labels` and named ports; returns its UID.
    pub fn create_pod(
        &self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        named_ports: &[(String, u16, String)],
    ) -> Result<String, KubeApiError> {
        let node_name = self.nodes[node].clone();
        self.run(|admin| async move {
            kubeapi::ensure_namespace(&admin, namespace).await?;
            kubeapi::delete_pod(&admin, namespace, name).await?;
            kubeapi::create_pod_with(&admin, namespace, name, &node_name, labels, named_ports).await
        })
    }

    pub fn pod_running(&self, namespace: &str, name: &str, ip: &str) -> Result<(), KubeApiError> {
        self.run(|admin| async move { kubeapi::set_pod_running(&admin, namespace, name, ip).await })
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), KubeApiError> {
        self.run(|admin| async move { kubeapi::delete_pod(&admin, namespace, name).await })
    }

    /// Runs an API call from synchronous pod code, on a thread of its own (callers may be inside a runtime).
    fn run<T: Send, F: std::future::Future<Output = Result<T, KubeApiError>>>(
        &self,
        f: impl FnOnce(kube::Client) -> F + Send,
    ) -> Result<T, KubeApiError> {
        let admin = self.admin.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| KubeApiError::Other(e.to_string()))?;
                rt.block_on(async move { f(kubeapi::client(&admin).await?).await })
            })
            .join()
            .unwrap_or_else(|_| Err(KubeApiError::Other("API call thread panicked".into())))
        })
    }
}

/// The Node name of sim node `i`.
pub fn node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-node-{i}")
}

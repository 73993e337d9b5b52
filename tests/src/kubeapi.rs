//! The local Kubernetes API server for tests and the simulator: a real kube-apiserver + etcd started by
//! `scripts/kube-apiserver.sh` (RBAC on, client-certificate users), reached through the kubeconfigs it writes.
//! Applies deploy/'s ENIConfig CRD and RBAC as `kubectl apply -k deploy/` would, creates Node and Pod objects
//! as a kubelet would, and reads the audit log to see what ipamd's ServiceAccount did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::pinned_kind;
use kube::{Client, Config};
use serde_json::{Value, json};

/// Username of ipamd's ServiceAccount in the API server (vpc-cni.kubeconfig's client certificate).
pub const SA_USER: &str = "system:serviceaccount:kube-system:vpc-cni";
const FIELD_MANAGER: &str = "vpc-sim";

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("scripts/kube-apiserver.sh {0}: {1}")]
    Script(&'static str, String),
    #[error("kubeconfig {0}: {1}")]
    Config(PathBuf, String),
    #[error("{0}: {1}")]
    Api(String, kube::Error),
    #[error("{0}")]
    Other(String),
}

/// The repository root (tests and vpc-sim run from target/; the scripts live in the source tree).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Paths of a running API server, from the environment `scripts/with-localstack.sh` exports, else from
/// `scripts/kube-apiserver.sh env`.
#[derive(Debug, Clone)]
pub struct KubeEnv {
    pub admin: PathBuf,
    pub service_account: PathBuf,
    pub no_rbac: PathBuf,
    pub audit_log: PathBuf,
    pub server: String,
}

fn script(cmd: &'static str) -> Result<String, KubeApiError> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/kube-apiserver.sh"))
        .arg(cmd)
        .output()
        .map_err(|e| KubeApiError::Script(cmd, e.to_string()))?;
    if !out.status.success() {
        return Err(KubeApiError::Script(cmd, String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl KubeEnv {
    pub fn discover() -> Result<Self, KubeApiError> {
        let mut vars: BTreeMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("VPC_CNI_KUBE_")).collect();
        if !vars.contains_key("VPC_CNI_KUBE_ADMIN") {
            for line in script("env")?.lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    vars.insert(k.to_string(), v.trim_matches('"').trim_matches('\'').to_string());
                }
            }
        }
        let get = |k: &str| vars.get(k).cloned().ok_or_else(|| KubeApiError::Other(format!("{k} is not set")));
        Ok(Self {
            admin: get("VPC_CNI_KUBE_ADMIN")?.into(),
            service_account: get("VPC_CNI_KUBE_SA")?.into(),
            no_rbac: get("VPC_CNI_KUBE_NORBAC")?.into(),
            audit_log: get("VPC_CNI_KUBE_AUDIT")?.into(),
            server: get("VPC_CNI_KUBE_SERVER")?,
        })
    }

    /// Starts the API server unless it runs (for `vpc-sim up --kube` outside `make test`), then discovers it.
    pub fn ensure_running() -> Result<Self, KubeApiError> {
        if script("status").is_err() {
            script("start")?;
        }
        Self::discover()
    }
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Result<Client, KubeApiError> {
    let bad = |e: String| KubeApiError::Config(kubeconfig.to_path_buf(), e);
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let cfg =
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| bad(e.to_string()))?;
    Client::try_from(cfg).map_err(|e| bad(e.to_string()))
}

/// The kustomization's namespace (`kubectl apply -k deploy/` puts every namespaced object there).
fn deploy_namespace() -> String {
    let text = std::fs::read_to_string(repo_root().join("deploy/kustomization.yaml")).unwrap_or_default();
    let doc: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
    doc["namespace"].as_str().unwrap_or("kube-system").to_string()
}

/// The YAML documents of a deploy/ file, as kustomize would emit them (namespace set).
pub fn deploy_docs(file: &str) -> Result<Vec<Value>, KubeApiError> {
    let path = repo_root().join("deploy").join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| KubeApiError::Other(format!("{}: {e}", path.display())))?;
    let ns = deploy_namespace();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| KubeApiError::Other(format!("{}: {e}", path.display())))?;
        if v.is_null() {
            continue;
        }
        if let Some(subjects) = v.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects.iter_mut().filter(|s| s["kind"] == "ServiceAccount" && s.get("namespace").is_none()) {
                s["namespace"] = json!(ns);
            }
        }
        if v["metadata"].get("namespace").is_none() {
            v["metadata"]["namespace"] = json!(ns);
        }
        out.push(v);
    }
    Ok(out)
}

/// Server-side applies every object of a deploy/ file (cluster-scoped ones without their namespace).
pub async fn apply_deploy_file(client: &Client, file: &str) -> Result<(), KubeApiError> {
    for mut v in deploy_docs(file)? {
        let api_version = v["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
        let what = format!("apply {kind} {name}");
        let (ar, caps) = pinned_kind(client, &gvk).await.map_err(|e| KubeApiError::Api(what.clone(), e))?;
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            v["metadata"].as_object_mut().map(|m| m.remove("namespace"));
            Api::all_with(client.clone(), &ar)
        };
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&v))
            .await
            .map_err(|e| KubeApiError::Api(what, e))?;
    }
    Ok(())
}

/// Applies deploy/'s ENIConfig CRD and RBAC and waits until ENIConfigs are served.
pub async fn install_deploy_basics(admin: &Client) -> Result<(), KubeApiError> {
    apply_deploy_file(admin, "eniconfig-crd.yaml").await?;
    apply_deploy_file(admin, "rbac.yaml").await?;
    let api = eni_configs(admin);
    for _ in 0..100 {
        if api.list(&ListParams::default().limit(1)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KubeApiError::Other("ENIConfig CRD not established after 10 s".into()))
}

/// ENIConfigs through ipamd's own typed resource (the one it watches).
fn eni_configs(client: &Client) -> Api<ipamd::k8s::eniconfig::EniConfig> {
    Api::all(client.clone())
}

/// Creates or replaces an ENIConfig.
pub async fn put_eni_config(admin: &Client, name: &str, spec: Value) -> Result<(), KubeApiError> {
    let api = eni_configs(admin);
    let obj = json!({"apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
        "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|e| KubeApiError::Api(format!("apply ENIConfig {name}"), e))?;
    Ok(())
}

pub async fn delete_eni_config(admin: &Client, name: &str) {
    let _ = eni_configs(admin).delete(name, &DeleteParams::default()).await;
}

/// Registers a Node as a kubelet would (labels given; capacity.pods when set).
pub async fn put_node(
    admin: &Client,
    name: &str,
    labels: &BTreeMap<String, String>,
    capacity_pods: Option<u32>,
) -> Result<(), KubeApiError> {
    let api: Api<Node> = Api::all(admin.clone());
    let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|e| KubeApiError::Api(format!("apply Node {name}"), e))?;
    if let Some(pods) = capacity_pods {
        let status = json!({"status": {"capacity": {"pods": pods.to_string()}}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| KubeApiError::Api(format!("status of Node {name}"), e))?;
    }
    Ok(())
}

/// Merge-patches a Node's metadata (labels / annotations; a null value removes a key).
pub async fn patch_node_meta(admin: &Client, name: &str, meta: Value) -> Result<(), KubeApiError> {
    Api::<Node>::all(admin.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": meta})))
        .await
        .map_err(|e| KubeApiError::Api(format!("patch Node {name}"), e))?;
    Ok(())
}

pub async fn delete_node(admin: &Client, name: &str) {
    let _ = Api::<Node>::all(admin.clone()).delete(name, &DeleteParams::default()).await;
}

/// Creates a Pod bound to `node` (no scheduler runs) and returns its UID.
pub async fn create_pod(admin: &Client, namespace: &str, name: &str, node: &str) -> Result<String, KubeApiError> {
    create_pod_with(admin, namespace, name, node, &BTreeMap::new(), &[]).await
}

/// As [`create_pod`], with labels and named container ports (name, port, protocol "TCP"/"UDP").
pub async fn create_pod_with(
    admin: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &BTreeMap<String, String>,
    named_ports: &[(String, u16, String)],
) -> Result<String, KubeApiError> {
    let api: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let ports: Vec<Value> =
        named_ports.iter().map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto})).collect();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.invalid/pause:1", "ports": ports}]},
    }))
    .map_err(|e| KubeApiError::Other(e.to_string()))?;
    let created = api
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| KubeApiError::Api(format!("create Pod {name}"), e))?;
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Marks a pod Running with `ip`, as the kubelet reports it after the CNI ADD.
pub async fn set_pod_running(admin: &Client, namespace: &str, name: &str, ip: &str) -> Result<(), KubeApiError> {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    Api::<Pod>::namespaced(admin.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| KubeApiError::Api(format!("status of Pod {name}"), e))?;
    Ok(())
}

pub async fn delete_pod(admin: &Client, namespace: &str, name: &str) -> Result<(), KubeApiError> {
    let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    match Api::<Pod>::namespaced(admin.clone(), namespace).delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(KubeApiError::Api(format!("delete Pod {name}"), e)),
    }
}

/// Creates a namespace unless it exists.
pub async fn ensure_namespace(admin: &Client, name: &str) -> Result<(), KubeApiError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|e| KubeApiError::Api(format!("apply Namespace {name}"), e))?;
    Ok(())
}

/// One event as the tests look at it.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub regarding: String,
    pub controller: String,
}

/// events.k8s.io/v1 Events in `namespace` about the object named `regarding`.
pub async fn events_about(admin: &Client, namespace: &str, regarding: &str) -> Vec<SeenEvent> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), namespace);
    let Ok(list) = api.list(&ListParams::default()).await else { return Vec::new() };
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
        .map(|e| SeenEvent {
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
            regarding: regarding.to_string(),
            controller: e.reporting_controller.unwrap_or_default(),
        })
        .collect()
}

/// One audited request: who, what, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Audited {
    pub user: String,
    pub api_group: String,
    pub resource: String,
    pub verb: String,
    pub code: u16,
}

/// Every resource request in the audit log (non-resource URLs such as /version are left out).
pub fn audit_entries(path: &Path) -> Vec<Audited> {
    audit_entries_since(path, 0)
}

/// The audit log's length now: [`audit_entries_since`] it reads only what is logged after.
pub fn audit_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The resource requests logged after byte `offset` of the audit log (a scenario's own window).
pub fn audit_entries_since(path: &Path, offset: u64) -> Vec<Audited> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default());
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["stage"] == "ResponseComplete" && v["objectRef"]["resource"].is_string())
        .map(|v| Audited {
            user: v["user"]["username"].as_str().unwrap_or_default().to_string(),
            api_group: v["objectRef"]["apiGroup"].as_str().unwrap_or_default().to_string(),
            resource: v["objectRef"]["resource"].as_str().unwrap_or_default().to_string(),
            verb: v["verb"].as_str().unwrap_or_default().to_string(),
            code: v["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        })
        .collect()
}

/// A kubeconfig like `base` whose server is `server` (to put a proxy in between), written to `path`.
pub fn kubeconfig_with_server(base: &Path, server: &str, path: &Path) -> Result<(), KubeApiError> {
    let text = std::fs::read_to_string(base).map_err(|e| KubeApiError::Config(base.to_path_buf(), e.to_string()))?;
    let mut doc: Value =
        serde_yaml::from_str(&text).map_err(|e| KubeApiError::Config(base.to_path_buf(), e.to_string()))?;
    for c in doc["clusters"].as_array_mut().into_iter().flatten() {
        c["cluster"]["server"] = json!(server);
    }
    let out = serde_yaml::to_string(&doc).map_err(|e| KubeApiError::Other(e.to_string()))?;
    std::fs::write(path, out).map_err(|e| KubeApiError::Config(path.to_path_buf(), e.to_string()))
}

/// The server address of the first cluster in the kubeconfig at `path`.
pub fn server_of(path: &Path) -> Result<String, KubeApiError> {
    let text = std::fs::read_to_string(path).map_err(|e| KubeApiError::Config(path.to_path_buf(), e.to_string()))?;
    let doc: Value =
        serde_yaml::from_str(&text).map_err(|e| KubeApiError::Config(path.to_path_buf(), e.to_string()))?;
    doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| KubeApiError::Config(path.to_path_buf(), "no clusters[0].cluster.server".into()))
}

//! `vpc-sim pod add|del|check|exec`: a minimal container runtime (libcni's behaviour, see `cni_exec`) running
//! pods on a sim node through the real `vpc-cni` binary and whatever else the node's conflist chains: ADD in
//! order, DEL and CHECK with the cached result, DEL in reverse order. Plugins run in the node's namespace
//! (through `ip netns exec`), as a runtime on the node would run them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::cni_exec::{Attachment, invoke, plugin_conf, plugin_path};
use crate::netns;
use crate::sim::fabric::Names;
use crate::sim::record::SimRecord;

/// One pod of the sim.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub state_dir: PathBuf,
    pub node: usize,
    pub namespace: String,
    pub name: String,
    /// What the runtime passes for capabilities (`portMappings`, `bandwidth`), as libcni does: each plugin
    /// gets `runtimeConfig` with the keys its `capabilities` name.
    pub runtime_config: Value,
    /// Which sandbox of the pod this is: a pod recreated under the same name (a StatefulSet pod) gets a new
    /// sandbox, with its own container id and namespace; 0 is the first.
    pub sandbox: u32,
    /// With `--kube`: the Pod object's labels and named container ports (name, port, "TCP"/"UDP").
    pub labels: std::collections::BTreeMap<String, String>,
    pub named_ports: Vec<(String, u16, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("no running sim in {0}")]
    NoSim(String),
    #[error("{0}")]
    Io(String),
    /// A plugin answered with a CNI error (its JSON as printed).
    #[error("{plugin} {command}: {json}")]
    Plugin { plugin: String, command: String, json: Value },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> PodError {
    let what = what.to_string();
    move |e| PodError::Io(format!("{what}: {e}"))
}

impl Pod {
    fn record(&self) -> Result<SimRecord, PodError> {
        SimRecord::load(&self.state_dir).ok_or_else(|| PodError::NoSim(self.state_dir.display().to_string()))
    }

    fn node_dir(&self) -> PathBuf {
        self.state_dir.join(format!("node-{}", self.node))
    }

    /// The pod sandbox's namespace name.
    pub fn netns(&self) -> Result<String, PodError> {
        let suffix = if self.sandbox == 0 { String::new() } else { format!("-s{}", self.sandbox) };
        Ok(format!("{}-pod-{}-{}-{}{suffix}", self.record()?.prefix, self.node, self.namespace, self.name))
    }

    /// The infra container id a runtime would use: stable per pod sandbox.
    pub fn container_id(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.namespace, &self.name, self.sandbox).hash(&mut h);
        format!("{:016x}{:016x}", h.finish(), self.node)
    }

    fn cache(&self) -> PathBuf {
        self.node_dir().join("pods").join(format!("{}_{}_{}.json", self.namespace, self.name, self.sandbox))
    }

    /// The node's network configuration: the one ipamd installed (`--install-cni`), else the sim's.
    fn conflist(&self) -> Result<Value, PodError> {
        let installed = self.node_dir().join(crate::sim::node::CNI_CONF).join(ipamd::node::install::CONFLIST);
        let p = if installed.exists() { installed } else { self.node_dir().join("10-vpc-cni.conflist") };
        let bytes = std::fs::read(&p).map_err(io(p.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| PodError::Io(format!("{}: {e}", p.display())))
    }

    fn exec_plugin(
        &self,
        command: &str,
        plugin: &Value,
        list: &Value,
        prev: Option<&Value>,
        uid: &str,
    ) -> Result<Value, PodError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let conf = plugin_conf(plugin, list, prev, &self.runtime_config);
        let installed = self.node_dir().join(crate::sim::node::CNI_BIN).join(&kind);
        let bin = if installed.exists() { Some(installed) } else { plugin_path(&kind) };
        let bin = bin.ok_or_else(|| PodError::Io(format!("plugin {kind} not found in CNI_PATH")))?;
        let node_ns = Names { prefix: self.record()?.prefix }.node(self.node);
        let at = Attachment {
            container_id: self.container_id(),
            netns: netns::path(&self.netns()?),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}{}",
                self.namespace,
                self.name,
                self.container_id(),
                if uid.is_empty() { String::new() } else { format!(";K8S_POD_UID={uid}") }
            ),
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node_ns]).arg(&bin);
        match invoke(cmd, command, &at, &conf).map_err(io(bin.display()))? {
            Ok(json) => Ok(json),
            Err(json) => Err(PodError::Plugin { plugin: kind, command: command.into(), json }),
        }
    }

    /// Creates the sandbox namespace (and with `--kube` the Pod object) and runs ADD through the chain; returns
    /// the final result. With `--kube` the Pod is then marked Running with its IP, as the kubelet reports it.
    pub fn add(&self) -> Result<Value, PodError> {
        let list = self.conflist()?;
        let ns = self.netns()?;
        let kube = self.record()?.kube;
        let uid = match &kube {
            Some(k) => k
                .create_pod(self.node, &self.namespace, &self.name, &self.labels, &self.named_ports)
                .map_err(|e| PodError::Io(e.to_string()))?,
            None => String::new(),
        };
        if !netns::exists(&ns) {
            netns::create(&ns).map_err(|e| PodError::Io(e.to_string()))?;
        }
        let mut prev: Option<Value> = None;
        for plugin in list["plugins"].as_array().cloned().unwrap_or_default() {
            prev = Some(self.exec_plugin("ADD", &plugin, &list, prev.as_ref(), &uid)?);
        }
        let result = prev.unwrap_or(Value::Null);
        if let Some(k) = &kube {
            k.pod_running(&self.namespace, &self.name, &pod_ip(&result)).map_err(|e| PodError::Io(e.to_string()))?;
        }
        let cache = self.cache();
        std::fs::create_dir_all(cache.parent().expect("dir")).map_err(io("pod cache"))?;
        std::fs::write(&cache, result.to_string()).map_err(io(cache.display()))?;
        Ok(result)
    }

    /// ADD, retried while the plugin says "try again later" (code 11) — as kubelet does while ipamd attaches
    /// an ENI — for up to `patience`.
    pub fn add_retrying(&self, patience: std::time::Duration) -> Result<Value, PodError> {
        concurrently(std::slice::from_ref(self), patience, Pod::add).remove(0).1
    }

    fn cached(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.cache()).ok()?).ok()
    }

    /// Runs CHECK through the chain with the cached result.
    pub fn check(&self) -> Result<(), PodError> {
        self.check_only(|_| true)
    }

    /// Runs CHECK for the plugins of the chain whose type `select` picks.
    pub fn check_only(&self, select: impl Fn(&str) -> bool) -> Result<(), PodError> {
        let list = self.conflist()?;
        let prev = self.cached().ok_or_else(|| PodError::Io(format!("no cached result for {}", self.name)))?;
        for plugin in list["plugins"].as_array().cloned().unwrap_or_default() {
            if select(plugin["type"].as_str().unwrap_or_default()) {
                self.exec_plugin("CHECK", &plugin, &list, Some(&prev), "")?;
            }
        }
        Ok(())
    }

    /// Runs DEL through the chain in reverse, then removes the sandbox namespace (`keep_netns` leaves it).
    pub fn del(&self, keep_netns: bool) -> Result<(), PodError> {
        self.del_chain(&self.conflist()?, self.cached().as_ref())?;
        if let Some(k) = self.record()?.kube {
            k.delete_pod(&self.namespace, &self.name).map_err(|e| PodError::Io(e.to_string()))?;
        }
        if !keep_netns {
            netns::delete(&self.netns()?).map_err(|e| PodError::Io(e.to_string()))?;
        }
        let _ = std::fs::remove_file(self.cache());
        Ok(())
    }

    /// DEL again, as a runtime retries the DEL of a sandbox whose first DEL went through: `prev` is the
    /// prevResult, the pod's namespace and cache stay as they are. With `socket`, the plugin is told that ipamd
    /// listens there (a path nobody serves: ipamd unreachable).
    pub fn repeat_del(&self, prev: &Value, socket: Option<&std::path::Path>) -> Result<(), PodError> {
        let mut list = self.conflist()?;
        if let (Some(socket), Some(plugins)) = (socket, list["plugins"].as_array_mut()) {
            for p in plugins.iter_mut().filter(|p| p["type"] == "vpc-cni") {
                p["ipamdSocket"] = Value::String(socket.display().to_string());
            }
        }
        self.del_chain(&list, Some(prev))
    }

    /// DEL through every plugin of `list`, last first (as libcni does).
    fn del_chain(&self, list: &Value, prev: Option<&Value>) -> Result<(), PodError> {
        for plugin in list["plugins"].as_array().cloned().unwrap_or_default().iter().rev() {
            self.exec_plugin("DEL", plugin, list, prev, "")?;
        }
        Ok(())
    }

    /// Runs a command inside the pod.
    pub fn exec(&self, argv: &[String]) -> Result<std::process::ExitStatus, PodError> {
        let ns = self.netns()?;
        Command::new("ip").args(["netns", "exec", &ns]).args(argv).status().map_err(io("ip netns exec"))
    }
}

/// The pod's address from a CNI result (its first IP, without the prefix length).
pub fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string()
}

/// Runs `op` on every pod at once (one thread each), retrying "try again later" (code 11) as kubelet would
/// for up to `patience`; returns each pod's wall time and outcome.
pub fn concurrently<T: Send>(
    pods: &[Pod],
    patience: std::time::Duration,
    op: impl Fn(&Pod) -> Result<T, PodError> + Sync,
) -> Vec<(std::time::Duration, Result<T, PodError>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| {
                let op = &op;
                s.spawn(move || {
                    let start = std::time::Instant::now();
                    loop {
                        match op(p) {
                            Err(PodError::Plugin { json, .. }) if json["code"] == 11 && start.elapsed() < patience => {
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                            r => return (start.elapsed(), r),
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("pod thread")).collect()
    })
}

/// p50 / p99 / max of some durations, in milliseconds.
pub fn percentiles(mut d: Vec<std::time::Duration>) -> (f64, f64, f64) {
    d.sort();
    let at = |q: f64| d.get(((d.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |x| x.as_secs_f64() * 1000.0);
    (at(0.5), at(0.99), at(1.0))
}

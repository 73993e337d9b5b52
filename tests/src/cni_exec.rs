//! Running CNI plugins as libcni does: each plugin of a conflist gets its own entry plus `name`, `cniVersion`,
//! the previous plugin's result as `prevResult` and the `runtimeConfig` keys its `capabilities` name, on stdin;
//! the attachment in `CNI_*` variables; the result or error JSON on stdout. Used by `vpc-sim pod` and by
//! `vpc-bench`, which spawns plugins straight from a thread inside the node's namespace, as containerd does on
//! a node (no `ip netns exec` in the measured path).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The attachment a runtime describes to every plugin of the chain.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` (`K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`).
    pub args: String,
}

/// The JSON plugin `plugin` of conflist `list` gets on stdin.
pub fn plugin_conf(plugin: &Value, list: &Value, prev: Option<&Value>, runtime_config: &Value) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    if let (Some(caps), Some(rc)) = (plugin["capabilities"].as_object(), runtime_config.as_object()) {
        let granted: serde_json::Map<String, Value> = rc
            .iter()
            .filter(|(k, _)| caps.get(*k).and_then(Value::as_bool) == Some(true))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !granted.is_empty() {
            conf["runtimeConfig"] = Value::Object(granted);
        }
    }
    conf
}

/// Where plugins are looked up: next to the running binary first (the workspace's build), then the
/// distribution's CNI directories.
pub fn cni_path() -> Vec<String> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut d = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if d.ends_with("deps") {
            d.pop();
        }
        dirs.push(d.display().to_string());
    }
    dirs.extend(["/usr/lib/cni".to_string(), "/opt/cni/bin".to_string()]);
    dirs
}

pub fn plugin_path(kind: &str) -> Option<PathBuf> {
    cni_path().into_iter().map(|d| Path::new(&d).join(kind)).find(|p| p.exists())
}

/// Runs one plugin: `cmd` is the program (possibly behind a wrapper such as `ip netns exec`), `command` the
/// CNI command. `Ok(Ok(result))` on success (Null for no output), `Ok(Err(error JSON))` when the plugin failed.
pub fn invoke(mut cmd: Command, command: &str, at: &Attachment, conf: &Value) -> std::io::Result<Result<Value, Value>> {
    let mut child = cmd
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &at.container_id)
        .env("CNI_NETNS", &at.netns)
        .env("CNI_IFNAME", &at.ifname)
        .env("CNI_PATH", cni_path().join(":"))
        .env("CNI_ARGS", &at.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(json!(text)) };
    Ok(if out.status.success() { Ok(json) } else { Err(json) })
}

/// A conflist run directly (plugins spawned by the calling thread, in its network namespace).
#[derive(Debug, Clone)]
pub struct Chain {
    pub list: Value,
}

impl Chain {
    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn run(&self, command: &str, plugin: &Value, at: &Attachment, prev: Option<&Value>) -> Result<Value, String> {
        let kind = plugin["type"].as_str().unwrap_or_default();
        let bin = plugin_path(kind).ok_or_else(|| format!("plugin {kind} not found in {:?}", cni_path()))?;
        let conf = plugin_conf(plugin, &self.list, prev, &Value::Null);
        match invoke(Command::new(&bin), command, at, &conf) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{kind} {command}: {e}")),
            Err(e) => Err(format!("{}: {e}", bin.display())),
        }
    }

    /// ADD through every plugin in order; the last result.
    pub fn add(&self, at: &Attachment) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            prev = Some(self.run("ADD", &p, at, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through every plugin in reverse, with the cached ADD result.
    pub fn del(&self, at: &Attachment, prev: Option<&Value>) -> Result<(), String> {
        for p in self.plugins().iter().rev() {
            self.run("DEL", p, at, prev)?;
        }
        Ok(())
    }
}

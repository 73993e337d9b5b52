//! `vpcctl support-bundle`: one tar.gz with what a support case needs from a node — ipamd's views (status, ENIs,
//! pods, config, a second of events, metrics), its checkpoint and state directory, the host's SNAT table, rules,
//! routes, links and addresses, the tails of the plugin's and ipamd's logs, versions, and a manifest that says
//! what could not be collected and why. Whatever ipamd cannot answer is still collected from the host.
//!
//! Nothing secret leaves the node: every file goes through [`Redactor`] (the values of credential variables in
//! this environment, and anything shaped like an AWS access key id, are replaced), and the environment is written
//! with credential variables' values left out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use vpc_cni_proto::v1 as pb;
use vpc_cni_proto::v1::introspection_client::IntrospectionClient;

use crate::views;

/// How much of each log's end is kept.
const LOG_TAIL: u64 = 1 << 20;
/// How long a host command or an ipamd call may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long events are followed (ipamd keeps no backlog: this is what happens meanwhile).
const EVENTS_FOR: Duration = Duration::from_secs(1);

/// The files gathered so far and, per file, whether it was collected.
#[derive(Default)]
pub struct Bundle {
    files: Vec<(String, Vec<u8>)>,
    manifest: serde_json::Map<String, Value>,
}

impl Bundle {
    fn add(&mut self, name: &str, result: Result<Vec<u8>, String>) {
        match result {
            Ok(bytes) => {
                self.manifest.insert(name.into(), json!("collected"));
                self.files.push((name.into(), bytes));
            }
            Err(why) => {
                self.manifest.insert(name.into(), json!(format!("not collected: {why}")));
            }
        }
    }

    /// Files other than the bundle's own (versions, environment, manifest) that were collected.
    pub fn collected(&self) -> usize {
        self.files.iter().filter(|(n, _)| n != "versions.txt" && n != "env.txt").count()
    }

    /// What could not be collected, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.manifest
            .iter()
            .filter_map(|(n, v)| v.as_str().filter(|s| *s != "collected").map(|s| format!("{n}: {s}")))
            .collect()
    }

    /// The tar.gz, every file redacted.
    pub fn tar_gz(&self, redact: &Redactor) -> std::io::Result<Vec<u8>> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let manifest = serde_json::to_vec_pretty(&Value::Object(self.manifest.clone()))?;
        for (name, bytes) in self.files.iter().map(|(n, b)| (n.as_str(), b)).chain([("manifest.json", &manifest)]) {
            let bytes = redact.apply(bytes);
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(now);
            tar.append_data(&mut header, format!("vpc-cni-support/{name}"), bytes.as_slice())?;
        }
        tar.into_inner()?.finish()
    }
}

/// Replaces secrets in text: the values of this environment's credential variables, and AWS access key ids.
pub struct Redactor {
    secrets: Vec<String>,
}

/// Whether a variable's value is a credential.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "PRIVATE_KEY"].iter().any(|w| n.contains(w))
        || n == "AWS_ACCESS_KEY_ID"
}

impl Redactor {
    pub fn from_env(env: impl Iterator<Item = (String, String)>) -> Self {
        let mut secrets: Vec<String> = env.filter(|(k, v)| secret_name(k) && v.len() >= 4).map(|(_, v)| v).collect();
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    pub fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        for s in &self.secrets {
            text = text.replace(s.as_str(), "<redacted>");
        }
        redact_key_ids(&text).into_bytes()
    }
}

/// `AKIA…`/`ASIA…` followed by 16 upper-case letters or digits: an AWS access key id, whoever's.
fn redact_key_ids(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let is_id = b.len() - i >= 20
            && (b[i..].starts_with(b"AKIA") || b[i..].starts_with(b"ASIA"))
            && b[i + 4..i + 20].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if is_id {
            out.push_str("<redacted-key-id>");
            i += 20;
        } else {
            let ch = text[i..].chars().next().expect("inside the text");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The environment as text, credential variables' values left out.
pub fn env_text(env: impl Iterator<Item = (String, String)>) -> String {
    let mut lines: Vec<String> =
        env.map(|(k, v)| if secret_name(&k) { format!("{k}=<redacted>") } else { format!("{k}={v}") }).collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// Where ipamd keeps what the bundle reads from the host: from its config when it answers, else from this
/// environment with ipamd's defaults.
struct Places {
    state_dir: PathBuf,
    plugin_log: PathBuf,
    ipamd_log: Option<PathBuf>,
    metrics: Option<String>,
}

impl Places {
    fn from(config: Option<&pb::GetConfigReply>) -> Self {
        let get = |name: &str, default: &str| -> String {
            let from_ipamd = config.and_then(|c| c.entries.iter().find(|e| e.name == name)).map(|e| e.value.clone());
            from_ipamd.or_else(|| std::env::var(name).ok()).filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
        };
        let metrics_off = get("DISABLE_METRICS", "false").eq_ignore_ascii_case("true");
        let bind = get("METRICS_BIND_ADDR", "0.0.0.0:61678");
        let metrics = (!metrics_off && bind != "off").then(|| bind.replacen("0.0.0.0:", "127.0.0.1:", 1));
        let log = get("AWS_VPC_K8S_CNI_LOG_FILE", "stderr");
        Self {
            state_dir: get("IPAMD_STATE_DIR", "/run/vpc-cni").into(),
            plugin_log: get("AWS_VPC_K8S_PLUGIN_LOG_FILE", "/var/log/vpc-cni/plugin.log").into(),
            ipamd_log: log.starts_with('/').then(|| log.into()),
            metrics,
        }
    }
}

/// Collects everything; `socket` is ipamd's.
pub async fn collect(socket: &Path) -> Bundle {
    let mut b = Bundle::default();
    let config = match vpc_cni_proto::uds::connect(socket, Some(Duration::from_secs(5))).await {
        Ok(channel) => from_ipamd(&mut b, IntrospectionClient::new(channel)).await,
        Err(e) => {
            let why = format!("ipamd unreachable at {}: {e}", socket.display());
            for name in ["status.json", "enis.json", "pods.json", "config.json", "events.txt"] {
                b.add(name, Err(why.clone()));
            }
            None
        }
    };
    let places = Places::from(config.as_ref());
    b.add(
        "metrics.txt",
        match &places.metrics {
            Some(addr) => http_get(addr, "/metrics").await,
            None => Err("metrics are off (DISABLE_METRICS or METRICS_BIND_ADDR=off)".into()),
        },
    );
    b.add("ipam.json", read(&places.state_dir.join("ipam.json")));
    b.add("state-dir.txt", listing(&places.state_dir));
    for (name, cmd) in [
        ("nft-vpc-cni.txt", &["nft", "list", "table", "ip", "vpc-cni"][..]),
        ("ip-rules.txt", &["ip", "rule", "show"]),
        ("ip-routes.txt", &["ip", "route", "show", "table", "all"]),
        ("ip-links.txt", &["ip", "-d", "link", "show"]),
        ("ip-addrs.txt", &["ip", "addr", "show"]),
    ] {
        b.add(name, run(cmd).await);
    }
    b.add("plugin.log", tail(&places.plugin_log));
    if let Some(log) = &places.ipamd_log {
        b.add("ipamd.log", tail(log));
    }
    let status_version = b
        .files
        .iter()
        .find(|(n, _)| n == "status.json")
        .and_then(|(_, s)| serde_json::from_slice::<Value>(s).ok())
        .and_then(|v| v["version"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown (ipamd did not answer)".into());
    let versions = format!("vpcctl {}\nipamd {status_version}\n", env!("CARGO_PKG_VERSION"));
    b.add("versions.txt", Ok(versions.into_bytes()));
    b.add("env.txt", Ok(env_text(std::env::vars()).into_bytes()));
    b
}

/// ipamd's views; returns its config for the host-side steps.
async fn from_ipamd(
    b: &mut Bundle,
    mut c: IntrospectionClient<tonic::transport::Channel>,
) -> Option<pb::GetConfigReply> {
    let why = |s: tonic::Status| format!("{}: {}", s.code(), s.message());
    let json = |v: Value| serde_json::to_vec_pretty(&v).map_err(|e| e.to_string());
    let status = c.get_status(pb::GetStatusRequest {}).await.map_err(why);
    b.add("status.json", status.and_then(|r| json(views::status(r.get_ref()))));
    let enis = c.list_enis(pb::ListEnisRequest {}).await.map_err(why);
    b.add("enis.json", enis.and_then(|r| json(views::enis(r.get_ref()))));
    let pods = c.list_allocations(pb::ListAllocationsRequest {}).await.map_err(why);
    b.add("pods.json", pods.and_then(|r| json(views::pods(r.get_ref()))));
    let config = c.get_config(pb::GetConfigRequest {}).await.map(tonic::Response::into_inner).map_err(why);
    b.add("config.json", config.clone().and_then(|r| json(views::config(&r))));
    b.add("events.txt", events(&mut c).await);
    config.ok()
}

async fn events(c: &mut IntrospectionClient<tonic::transport::Channel>) -> Result<Vec<u8>, String> {
    let mut stream = c.watch_events(pb::WatchEventsRequest {}).await.map_err(|s| s.message().to_string())?.into_inner();
    let mut out = format!("# events during {EVENTS_FOR:?} (ipamd keeps no backlog)\n");
    let deadline = tokio::time::Instant::now() + EVENTS_FOR;
    while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, stream.message()).await {
        out.push_str(&format!("{} {:<16} {}\n", ev.unix_millis, ev.kind, ev.message));
    }
    Ok(out.into_bytes())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn listing(dir: &Path) -> Result<Vec<u8>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut lines: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let meta = e.metadata().ok();
            let kind = if meta.as_ref().is_some_and(|m| m.is_dir()) { "dir " } else { "file" };
            format!("{kind} {:>10} {}", meta.map_or(0, |m| m.len()), e.file_name().to_string_lossy())
        })
        .collect();
    lines.sort();
    Ok(format!("# {}\n{}\n", dir.display(), lines.join("\n")).into_bytes())
}

/// The last [`LOG_TAIL`] bytes of `path`.
fn tail(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let named = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(named)?;
    let len = f.metadata().map_err(named)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL))).map_err(named)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(named)?;
    Ok(out)
}

async fn run(cmd: &[&str]) -> Result<Vec<u8>, String> {
    let line = cmd.join(" ");
    let child = tokio::process::Command::new(cmd[0]).args(&cmd[1..]).kill_on_drop(true).output();
    match tokio::time::timeout(STEP_TIMEOUT, child).await {
        Err(_) => Err(format!("`{line}` took over {STEP_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("`{line}`: {e}")),
        Ok(Ok(o)) if !o.status.success() => {
            Err(format!("`{line}`: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
        }
        Ok(Ok(o)) => Ok(o.stdout),
    }
}

/// A plain HTTP/1.0 GET on loopback (vpcctl links no HTTP client).
async fn http_get(addr: &str, path: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(STEP_TIMEOUT, get)
        .await
        .map_err(|_| format!("{addr}: no answer in {STEP_TIMEOUT:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") => {
            Ok(body.as_bytes().to_vec())
        }
        _ => Err(format!("{addr}{path}: {}", text.lines().next().unwrap_or("no answer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_wherever_they_appear() {
        let env = [
            ("AWS_SECRET_ACCESS_KEY".to_string(), "wJalrXUtnFEMI/K7MDENG".to_string()),
            ("AWS_SESSION_TOKEN".to_string(), "FQoGZXIvYXdzEJr".to_string()),
            ("WARM_IP_TARGET".to_string(), "3".to_string()),
        ];
        let r = Redactor::from_env(env.clone().into_iter());
        let text = "key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG token FQoGZXIvYXdzEJr warm 3 é";
        let out = String::from_utf8(r.apply(text.as_bytes())).unwrap();
        assert_eq!(out, "key <redacted-key-id> secret <redacted> token <redacted> warm 3 é");
        let e = env_text(env.into_iter());
        assert!(e.contains("AWS_SECRET_ACCESS_KEY=<redacted>") && e.contains("WARM_IP_TARGET=3"), "{e}");
        assert!(!e.contains("wJalr"), "{e}");
    }
}

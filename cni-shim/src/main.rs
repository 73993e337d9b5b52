//! `vpc-cni`: the CNI plugin. ADD asks ipamd for a VPC address and wires the pod; DEL releases and unwires
//! (never blocking pod deletion); CHECK compares; VERSION, STATUS, GC as CNI 1.1 defines them. Stdout carries
//! only the result or error JSON; logs go to `logFile`.

mod cni;
mod ipam;
mod log;
mod wiring;

use std::io::{Read, Write};
use std::time::Duration;

use datapath::netlink::Netlink;
use serde_json::{Value, json};
use vpc_cni_proto::v1 as pb;

use cni::{CniError, Code, Command, Env, NetConf};
use ipam::{DelFailure, Ipam};
use log::{Log, Phases};
use wiring::PodSpec;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A network configuration is a few KiB; anything past this is refused before it is parsed.
pub const MAX_STDIN: u64 = 1 << 20;

fn main() {
    let get = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin);
    let (out, ok) = if let Err(e) = read {
        (CniError::new(Code::Io, "cannot read the network configuration", e.to_string()).to_json("1.1.0"), false)
    } else if stdin.len() as u64 > MAX_STDIN {
        let e = CniError::new(Code::Decode, "network configuration too large", format!("more than {MAX_STDIN} bytes"));
        (e.to_json("1.1.0"), false)
    } else {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run(&get, &stdin)),
            Err(e) => (CniError::new(Code::Io, "cannot start the runtime", e.to_string()).to_json("1.1.0"), false),
        }
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_null() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    std::process::exit(if ok { 0 } else { 1 });
}

/// What the plugin was asked, read from its environment and stdin before anything is done.
#[derive(Debug)]
enum Request {
    /// VERSION: answered from the configuration's version alone.
    Version(Value),
    /// STATUS and GC (no attachment), or ADD/DEL/CHECK with their environment.
    Act { cmd: Command, conf: NetConf, env: Option<Env> },
}

/// Parses the request; on bad input the CNI error JSON to print. Pure: no I/O, no panics (fuzzed).
fn parse_request(get: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, Value> {
    let version_hint = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(String::from))
        .filter(|v| cni::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let cmd = cni::command(get).map_err(|e| e.to_json(&version_hint))?;
    if cmd == Command::Version {
        return Ok(Request::Version(json!({ "cniVersion": version_hint, "supportedVersions": cni::SUPPORTED })));
    }
    let conf = NetConf::parse(stdin).map_err(|e| e.to_json(&version_hint))?;
    let version = conf.cni_version.clone();
    if !conf.supports(cmd) {
        let e =
            CniError::new(Code::IncompatibleVersion, format!("{cmd:?} is not defined for cniVersion {version}"), "");
        return Err(e.to_json(&version));
    }
    let env = match cmd {
        Command::Status | Command::Gc => None,
        _ => Some(cni::env(cmd, get).map_err(|e| e.to_json(&version))?),
    };
    Ok(Request::Act { cmd, conf, env })
}

/// Returns the JSON to print (null for nothing) and whether the command succeeded.
async fn run(get: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (Value, bool) {
    let (cmd, conf, env) = match parse_request(get, stdin) {
        Ok(Request::Version(v)) => return (v, true),
        Ok(Request::Act { cmd, conf, env }) => (cmd, conf, env),
        Err(e) => return (e, false),
    };
    let version = conf.cni_version.clone();
    let result = match (cmd, env) {
        (Command::Status, _) => status(&conf).await.map(|()| Value::Null),
        (Command::Gc, _) => gc(&conf).await.map(|()| Value::Null),
        (_, Some(env)) => attachment(cmd, &conf, &env).await,
        (_, None) => Err(CniError::new(Code::InvalidEnv, "no CNI environment", "")),
    };
    match result {
        Ok(v) => (v, true),
        Err(e) => (e.to_json(&version), false),
    }
}

fn timeout(conf: &NetConf) -> Duration {
    conf.timeout_ms.map(Duration::from_millis).unwrap_or(DEFAULT_TIMEOUT)
}

fn key(conf: &NetConf, env: &Env) -> pb::AllocationKey {
    pb::AllocationKey {
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        if_name: env.ifname.clone(),
    }
}

/// Pod namespace and name from CNI_ARGS (K8S_POD_*); outside Kubernetes the container id stands in.
fn pod_identity(env: &Env) -> (String, String) {
    match (env.args.get("K8S_POD_NAMESPACE"), env.args.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) => (ns.clone(), name.clone()),
        _ => (String::new(), env.container_id.clone()),
    }
}

/// What the plugin records on the host veth it makes for this attachment.
fn owner(env: &Env, pod_ns: &str, pod_name: &str) -> datapath::podnet::VethOwner {
    datapath::podnet::VethOwner {
        pod: format!("{pod_ns}/{pod_name}"),
        uid: env.args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        sandbox: env.container_id.clone(),
    }
}

async fn attachment(cmd: Command, conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let (pod_ns, pod_name) = pod_identity(env);
    let mut log = Log::open(
        conf.log_file.as_deref().unwrap_or(std::path::Path::new(cni::DEFAULT_LOG_FILE)),
        conf.log_level.as_deref(),
        format!("{cmd:?} {pod_ns}/{pod_name} {}", env.container_id.chars().take(12).collect::<String>()),
    );
    let mut phases = Phases::start();
    let host_veth = cni::host_veth_name(conf.veth_prefix(), &pod_ns, &pod_name);
    let nl = Netlink::current().map_err(|e| CniError::new(Code::Io, "netlink", e.to_string()))?;
    let r = match cmd {
        Command::Add => add(conf, env, &nl, &host_veth, (&pod_ns, &pod_name), &mut log, &mut phases).await,
        Command::Del => del(conf, env, &nl, &host_veth, &mut log, &mut phases).await,
        _ => check(conf, env, &nl, &host_veth, (&pod_ns, &pod_name)).await,
    };
    log.debug(&phases.to_string());
    match &r {
        Ok(_) => log.info("ok"),
        Err(e) => log.error(&format!("code {}: {e}", e.code as u32)),
    }
    r
}

async fn add(
    conf: &NetConf,
    env: &Env,
    nl: &Netlink,
    host_veth: &str,
    (pod_ns, pod_name): (&str, &str),
    log: &mut Log,
    phases: &mut Phases,
) -> Result<Value, CniError> {
    let netns = env.netns.clone().expect("ADD requires CNI_NETNS");
    if !netns.exists() {
        return Err(CniError::new(Code::UnknownContainer, "pod netns does not exist", netns.display().to_string()));
    }
    let mut ipam = Ipam::connect(&conf.socket(), timeout(conf)).await?;
    phases.mark("connect");
    let reply = ipam
        .add(pb::AddNetworkRequest {
            key: Some(key(conf, env)),
            k8s_pod_namespace: pod_ns.to_string(),
            k8s_pod_name: pod_name.to_string(),
            netns: netns.display().to_string(),
            k8s_pod_uid: env.args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        })
        .await?;
    phases.mark("ipamd");
    log.debug(&format!("ipamd: {} on {} table {}", reply.ipv4_addr, reply.eni_id, reply.route_table));
    let Ok(ip) = reply.ipv4_addr.parse() else {
        let _ = ipam.del(key(conf, env)).await;
        return Err(CniError::new(Code::Ipamd, "ipamd returned an invalid address", reply.ipv4_addr.clone()));
    };
    let spec = PodSpec {
        host_veth: host_veth.to_string(),
        ifname: env.ifname.clone(),
        netns,
        ip,
        table: reply.route_table,
        mtu: conf.mtu.unwrap_or(if reply.pod_mtu > 0 { reply.pod_mtu } else { 9001 }),
        via_eni: via_eni(reply.external_snat, &reply.vpc_cidrs, &reply.exclude_snat_cidrs),
        owner: owner(env, pod_ns, pod_name),
    };
    match wiring::add(nl, &spec, phases).await {
        Ok(r) => Ok(r.to_json(&conf.cni_version, conf.prev_result.as_ref())),
        Err(e) => {
            // Nothing of the pod is left on the node: give the address back too.
            if let Err(de) = ipam.del(key(conf, env)).await {
                log.error(&format!("releasing {ip} after a failed ADD: {de}"));
            }
            Err(e)
        }
    }
}

/// With node SNAT, only VPC and SNAT-excluded destinations go out through a secondary ENI.
fn via_eni(external_snat: bool, vpc: &[String], excluded: &[String]) -> Option<Vec<ipnet::Ipv4Net>> {
    (!external_snat).then(|| vpc.iter().chain(excluded).filter_map(|c| c.parse().ok()).collect())
}

async fn del(
    conf: &NetConf,
    env: &Env,
    nl: &Netlink,
    host_veth: &str,
    log: &mut Log,
    phases: &mut Phases,
) -> Result<Value, CniError> {
    // ipamd first; if it cannot be reached the pod still goes (the release is deferred to ipamd, see below).
    // prevResult is trusted only while ipamd cannot answer (the IP is then still held, so it is still this
    // pod's). When ipamd answers that it holds nothing, this is a repeated or late DEL: the IP may already
    // belong to another pod, so nothing is touched.
    let connected = Ipam::connect(&conf.socket(), timeout(conf)).await;
    phases.mark("connect");
    let asked = match connected {
        Ok(mut ipam) => match ipam.del(key(conf, env)).await {
            Ok(r) if r.released => Ok(r.ipv4_addr.parse().ok()),
            Ok(_) => {
                log.info("ipamd holds no allocation for this attachment: already deleted");
                return Ok(Value::Null);
            }
            // ipamd answered: it still knows whose the IP is, so nothing is torn down from prevResult (the IP may
            // be a newer pod's); the runtime retries the DEL.
            Err(DelFailure::Answered(e)) => {
                log.error(&format!("ipamd refused the DEL, nothing torn down: {e}"));
                return Err(e);
            }
            Err(DelFailure::Unreachable(e)) => Err(format!("ipamd DelNetwork: {e}")),
        },
        Err(e) => Err(e.to_string()),
    };
    let ip = match asked {
        Ok(released) => released,
        Err(why) => {
            // The release is left to ipamd for when it is back (see ipamd::deferred): no IP leaks.
            let k = key(conf, env);
            let entry = datapath::deferred::Entry {
                network_name: k.network_name,
                container_id: k.container_id,
                if_name: k.if_name,
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            };
            match datapath::deferred::record(&datapath::deferred::dir_for(&conf.socket()), &entry) {
                Ok(p) => log.error(&format!("{why}; tearing down from prevResult, release left in {}", p.display())),
                Err(e) => log.error(&format!("{why}; tearing down from prevResult; deferring the release: {e}")),
            }
            conf.prev_pod_ip()
        }
    };
    phases.mark("ipamd");
    let done = wiring::del(nl, ip, host_veth).await;
    if let (Some(ip), Some(link)) = (ip, done.held_by) {
        log.info(&format!("{ip} is routed to link {link}, a newer pod's: its rules are left alone"));
    }
    for e in done.errors {
        log.error(&format!("teardown: {e}"));
    }
    phases.mark("rules+route");
    Ok(Value::Null)
}

async fn check(
    conf: &NetConf,
    env: &Env,
    nl: &Netlink,
    host_veth: &str,
    (pod_ns, pod_name): (&str, &str),
) -> Result<Value, CniError> {
    let mut ipam = Ipam::connect(&conf.socket(), timeout(conf)).await?;
    let held = ipam.check(key(conf, env)).await?;
    let Some(prev_ip) = conf.prev_pod_ip() else {
        return Err(CniError::new(Code::InvalidConfig, "CHECK needs prevResult with the pod's IP", ""));
    };
    if !held.found || held.ipv4_addr != prev_ip.to_string() {
        return Err(CniError::new(
            Code::CheckFailed,
            "ipamd does not hold this pod's allocation",
            format!("prevResult {prev_ip}, ipamd {:?}", held.found.then_some(&held.ipv4_addr)),
        ));
    }
    let spec = PodSpec {
        host_veth: host_veth.to_string(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone().expect("CHECK requires CNI_NETNS"),
        ip: prev_ip,
        table: held.route_table,
        mtu: conf.mtu.unwrap_or(if held.pod_mtu > 0 { held.pod_mtu } else { 9001 }),
        via_eni: via_eni(held.external_snat, &held.vpc_cidrs, &held.exclude_snat_cidrs),
        owner: owner(env, pod_ns, pod_name),
    };
    let wrong = wiring::check(nl, &spec)
        .await
        .map_err(|e| CniError::new(Code::Datapath, "datapath: CHECK could not read state", e.to_string()))?;
    if wrong.is_empty() {
        Ok(Value::Null)
    } else {
        Err(CniError::new(Code::CheckFailed, "pod networking differs from what ADD set up", wrong.join("; ")))
    }
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: CniError| CniError::new(Code::NotAvailable, "ipamd is not available", e.to_string());
    let mut ipam = Ipam::connect(&conf.socket(), timeout(conf)).await.map_err(unavailable)?;
    let s = ipam.status().await.map_err(unavailable)?;
    if !s.serving {
        return Err(CniError::new(
            Code::NotAvailable,
            "ipamd is not serving yet",
            "its first reconcile has not completed",
        ));
    }
    if s.free_ips == 0 && !s.can_grow {
        return Err(CniError::new(
            Code::NotAvailable,
            "no free IP and the node cannot attach more",
            "at its ENI/IP limit",
        ));
    }
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    // Without the list every allocation of the network would look stale: refuse rather than release all.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "GC needs cni.dev/valid-attachments",
            "the runtime must list live attachments",
        )
    })?;
    let mut ipam = Ipam::connect(&conf.socket(), timeout(conf)).await?;
    ipam.gc(pb::GcNetworksRequest {
        network_name: conf.name.clone(),
        valid: valid
            .into_iter()
            .map(|a| pb::AllocationKey {
                network_name: conf.name.clone(),
                container_id: a.container_id,
                if_name: a.ifname,
            })
            .collect(),
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod fuzz_tests;

//! Node SNAT: nftables table `ip vpc-cni`, applied through `nft -j -f -`. Pod traffic leaving the primary ENI
//! for a destination outside the VPC CIDRs and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS is SNATed to the node's
//! primary IP (port selection per AWS_VPC_K8S_CNI_RANDOMIZESNAT); with AWS_VPC_K8S_CNI_EXTERNALSNAT=true the
//! table holds no SNAT rule. Every apply deletes and re-creates the table in one nft transaction, so the
//! ruleset changes atomically (e.g. when the VPC gains a CIDR). Why the nft binary's JSON API and not raw
//! netlink: libnftables compiles the rules to the bytecode of the running kernel, the batch is one kernel
//! transaction, and the result reads back with `nft list table ip vpc-cni`. Every `nft` run has a timeout
//! ([`NFT_TIMEOUT`]); the loop that keeps the table in place is `reconcile::snat_keeper`.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::config::RandomizeSnat;

pub const TABLE: &str = "vpc-cni";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatConfig {
    pub primary_link: String,
    pub primary_ip: Ipv4Addr,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub excluded: Vec<Ipv4Net>,
    pub external: bool,
    pub randomize: RandomizeSnat,
    /// The connmark bit of NodePort connections (AWS_VPC_K8S_CNI_CONNMARK); `None` with
    /// AWS_VPC_CNI_NODE_PORT_SUPPORT=false: no marking, and no rule routing the marked replies.
    pub nodeport_mark: Option<u32>,
    /// AWS_EXTERNAL_SERVICE_CIDRS: not in the nft table but node-wide rules the same loop keeps in place
    /// (`datapath::ensure_external_service_rules`).
    pub external_service_cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error("nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft failed: {0}")]
    Rejected(String),
    #[error("nft did not finish within {0:?} (killed)")]
    TimedOut(Duration),
}

fn obj(kind: &str, mut body: Value) -> Value {
    body["family"] = json!("ip");
    body["table"] = json!(TABLE);
    json!({ "add": { kind: body } })
}

/// The whole table as one nft JSON batch (pure: unit-tested without nft).
pub fn ruleset(cfg: &SnatConfig) -> Value {
    let table = json!({ "table": { "family": "ip", "name": TABLE } });
    let mut cmds = vec![json!({ "add": table.clone() }), json!({ "delete": table.clone() }), json!({ "add": table })];
    let mut no_snat: Vec<Ipv4Net> = cfg.vpc_cidrs.iter().chain(&cfg.excluded).copied().collect();
    // Overlapping intervals are an error in an nft set: merge first.
    no_snat = Ipv4Net::aggregate(&no_snat);
    let elem: Vec<Value> = no_snat
        .iter()
        .map(|n| json!({ "prefix": { "addr": n.network().to_string(), "len": n.prefix_len() } }))
        .collect();
    cmds.push(obj("set", json!({ "name": "no_snat", "type": "ipv4_addr", "flags": ["interval"], "elem": elem })));
    cmds.push(obj(
        "chain",
        json!({ "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept" }),
    ));
    if let Some(mark) = cfg.nodeport_mark {
        nodeport(&mut cmds, &cfg.primary_link, mark);
    }
    if !cfg.external {
        let mut snat = json!({ "addr": cfg.primary_ip.to_string() });
        match cfg.randomize {
            RandomizeSnat::None => {}
            RandomizeSnat::Hashrandom => snat["flags"] = json!(["random"]),
            RandomizeSnat::Prng => snat["flags"] = json!(["fully-random"]),
        }
        let field = |f: &str| json!({ "payload": { "protocol": "ip", "field": f } });
        let expr = json!([
            { "match": { "op": "==", "left": { "meta": { "key": "oifname" } }, "right": cfg.primary_link } },
            { "match": { "op": "!=", "left": field("saddr"), "right": cfg.primary_ip.to_string() } },
            { "match": { "op": "!=", "left": field("daddr"), "right": "@no_snat" } },
            { "snat": snat },
        ]);
        cmds.push(obj("rule", json!({ "chain": "postrouting", "expr": expr })));
    }
    json!({ "nftables": cmds })
}

/// How long one `nft` run may take: a hung `nft` (a wedged kernel lock, a broken binary) is killed after it.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `nft args…` with `stdin`, killed after `timeout`; returns its stdout.
pub(crate) async fn nft(args: &[&str], stdin: Option<String>, timeout: Duration) -> Result<String, SnatError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(SnatError::Spawn)?;
    let run = async {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.map_err(SnatError::Spawn)?;
        }
        child.wait_with_output().await.map_err(SnatError::Spawn)
    };
    // On the timeout the future, and with it the child (kill_on_drop), is dropped.
    let out = tokio::time::timeout(timeout, run).await.map_err(|_| SnatError::TimedOut(timeout))??;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SnatError::Rejected(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Applies the ruleset in the current network namespace; returns the table as the kernel then holds it
/// ([`listing`]), to compare later rounds with.
pub async fn apply(cfg: &SnatConfig, timeout: Duration) -> Result<String, SnatError> {
    nft(&["-j", "-f", "-"], Some(ruleset(cfg).to_string()), timeout).await?;
    listing(timeout)
        .await?
        .ok_or_else(|| SnatError::Rejected(format!("table ip {TABLE} missing right after applying it")))
}

/// The table as the kernel holds it now (`nft list table ip vpc-cni`), `None` when there is none (a
/// `nft flush ruleset`, a firewall reload).
pub async fn listing(timeout: Duration) -> Result<Option<String>, SnatError> {
    match nft(&["list", "table", "ip", TABLE], None, timeout).await {
        Ok(text) => Ok(Some(text)),
        Err(SnatError::Rejected(e)) if e.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// NodePort / hostPort: connections entering the primary ENI for a local address get the connmark bit; the
/// pods' replies carry it back as a packet mark, which the `fwmark <mark>/<mark> lookup main` rule routes out of
/// the primary ENI even for pods on secondary ENIs (their own ENI would fail EC2's source check).
fn nodeport(cmds: &mut Vec<Value>, primary_link: &str, mark: u32) {
    cmds.push(obj(
        "chain",
        json!({ "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept" }),
    ));
    let iif =
        |op: &str| json!({ "match": { "op": op, "left": { "meta": { "key": "iifname" } }, "right": primary_link } });
    let ct_mark = json!({ "ct": { "key": "mark" } });
    cmds.push(obj(
        "rule",
        json!({ "chain": "prerouting", "expr": [
        iif("=="),
        { "match": { "op": "==", "left": { "fib": { "result": "type", "flags": ["daddr"] } }, "right": "local" } },
        { "mangle": { "key": ct_mark.clone(), "value": { "|": [ct_mark.clone(), mark] } } },
    ] }),
    ));
    cmds.push(obj(
        "rule",
        json!({ "chain": "prerouting", "expr": [
        iif("!="),
        { "match": { "op": "==", "left": { "&": [ct_mark.clone(), mark] }, "right": mark } },
        { "mangle": { "key": { "meta": { "key": "mark" } }, "value": { "|": [{ "meta": { "key": "mark" } }, mark] } } },
    ] }),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SnatConfig {
        SnatConfig {
            primary_link: "ens5".into(),
            primary_ip: "10.0.0.4".parse().unwrap(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            excluded: vec!["10.0.128.0/17".parse().unwrap(), "192.168.0.0/24".parse().unwrap()],
            external: false,
            randomize: RandomizeSnat::Prng,
            nodeport_mark: Some(0x80),
            external_service_cidrs: Vec::new(),
        }
    }

    /// AWS_VPC_K8S_CNI_CONNMARK's bit marks NodePort connections; AWS_VPC_CNI_NODE_PORT_SUPPORT=false marks none.
    #[test]
    fn nodeport_marking_follows_the_connmark_or_is_off() {
        let r = ruleset(&cfg()).to_string();
        assert!(r.contains(r#""prerouting""#) && r.contains(r#"[{"ct":{"key":"mark"}},128]"#), "{r}");
        let r = ruleset(&SnatConfig { nodeport_mark: Some(0x4000), ..cfg() }).to_string();
        assert!(r.contains(r#"[{"ct":{"key":"mark"}},16384]"#) && !r.contains(",128]"), "{r}");
        let r = ruleset(&SnatConfig { nodeport_mark: None, ..cfg() }).to_string();
        assert!(!r.contains("prerouting") && !r.contains(r#""ct""#), "{r}");
        assert!(r.contains(r#""snat":{"addr":"10.0.0.4""#), "SNAT stays: {r}");
    }

    #[test]
    fn snat_rule_targets_the_primary_ip_outside_the_vpc() {
        let r = ruleset(&cfg()).to_string();
        assert!(r.contains(r#""snat":{"addr":"10.0.0.4","flags":["fully-random"]}"#), "{r}");
        assert!(r.contains(r#""right":"ens5""#) && r.contains(r#""right":"@no_snat""#), "{r}");
        // 10.0.128.0/17 lies inside the VPC CIDR: merged away, no overlapping intervals.
        assert!(r.contains(r#"{"prefix":{"addr":"10.0.0.0","len":16}}"#) && !r.contains("10.0.128.0"), "{r}");
        assert!(r.contains("192.168.0.0"), "{r}");
        // Rebuilt atomically: the table is deleted and re-added in the same batch.
        assert!(r.find(r#""delete""#).unwrap() < r.rfind(r#"{"add":{"table""#).unwrap());
    }

    #[test]
    fn external_snat_and_randomisation_modes() {
        let r = ruleset(&SnatConfig { external: true, ..cfg() }).to_string();
        assert!(!r.contains("snat\":{"), "no SNAT rule with external SNAT: {r}");
        let r = ruleset(&SnatConfig { randomize: RandomizeSnat::Hashrandom, ..cfg() }).to_string();
        assert!(r.contains(r#""flags":["random"]"#), "{r}");
        let r = ruleset(&SnatConfig { randomize: RandomizeSnat::None, ..cfg() }).to_string();
        assert!(r.contains(r#""snat":{"addr":"10.0.0.4"}"#), "{r}");
    }
}

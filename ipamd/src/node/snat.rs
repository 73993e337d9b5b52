//! Node SNAT: nftables table `ip vpc-cni`, applied through `nft -j -f -`. Pod traffic leaving the primary ENI
//! for a destination outside the VPC CIDRs and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS is SNATed to the node's
//! primary IP (port selection per AWS_VPC_K8S_CNI_RANDOMIZESNAT); with AWS_VPC_K8S_CNI_EXTERNALSNAT=true the
//! table holds no SNAT rule. Every apply deletes and re-creates the table in one nft transaction, so the
//! ruleset changes atomically (e.g. when the VPC gains a CIDR). Why the nft binary's JSON API and not raw
//! netlink: libnftables compiles the rules to the bytecode of the running kernel, the batch is one kernel
//! transaction, and the result reads back with `nft list table ip vpc-cni`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

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
}

#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error("nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
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
    // NodePort / hostPort: connections entering the primary ENI for a local address get the connmark bit; the
    // pods' replies carry it back as a packet mark, which the `fwmark 0x80/0x80 lookup main` rule routes out of
    // the primary ENI even for pods on secondary ENIs (their own ENI would fail EC2's source check).
    cmds.push(obj(
        "chain",
        json!({ "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept" }),
    ));
    let iif = |op: &str| json!({ "match": { "op": op, "left": { "meta": { "key": "iifname" } }, "right": cfg.primary_link } });
    let ct_mark = json!({ "ct": { "key": "mark" } });
    let mark = datapath::NODEPORT_MARK;
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

/// Applies the ruleset in the current network namespace.
pub fn apply(cfg: &SnatConfig) -> Result<(), SnatError> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(SnatError::Spawn)?;
    child.stdin.take().expect("piped").write_all(ruleset(cfg).to_string().as_bytes()).map_err(SnatError::Spawn)?;
    let out = child.wait_with_output().map_err(SnatError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SnatError::Rejected(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
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
        }
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

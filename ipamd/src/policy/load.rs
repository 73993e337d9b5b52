//! Puts a compiled table in the kernel: as element changes when only pods changed ([`netpol::delta`]), as one
//! atomic replacement of `table inet vpc-cni-netpol` otherwise, and reads the table back to find drift.
//!
//! Transactions go through libnftables in-process ([`crate::node::libnft`]); where it cannot be loaded, through
//! a spawned `nft` (slower, same scripts). Everything here blocks: it runs on the blocking pool, one call at a
//! time, the [`Loader`] moved in and out by the policy task.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use netpol::{Compiled, Maps};

use crate::node::libnft::Libnft;

/// How a load went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The kernel already held it.
    Unchanged,
    /// Set and map elements added and deleted.
    Elements,
    /// The table replaced.
    Table,
}

/// What a load did, and whether flows allowed before may now be denied (then conntrack must be cut).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub how: How,
    pub narrows: bool,
}

enum Runner {
    /// Not tried yet: opened on first use, on the blocking thread, in ipamd's (the node's) namespace.
    Unopened,
    Lib(Libnft),
    Spawn,
    /// IPAMD_HOST_NETWORK=false: ipamd is not on a node it may change; tables are compiled, never loaded.
    Nothing,
}

/// What the kernel holds, as far as ipamd put it there.
pub struct Loaded {
    pub compiled: Compiled,
    pub maps: Maps,
    pub cluster: netpol::Cluster,
    /// This node's pods: "ns/name" → host interface.
    pub local: BTreeMap<String, String>,
}

pub struct Loader {
    runner: Runner,
    pub loaded: Option<Loaded>,
}

impl Loader {
    pub fn new(host_network: bool) -> Self {
        Self { runner: if host_network { Runner::Unopened } else { Runner::Nothing }, loaded: None }
    }

    /// Puts `compiled` in place (this node's pods' interfaces in `local`).
    pub fn load(
        &mut self,
        compiled: Compiled,
        cluster: netpol::Cluster,
        local: BTreeMap<String, String>,
    ) -> Result<Outcome, String> {
        let veth_of = |k: &str| local.get(k).cloned();
        let maps = Maps::of(&compiled, &veth_of);
        let outcome = self.put(&compiled, &maps, &veth_of)?;
        self.loaded = Some(Loaded { compiled, maps, cluster, local });
        Ok(outcome)
    }

    /// The ADD path: this node's ADDs gave pods `changes` ((key, address)) and nothing else changed since the last
    /// load, so only the sets holding those pods change ([`Compiled::readdressed`]), without compiling the whole
    /// cluster again. None when nothing is loaded or one of them is not a pod of the loaded cluster (the API
    /// server has not shown it yet): then the whole view is compiled.
    pub fn readdress(&mut self, changes: &[(String, Ipv4Addr)], veth_prefix: &str) -> Option<Result<Outcome, String>> {
        let l = self.loaded.as_mut()?;
        let index: Vec<usize> = changes
            .iter()
            .map(|(key, _)| l.cluster.pods.iter().position(|p| p.key() == *key))
            .collect::<Option<_>>()?;
        let before: Vec<Option<Ipv4Addr>> = index.iter().map(|&i| l.cluster.pods[i].ip).collect();
        let mut next: Option<Compiled> = None;
        for (&i, (key, ip)) in index.iter().zip(changes) {
            l.cluster.pods[i].ip = Some(*ip);
            next = next.as_ref().unwrap_or(&l.compiled).readdressed(&l.cluster, key);
        }
        let next = next.expect("the pods are in the cluster");
        let mut local = l.local.clone();
        for (key, _) in changes {
            if let Some((ns, name)) = key.split_once('/') {
                local.insert(key.clone(), datapath::podnet::host_veth_name(veth_prefix, ns, name));
            }
        }
        let veth_of = |k: &str| local.get(k).cloned();
        let maps = Maps::of(&next, &veth_of);
        let outcome = self.put(&next, &maps, &veth_of);
        let l = self.loaded.as_mut().expect("still loaded");
        match &outcome {
            Ok(_) => (l.compiled, l.maps, l.local) = (next, maps, local),
            // The kernel holds what it held: so must the record of it.
            Err(_) => index.iter().zip(before).for_each(|(&i, ip)| l.cluster.pods[i].ip = ip),
        }
        Some(outcome)
    }

    /// Changes the kernel from what is loaded to `compiled` with `maps`: element changes when only elements
    /// differ, else (or when the kernel refuses them) a replacement of the table.
    fn put(
        &mut self,
        compiled: &Compiled,
        maps: &Maps,
        veth_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Outcome, String> {
        let change = self.loaded.as_ref().and_then(|l| netpol::delta(&l.compiled, &l.maps, compiled, maps));
        match change {
            Some(d) if d.script.is_empty() => return Ok(Outcome { how: How::Unchanged, narrows: false }),
            Some(d) => match self.run(&d.script) {
                Ok(_) => return Ok(Outcome { how: How::Elements, narrows: d.narrows }),
                // The kernel does not hold what ipamd thinks (someone changed the table): replace it.
                Err(e) => tracing::warn!("network policy: element change refused ({e}); replacing the table"),
            },
            None => {}
        }
        self.run(&netpol::render(compiled, veth_of))?;
        Ok(Outcome { how: How::Table, narrows: true })
    }

    /// What differs between the table in the kernel and the one last loaded (empty: none, or nothing loaded).
    pub fn drift(&mut self) -> Result<Vec<String>, String> {
        let command = format!("list table inet {}", netpol::TABLE);
        let listing = match &mut self.runner {
            Runner::Nothing => return Ok(Vec::new()),
            _ if self.loaded.is_none() => return Ok(Vec::new()),
            Runner::Lib(nft) => nft.list_json(&command).map_err(|e| e.to_string()),
            Runner::Unopened | Runner::Spawn => spawn_nft(&["-j", "list", "table", "inet", netpol::TABLE], None),
        };
        let loaded = self.loaded.as_ref().expect("checked");
        match listing {
            Ok(json) => Ok(super::readback::drift(&json, &loaded.compiled, &loaded.maps)),
            Err(e) => Ok(vec![format!("the table cannot be listed: {e}")]),
        }
    }

    /// Forgets what was loaded: the next load replaces the table.
    pub fn forget(&mut self) {
        self.loaded = None;
    }

    /// Which way transactions go, for the log.
    pub fn runner(&self) -> &'static str {
        match self.runner {
            Runner::Unopened => "not opened yet",
            Runner::Lib(_) => "libnftables in-process",
            Runner::Spawn => "spawned nft",
            Runner::Nothing => "none (IPAMD_HOST_NETWORK=false)",
        }
    }

    fn run(&mut self, script: &str) -> Result<(), String> {
        if let Runner::Unopened = self.runner {
            self.runner = match Libnft::open() {
                Ok(nft) => Runner::Lib(nft),
                Err(e) => {
                    tracing::warn!("network policy: {e}; spawning nft for each change (slower ADDs)");
                    Runner::Spawn
                }
            };
            tracing::info!("network policy: nft transactions through {}", self.runner());
        }
        match &mut self.runner {
            Runner::Lib(nft) => nft.run(script).map(drop).map_err(|e| e.to_string()),
            Runner::Spawn => spawn_nft(&["-f", "-"], Some(script)).map(drop),
            Runner::Nothing | Runner::Unopened => Ok(()),
        }
    }
}

fn spawn_nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

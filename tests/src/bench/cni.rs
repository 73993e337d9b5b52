//! The plugin side of `vpc-bench`: ADD/DEL cycles and concurrent bursts on one sim node, for vpc-cni and for
//! the reference chains, driven like containerd drives CNI on a node: the runtime makes the pod's namespace,
//! spawns each plugin of the conflist from a thread in the node's namespace (no `ip netns exec` wrapper), DELs
//! with the cached result and then deletes the namespace. Only the plugin calls are timed.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cni_exec::{Attachment, Chain};
use crate::netns;

/// One chain under test: what it is called in the report, its conflist, the interface name it gets.
#[derive(Debug, Clone)]
pub struct Subject {
    pub label: &'static str,
    pub chain: Chain,
    pub ifname: &'static str,
}

/// vpc-cni as the node runs it (the node's conflist), the reference ptp + host-local chain (Debian's
/// containernetworking-plugins; host-local keeps its leases under `work`), and the loopback plugin alone: the
/// fixed cost of a runtime spawning a plugin that does almost nothing.
pub fn subjects(mut node_conflist: Value, work: &Path) -> [Subject; 3] {
    // Debug level: the plugin logs its phase timings (a line per command; see `phases`).
    node_conflist["plugins"][0]["logLevel"] = "debug".into();
    let ptp = json!({
        "cniVersion": "1.0.0",
        "name": "bench-ptp",
        "plugins": [{
            "type": "ptp",
            "mtu": 9001,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.250.0.0/16" }]],
                "dataDir": work.join("host-local"),
            },
        }],
    });
    let lo = json!({ "cniVersion": "1.0.0", "name": "bench-lo", "plugins": [{ "type": "loopback" }] });
    [
        Subject { label: "vpc-cni", chain: Chain { list: node_conflist }, ifname: "eth0" },
        Subject { label: "ptp+host-local", chain: Chain { list: ptp }, ifname: "eth0" },
        Subject { label: "loopback", chain: Chain { list: lo }, ifname: "lo" },
    ]
}

/// A pod sandbox: its namespace (made by the "runtime", untimed) and the attachment plugins see.
struct Sandbox {
    ns: String,
    at: Attachment,
}

impl Sandbox {
    fn create(prefix: &str, s: &Subject, i: usize) -> Result<Self, String> {
        let tag: String = s.label.chars().filter(char::is_ascii_alphanumeric).take(4).collect();
        let ns = format!("{prefix}-b{tag}{i}");
        netns::create(&ns).map_err(|e| e.to_string())?;
        let at = Attachment {
            container_id: format!("bench{tag}{i:06}{}", rand::random::<u32>()),
            netns: netns::path(&ns),
            ifname: s.ifname.into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={tag}-{i}"),
        };
        Ok(Self { ns, at })
    }

    fn delete(&self) {
        let _ = netns::delete(&self.ns);
    }
}

/// Per-operation wall times of one subject.
#[derive(Debug, Clone, Default)]
pub struct Times {
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
    pub pair: Vec<Duration>,
}

/// `n` rounds of ADD then DEL on a fresh sandbox for each subject in turn (interleaved, so every subject runs
/// under the same conditions), one at a time, from one thread in the node's namespace.
pub fn cycles(node_ns: &str, prefix: &str, subjects: &[Subject], n: usize) -> Result<Vec<Times>, String> {
    let run = || {
        let mut times = vec![Times::default(); subjects.len()];
        for i in 0..n {
            for (s, t) in subjects.iter().zip(times.iter_mut()) {
                let sb = Sandbox::create(prefix, s, i)?;
                let t0 = Instant::now();
                let r = s.chain.add(&sb.at);
                let t1 = Instant::now();
                let d = r.as_ref().map_err(Clone::clone).and_then(|r| s.chain.del(&sb.at, Some(r)));
                let t2 = Instant::now();
                sb.delete();
                r?;
                d?;
                t.add.push(t1 - t0);
                t.del.push(t2 - t1);
                t.pair.push(t2 - t0);
            }
        }
        Ok(times)
    };
    netns::in_netns(node_ns, || Ok(run())).map_err(|e| e.to_string())?
}

/// A burst: `n` pods ADDed at once, then DELed at once.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub add: Vec<Duration>,
    pub add_wall: Duration,
    pub del: Vec<Duration>,
    pub del_wall: Duration,
}

/// `n` concurrent ADDs (one thread each, all released together), then `n` concurrent DELs. `between` runs
/// while all `n` pods are up (the bench reads ipamd's memory then).
pub fn burst(node_ns: &str, prefix: &str, s: &Subject, n: usize, between: impl FnOnce()) -> Result<Burst, String> {
    let sandboxes: Vec<Sandbox> = (0..n).map(|i| Sandbox::create(prefix, s, 100_000 + i)).collect::<Result<_, _>>()?;
    let all_at_once = |op: &(dyn Fn(&Sandbox) -> Result<(), String> + Sync)| {
        let start = Barrier::new(n + 1);
        let (results, wall) = std::thread::scope(|scope| {
            let handles: Vec<_> = sandboxes
                .iter()
                .map(|sb| {
                    let start = &start;
                    scope.spawn(move || {
                        netns::in_netns(node_ns, || {
                            start.wait();
                            let t0 = Instant::now();
                            let r = op(sb);
                            Ok(r.map(|()| t0.elapsed()))
                        })
                        .map_err(|e| e.to_string())?
                    })
                })
                .collect();
            start.wait();
            let t0 = Instant::now();
            let results: Vec<Result<Duration, String>> =
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect();
            (results, t0.elapsed())
        });
        results.into_iter().collect::<Result<Vec<_>, _>>().map(|d| (d, wall))
    };
    let results = std::sync::Mutex::new(std::collections::HashMap::new());
    let added = all_at_once(&|sb| {
        let r = s.chain.add(&sb.at)?;
        results.lock().expect("lock").insert(sb.ns.clone(), r);
        Ok(())
    });
    let out = match added {
        Ok((add, add_wall)) => {
            between();
            let results = results.into_inner().expect("lock");
            all_at_once(&|sb| s.chain.del(&sb.at, results.get(&sb.ns))).map(|(del, del_wall)| Burst {
                add,
                add_wall,
                del,
                del_wall,
            })
        }
        Err(e) => Err(e),
    };
    for sb in &sandboxes {
        sb.delete();
    }
    out
}

/// Median wall time of each phase the plugin logged (`phases: ipamd 0.61ms, veth 1.20ms, …, total 2.3ms`),
/// per command, from the plugin's log.
pub fn phases(log: &str) -> Vec<(String, Vec<(String, f64)>)> {
    let mut per: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    let mut order: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        let Some((head, tail)) = line.split_once(" phases: ") else { continue };
        let cmd = head.split_whitespace().nth(2).unwrap_or("?").to_uppercase();
        for part in tail.split(", ") {
            let Some((name, v)) = part.trim_end_matches(',').rsplit_once(' ') else { continue };
            let Ok(ms) = v.trim_end_matches("ms").parse::<f64>() else { continue };
            let k = (cmd.clone(), name.to_string());
            if !order.contains(&k) {
                order.push(k.clone());
            }
            per.entry(k).or_default().push(ms);
        }
    }
    let mut out: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for k in order {
        let mut v = per.remove(&k).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        let p50 = v.get(v.len() / 2).copied().unwrap_or(0.0);
        match out.iter_mut().find(|(c, _)| *c == k.0) {
            Some((_, list)) => list.push((k.1, p50)),
            None => out.push((k.0, vec![(k.1, p50)])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn phase_lines_are_summed_up_per_command() {
        let log = "1.0 DEBUG Add ns/a 123 phases: ipamd 1.00ms, veth 2.00ms, total 3.00ms\n\
                   1.1 INFO Add ns/a 123 ok\n\
                   1.2 DEBUG Add ns/b 124 phases: ipamd 3.00ms, veth 4.00ms, total 7.00ms\n\
                   1.3 DEBUG Add ns/c 125 phases: ipamd 2.00ms, veth 9.00ms, total 11.00ms\n\
                   1.4 DEBUG Del ns/a 123 phases: ipamd 0.50ms, total 0.70ms\n";
        let p = super::phases(log);
        assert_eq!(p[0].0, "ADD");
        assert_eq!(p[0].1, vec![("ipamd".into(), 2.0), ("veth".into(), 4.0), ("total".into(), 7.0)]);
        assert_eq!(p[1], ("DEL".into(), vec![("ipamd".into(), 0.5), ("total".into(), 0.7)]));
    }
}

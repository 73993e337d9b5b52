//! `vpc-bench` (`make bench`): pod start speed of vpc-cni side by side with the reference plugins on the same
//! sim node in one run, ipamd's throughput, memory and EC2 economy, and the plugin's size. Figures only: the
//! goals are printed as met or not, never asserted in tests (`make test` runs a smoke of it).

pub mod cni;
pub mod daemon;

use std::fmt::Write;
use std::time::Duration;

use crate::sim::pods::percentiles;

/// p50 and p99 in milliseconds.
pub fn p50_p99(d: &[Duration]) -> (f64, f64) {
    let (p50, p99, _) = percentiles(d.to_vec());
    (p50, p99)
}

/// The plugin binary's size and its dependency tree (`cargo tree -p cni-shim -e normal`: distinct crates, and
/// how many are aws-*), when cargo and the workspace are at hand.
#[derive(Debug, Clone, Default)]
pub struct PluginFootprint {
    pub binary: String,
    pub bytes: u64,
    pub crates: Option<(usize, usize)>,
}

pub fn plugin_footprint() -> PluginFootprint {
    let bin = crate::ipamd_proc::sibling_binary("vpc-cni");
    let bytes = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(std::path::Path::to_path_buf);
    let crates = workspace.and_then(|ws| {
        let out = std::process::Command::new("cargo")
            .args(["tree", "-p", "cni-shim", "-e", "normal", "--prefix", "none", "--no-dedupe", "--offline"])
            .current_dir(ws)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let lines: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        let aws = lines.iter().filter(|l| l.starts_with("aws-")).count();
        Some((lines.len(), aws))
    });
    PluginFootprint { binary: bin.display().to_string(), bytes, crates }
}

/// The machine the figures come from.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}, {profile} build", kernel.trim())
}

/// ipamd's resident memory (VmRSS) in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Where the durable gRPC pairs are measured: tmpfs (as /var/run/aws-node on a node) and this machine's disk.
pub const PAIR_PLACES: [&str; 2] = ["tmpfs", "this machine's disk"];

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub machine: String,
    pub footprint: PluginFootprint,
    pub cycles: Vec<(&'static str, cni::Times)>,
    /// vpc-cni's own phase timings during the cycles (p50 per phase, per command).
    pub phases: Vec<(String, Vec<(String, f64)>)>,
    pub bursts: Vec<(&'static str, usize, cni::Burst)>,
    pub rss_mib: Option<(usize, f64)>,
    /// gRPC pairs with the checkpoint on tmpfs (as /var/run/aws-node on a node) and on this machine's disk.
    pub pairs: Vec<(&'static str, daemon::Pairs)>,
    pub economy: Option<daemon::Economy>,
    /// vpc-cni's burst of the biggest size again, with ipamd's `/metrics` scraped meanwhile: (scrapes per
    /// second achieved, the burst).
    pub scraped: Option<(f64, cni::Burst)>,
    pub errors: Vec<String>,
}

/// Scrapes `http://127.0.0.1:<port>/metrics` from inside the network namespace at `netns`, `per_sec` times a
/// second (each on a new connection, as Prometheus after an idle close), until `stop`; returns the scrapes that
/// got a 200.
pub fn scrape(
    netns: &std::path::Path,
    port: u16,
    per_sec: f64,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<u64> {
    use std::io::{Read, Write};
    datapath::in_netns(netns, || {
        let every = Duration::from_secs_f64(1.0 / per_sec);
        let mut next = std::time::Instant::now();
        let mut ok = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
                let mut body = String::new();
                if c.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.1 200") {
                    ok += 1;
                }
            }
            next += every;
            std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        }
        Ok(ok)
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The goals of a report and whether each was met; one whose input is missing counts as not met.
#[derive(Default)]
struct Goals(Vec<(String, Option<bool>)>);

impl Goals {
    fn measured(&mut self, o: &mut String, text: String, met: bool) {
        let _ = writeln!(o, "{text} — {}", verdict(met));
        self.0.push((text, Some(met)));
    }

    /// A goal whose input this run did not produce: said, not left out.
    fn missing(&mut self, o: &mut String, goal: &str, why: &str) {
        let _ = writeln!(o, "\ngoal {goal}: NOT measured ({why}) — counts as not met");
        self.0.push((goal.to_string(), None));
    }

    fn summary(&self, o: &mut String) {
        let met = self.0.iter().filter(|(_, m)| *m == Some(true)).count();
        let unmeasured = self.0.iter().filter(|(_, m)| m.is_none()).count();
        let _ = writeln!(o, "\ngoals met: {met} of {} ({unmeasured} not measured)", self.0.len());
    }
}

impl Report {
    fn cycle(&self, label: &str) -> Option<&cni::Times> {
        self.cycles.iter().find(|(l, _)| *l == label).map(|(_, t)| t)
    }

    /// The report as Markdown (what `make bench` prints and docs/benchmarks.md keeps).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut goals = Goals::default();
        let _ = writeln!(o, "machine: {}\n", self.machine);
        let f = &self.footprint;
        let crates = f.crates.map_or("cargo tree unavailable".into(), |(n, aws)| format!("{n} crates, {aws} aws-*"));
        let _ = writeln!(
            o,
            "plugin: `{}` {:.2} MiB; `cargo tree -p cni-shim -e normal`: {crates}\n",
            f.binary,
            f.bytes as f64 / 1048576.0
        );
        if let Some((_, t)) = self.cycles.first() {
            let _ = writeln!(
                o,
                "ADD then DEL on a fresh sandbox, one at a time, {} cycles per chain, interleaved (ms):\n",
                t.add.len()
            );
            let _ = writeln!(o, "| chain | ADD p50 | ADD p99 | DEL p50 | DEL p99 | ADD+DEL p50 | ADD+DEL p99 |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|");
            for (label, t) in &self.cycles {
                let (a50, a99) = p50_p99(&t.add);
                let (d50, d99) = p50_p99(&t.del);
                let (p50, p99) = p50_p99(&t.pair);
                let _ = writeln!(o, "| {label} | {a50:.2} | {a99:.2} | {d50:.2} | {d99:.2} | {p50:.2} | {p99:.2} |");
            }
        }
        for (cmd, list) in &self.phases {
            let parts: Vec<String> = list.iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
            let _ = writeln!(o, "\nvpc-cni {cmd} phases inside the plugin, p50 ms: {}", parts.join(", "));
        }
        if let (Some(ours), Some(ptp), Some(base)) =
            (self.cycle("vpc-cni"), self.cycle("ptp+host-local"), self.cycle("loopback"))
        {
            let p = |t: &cni::Times| p50_p99(&t.pair).0;
            let (a, d) = (|t: &cni::Times| p50_p99(&t.add).0, |t: &cni::Times| p50_p99(&t.del).0);
            let ratio = p(ours) / p(ptp);
            let above = (p(ours) - p(base)) / (p(ptp) - p(base));
            let _ = writeln!(
                o,
                "\nratios (ADD+DEL p50): vpc-cni / ptp = {ratio:.2}; (vpc-cni − loopback) / (ptp − loopback) = {above:.2}"
            );
            let _ = writeln!(
                o,
                "above the loopback baseline: vpc-cni ADD +{:.2} ms, DEL +{:.2} ms; ptp ADD +{:.2} ms, DEL +{:.2} ms",
                a(ours) - a(base),
                d(ours) - d(base),
                a(ptp) - a(base),
                d(ptp) - d(base)
            );
            goals.measured(&mut o, format!("\ngoal ADD+DEL p50 ≤ 0.5 × ptp: {ratio:.2} ×"), ratio <= 0.5);
            let (add, del) = (a(ours) - a(base), d(ours) - d(base));
            goals.measured(&mut o, format!("goal ADD p50 ≤ loopback + 3 ms: +{add:.2} ms"), add <= 3.0);
            goals.measured(&mut o, format!("goal DEL p50 ≤ loopback + 2 ms: +{del:.2} ms"), del <= 2.0);
        } else {
            let why = "no CNI cycles of vpc-cni, ptp+host-local and loopback";
            for goal in ["ADD+DEL p50 ≤ 0.5 × ptp", "ADD p50 ≤ loopback + 3 ms", "DEL p50 ≤ loopback + 2 ms"] {
                goals.missing(&mut o, goal, why);
            }
        }
        if !self.bursts.is_empty() {
            let _ = writeln!(o, "\nconcurrent bursts on one node, warm pool (ms):\n");
            let _ = writeln!(o, "| chain | pods | ADD p50 | ADD p99 | ADD wall | DEL p50 | DEL p99 | DEL wall |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
            for (label, n, b) in &self.bursts {
                let (a50, a99) = p50_p99(&b.add);
                let (d50, d99) = p50_p99(&b.del);
                let _ = writeln!(
                    o,
                    "| {label} | {n} | {a50:.1} | {a99:.1} | {:.1} | {d50:.1} | {d99:.1} | {:.1} |",
                    ms(b.add_wall),
                    ms(b.del_wall)
                );
            }
            let biggest = self.bursts.iter().map(|(_, n, _)| *n).max().unwrap_or(0);
            let p99 = |label: &str| {
                self.bursts.iter().find(|(l, n, _)| *l == label && *n == biggest).map(|(_, _, b)| p50_p99(&b.add).1)
            };
            if let (Some(ours), Some(ptp)) = (p99("vpc-cni"), p99("ptp+host-local")) {
                goals.measured(
                    &mut o,
                    format!(
                        "\ngoal {biggest} concurrent ADDs p99 ≤ 500 ms and below ptp's ({ptp:.1} ms): {ours:.1} ms"
                    ),
                    ours <= 500.0 && ours < ptp,
                );
            }
        }
        let quiet = self.bursts.iter().filter(|(l, _, _)| *l == "vpc-cni").max_by_key(|(_, n, _)| *n);
        match (&self.scraped, quiet) {
            (Some((rate, busy)), Some((_, n, quiet))) => {
                let (was, now) = (p50_p99(&quiet.add).1, p50_p99(&busy.add).1);
                goals.measured(
                    &mut o,
                    format!(
                        "goal {n} concurrent ADDs p99 with /metrics scraped {rate:.0}/s ≤ 1.25 × without (+2 ms): {now:.1} ms, without {was:.1} ms"
                    ),
                    now <= was * 1.25 + 2.0,
                );
            }
            _ => goals.missing(&mut o, "ADD p99 unchanged by 50 /metrics scrapes/s", "no burst with scrapes"),
        }
        if !self.bursts.iter().any(|(l, n, _)| *l == "vpc-cni" && *n >= 100) {
            goals.missing(&mut o, "100 concurrent ADDs p99 ≤ 500 ms and below ptp's", "no burst of 100 pods");
        }
        match self.rss_mib {
            Some((n, mib)) => {
                goals.measured(&mut o, format!("\nipamd RSS with {n} pods: {mib:.1} MiB — goal ≤ 25 MiB"), mib <= 25.0)
            }
            None => goals.missing(&mut o, "ipamd RSS ≤ 25 MiB with 100 pods", "not read during the bursts"),
        }
        for place in PAIR_PLACES {
            match self.pairs.iter().find(|(p, _)| p == &place) {
                Some((_, p)) => goals.measured(
                    &mut o,
                    format!(
                        "ipamd AddNetwork+DelNetwork pairs over the socket, durable checkpoint on {place}: {:.0}/s ({} pairs, {} concurrent clients on {} connections, {:.1} s) — goal ≥ 10k/s",
                        p.per_sec(),
                        p.pairs,
                        p.clients,
                        p.connections,
                        p.secs
                    ),
                    p.per_sec() >= 10_000.0,
                ),
                None => {
                    let why = self.errors.iter().find(|e| e.contains(place)).map_or("not run", String::as_str);
                    goals.missing(&mut o, &format!("durable gRPC pairs on {place} ≥ 10k/s"), why);
                }
            }
        }
        if let Some(e) = &self.economy {
            let _ = writeln!(
                o,
                "ipamd start → SERVING: {:.2} s, {} EC2 requests; pool empty on a full ENI → an IP of a new ENI usable: {:.2} s, {} EC2 requests",
                e.start.as_secs_f64(),
                e.start_calls,
                e.refill.as_secs_f64(),
                e.refill_calls
            );
        }
        match f.crates {
            Some((n, aws)) => goals.measured(
                &mut o,
                format!("goal plugin ≤ 120 crates and no aws-*: {n} crates, {aws} aws-*"),
                n <= 120 && aws == 0,
            ),
            None => goals.missing(&mut o, "plugin ≤ 120 crates and no aws-*", "cargo tree unavailable"),
        }
        goals.summary(&mut o);
        for e in &self.errors {
            let _ = writeln!(o, "\nERROR: {e}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_without_its_input_is_said_to_be_unmeasured_and_counts_as_not_met() {
        let text = Report::default().render();
        for goal in [
            "ADD+DEL p50 ≤ 0.5 × ptp",
            "100 concurrent ADDs p99",
            "ipamd RSS ≤ 25 MiB",
            "durable gRPC pairs on tmpfs ≥ 10k/s",
            "durable gRPC pairs on this machine's disk ≥ 10k/s",
            "plugin ≤ 120 crates",
            "ADD p99 unchanged by 50 /metrics scrapes/s",
        ] {
            assert!(text.lines().any(|l| l.contains(goal) && l.contains("NOT measured")), "{goal}:\n{text}");
        }
        assert!(text.contains("goals met: 0 of 9 (9 not measured)"), "{text}");
        let with_error =
            Report { errors: vec!["gRPC pairs on tmpfs: /dev/shm: not found".into()], ..Report::default() };
        assert!(
            with_error.render().contains(
                "durable gRPC pairs on tmpfs ≥ 10k/s: NOT measured (gRPC pairs on tmpfs: /dev/shm: not found)"
            )
        );
    }
}

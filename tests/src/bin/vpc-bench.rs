//! `vpc-bench` (`make bench`): one run on one machine, printing Markdown — CNI ADD/DEL cycles and bursts for
//! vpc-cni, the reference ptp + host-local chain and the loopback baseline on the same sim node; ipamd's RSS
//! with the burst's pods up, gRPC pairs per second, EC2 requests and time to SERVING and to a new ENI; the
//! plugin's size and dependency count. Needs root, LocalStack and the workspace's binaries next to it.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use vpc_cni_proto::v1 as pb;
use vpc_sim::bench::{self, Report, cni};
use vpc_sim::testkit::SimProc;

#[derive(Parser)]
#[command(name = "vpc-bench", about = "Pod start speed and ipamd figures, side by side with the reference plugins")]
struct Args {
    /// ADD+DEL cycles per chain.
    #[arg(long, default_value_t = 200)]
    cycles: usize,
    /// Concurrent burst sizes.
    #[arg(long, value_delimiter = ',', default_value = "30,100")]
    bursts: Vec<usize>,
    /// Seconds of gRPC AddNetwork/DelNetwork pairs.
    #[arg(long, default_value_t = 5.0)]
    grpc_secs: f64,
    /// Concurrent gRPC clients.
    #[arg(long, default_value_t = 64)]
    grpc_clients: usize,
    /// A quick pass over every measurement (a few cycles, a burst of 3) so `make test` keeps the bench working.
    #[arg(long)]
    smoke: bool,
    /// Which parts to run: cni (cycles, bursts, RSS), grpc (pairs per second), ec2 (start and refill).
    #[arg(long, value_delimiter = ',', default_value = "cni,grpc,ec2")]
    parts: Vec<String>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

async fn status(socket: &Path) -> Option<pb::GetStatusReply> {
    let ch = vpc_cni_proto::uds::connect(socket, Some(Duration::from_secs(2))).await.ok()?;
    let mut c = pb::introspection_client::IntrospectionClient::new(ch);
    Some(c.get_status(pb::GetStatusRequest {}).await.ok()?.into_inner())
}

/// A directory on tmpfs, where a node keeps ipamd's checkpoint (/var/run/aws-node is on tmpfs on EKS nodes).
fn tmpfs_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new().prefix("vpc-bench-").tempdir_in("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))
}

/// The CNI part on a fresh one-node sim (c5.4xlarge: 8 ENIs × 29 secondary IPs, pre-warmed for the biggest
/// burst). Released IPs rest 1 s instead of 30: the cycles reuse IPs faster than the cooldown would allow, and
/// the cooldown is not what is measured.
async fn cni_part(args: &Args, report: &mut Report) -> Result<(), String> {
    let biggest = args.bursts.iter().copied().max().unwrap_or(0);
    let min = format!("MINIMUM_IP_TARGET={}", biggest + 10);
    let state = tmpfs_dir()?;
    let state_env = format!("IPAMD_STATE_DIR={}", state.path().display());
    let sim =
        SimProc::start_with("vb", 1, "c5.4xlarge", &[&min, "WARM_IP_TARGET=5", "IP_COOLDOWN_PERIOD=1", &state_env]);
    let socket = sim.state.path().join("node-0/ipamd.sock");
    let t0 = std::time::Instant::now();
    while status(&socket).await.is_none_or(|s| (s.free_ips as usize) < biggest + 5) {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("the warm pool did not reach {} free IPs", biggest + 5));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conf = std::fs::read(sim.state.path().join("node-0/10-vpc-cni.conflist")).map_err(|e| e.to_string())?;
    let conflist = serde_json::from_slice(&conf).map_err(|e| e.to_string())?;
    let work = sim.state.path().join("bench");
    let subjects = cni::subjects(conflist, &work);
    let (node, prefix) = (sim.node(0), sim.prefix.clone());
    let cycles = args.cycles;
    let subj = subjects.clone();
    let (n2, p2) = (node.clone(), prefix.clone());
    let times = tokio::task::spawn_blocking(move || cni::cycles(&n2, &p2, &subj, cycles))
        .await
        .map_err(|e| e.to_string())??;
    report.cycles = subjects.iter().map(|s| s.label).zip(times).collect();
    let log = subjects[0].chain.list["plugins"][0]["logFile"].as_str().map(std::fs::read_to_string);
    report.phases = cni::phases(&log.and_then(Result::ok).unwrap_or_default());
    let ipamd_pid = sim.record().pids[0];
    for &n in &args.bursts {
        for s in subjects.iter().take(2) {
            let (label, ours) = (s.label, s.label == "vpc-cni");
            let (s, node, prefix) = (s.clone(), node.clone(), prefix.clone());
            let (b, rss) = tokio::task::spawn_blocking(move || {
                let mut rss = None;
                let b = cni::burst(&node, &prefix, &s, n, || rss = ours.then(|| bench::rss_mib(ipamd_pid)).flatten());
                (b, rss)
            })
            .await
            .map_err(|e| e.to_string())?;
            let b = b.map_err(|e| format!("{label} burst of {n}: {e}"))?;
            if let Some(mib) = rss.filter(|_| n == biggest) {
                report.rss_mib = Some((n, mib));
            }
            report.bursts.push((label, n, b));
            // Let the released IPs come back (1 s cooldown) before the next burst.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    // The biggest burst once more, ipamd's /metrics scraped 50 times a second meanwhile (a scrape must not slow
    // an ADD).
    if let Some(s) = subjects.first().filter(|_| biggest > 0) {
        let (s, node, prefix) = (s.clone(), node.clone(), prefix.clone());
        let (b, scrapes, secs) = tokio::task::spawn_blocking(move || {
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                let t0 = std::time::Instant::now();
                let scraper = scope.spawn(|| bench::scrape(&vpc_sim::netns::path(&node), 61678, 50.0, &stop));
                // Scraping for a moment first: the burst starts among scrapes.
                std::thread::sleep(Duration::from_millis(500));
                let b = cni::burst(&node, &prefix, &s, biggest, || {});
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let scrapes = scraper
                    .join()
                    .map_err(|_| "scraper panicked".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                (b, scrapes, t0.elapsed().as_secs_f64())
            })
        })
        .await
        .map_err(|e| e.to_string())?;
        let b = b.map_err(|e| format!("vpc-cni burst of {biggest} with scrapes: {e}"))?;
        let scrapes = scrapes.map_err(|e| format!("scraping /metrics: {e}"))?;
        report.scraped = Some((scrapes as f64 / secs, b));
    }
    drop(sim.stop());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = Args::parse();
    if args.smoke {
        (args.cycles, args.bursts, args.grpc_secs) = (3, vec![3], 0.5);
    }
    let mut report = Report { machine: bench::machine(), footprint: bench::plugin_footprint(), ..Report::default() };
    eprintln!("vpc-bench: {}", report.machine);
    let part = |p: &str| args.parts.iter().any(|x| x == p);
    if part("cni") {
        if let Err(e) = cni_part(&args, &mut report).await {
            report.errors.push(e);
        }
        eprintln!("vpc-bench: CNI part done");
    }
    let [on_tmpfs, on_disk] = bench::PAIR_PLACES;
    if part("grpc") {
        // Without /dev/shm there is no tmpfs figure: it says so rather than measuring the disk under its name.
        match tmpfs_dir() {
            Ok(shm) => match bench::daemon::grpc_pairs(args.grpc_clients, args.grpc_secs, Some(shm.path())).await {
                Ok(p) => report.pairs.push((on_tmpfs, p)),
                Err(e) => report.errors.push(format!("gRPC pairs on {on_tmpfs}: {e}")),
            },
            Err(e) => report.errors.push(format!("gRPC pairs on {on_tmpfs}: {e}")),
        }
        match bench::daemon::grpc_pairs(args.grpc_clients, args.grpc_secs, None).await {
            Ok(p) => report.pairs.push((on_disk, p)),
            Err(e) => report.errors.push(format!("gRPC pairs on {on_disk}: {e}")),
        }
    }
    if part("ec2") {
        match bench::daemon::economy().await {
            Ok(e) => report.economy = Some(e),
            Err(e) => report.errors.push(format!("EC2 economy: {e}")),
        }
    }
    let text = report.render();
    println!("{text}");
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(out, &text)
    {
        eprintln!("vpc-bench: {}: {e}", out.display());
    }
    std::process::exit(if report.errors.is_empty() { 0 } else { 1 });
}

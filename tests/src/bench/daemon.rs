//! The ipamd side of `vpc-bench`, on a LocalStack node of its own (`fixture::NodeFixture`: IMDS emulator, ipamd
//! process, no namespace): AddNetwork/DelNetwork pairs per second over the Unix socket with the durable
//! checkpoint, and the EC2 economy of a start (ipamd start → SERVING) and of a refill (pool empty on a full ENI
//! → an IP of a new ENI usable), in wall time and EC2 requests.

use std::time::{Duration, Instant};

use vpc_cni_proto::v1 as pb;

use crate::fixture::{self, NodeFixture};

/// AddNetwork + DelNetwork pairs completed by `clients` concurrent clients in `secs`, over `CONNECTIONS`
/// HTTP/2 connections (clients share them as streams, as many plugin calls would if they were one process).
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    pub clients: usize,
    pub connections: usize,
    pub pairs: u64,
    pub secs: f64,
}

impl Pairs {
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 { self.pairs as f64 / self.secs } else { 0.0 }
    }
}

/// `state_dir`: where ipamd keeps its checkpoint (the fixture's directory when `None`).
/// HTTP/2 connections the gRPC clients share.
pub const CONNECTIONS: usize = 8;

pub async fn grpc_pairs(clients: usize, secs: f64, state_dir: Option<&std::path::Path>) -> Result<Pairs, String> {
    let node = NodeFixture::new("bgrpc", "c5.4xlarge").await;
    // Each client cycles one key: with no cooldown its IP is free again at once, so the pool never runs dry
    // and every pair is two checkpoint changes.
    let min = (clients + 2).to_string();
    let state = state_dir.map_or_else(|| node.dir.path().display().to_string(), |d| d.display().to_string());
    let mut ipamd = node.spawn_ipamd(&[
        ("MINIMUM_IP_TARGET", min.as_str()),
        ("IP_COOLDOWN_PERIOD", "0"),
        ("IPAMD_STATE_DIR", state.as_str()),
    ]);
    let out = async {
        ipamd.wait_serving(Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
        fixture::eventually(Duration::from_secs(30), "warm pool for the clients", || async {
            fixture::try_status(&ipamd).await.filter(|s| s.free_ips as usize >= clients)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS.min(clients) {
            conns.push(ipamd.ipam().await);
        }
        for c in 0..clients {
            let mut ipam = conns[c % conns.len()].clone();
            tasks.push(tokio::spawn(async move {
                let key = fixture::key(&format!("bench-grpc-{c}"));
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let add = pb::AddNetworkRequest {
                        key: Some(key.clone()),
                        k8s_pod_namespace: "bench".into(),
                        k8s_pod_name: format!("grpc-{c}"),
                        ..Default::default()
                    };
                    ipam.add_network(add).await.map_err(|s| format!("AddNetwork: {s}"))?;
                    ipam.del_network(pb::DelNetworkRequest { key: Some(key.clone()) })
                        .await
                        .map_err(|s| format!("DelNetwork: {s}"))?;
                    n += 1;
                }
                Ok::<u64, String>(n)
            }));
        }
        let mut pairs = 0;
        for t in tasks {
            pairs += t.await.map_err(|e| e.to_string())??;
        }
        Ok(Pairs { clients, connections: conns.len(), pairs, secs: start.elapsed().as_secs_f64() })
    }
    .await;
    ipamd.terminate().await;
    node.cleanup().await;
    out
}

/// EC2 requests ipamd made so far (every attempt), from its metrics.
async fn ec2_requests(port: u16) -> f64 {
    let text = fixture::http_get(port, "/metrics").await.unwrap_or_default();
    fixture::ec2_requests_by_op(&text).values().sum()
}

#[derive(Debug, Clone, Default)]
pub struct Economy {
    pub start: Duration,
    pub start_calls: f64,
    pub refill: Duration,
    pub refill_calls: f64,
}

/// A t3.medium node (3 ENIs of 5 secondary IPs) with WARM_IP_TARGET=1: pods are added until the primary ENI is
/// full and no IP is free; then the time until an IP of a new ENI is usable (created, attached, seen in IMDS).
pub async fn economy() -> Result<Economy, String> {
    let node = NodeFixture::new("bec2", "t3.medium").await;
    let port = fixture::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut ipamd = node.spawn_ipamd(&[
        ("METRICS_BIND_ADDR", metrics.as_str()),
        ("WARM_IP_TARGET", "1"),
        ("WARM_ENI_TARGET", "0"),
        ("IP_COOLDOWN_PERIOD", "0"),
    ]);
    let out = async {
        let start = ipamd.wait_serving(Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
        let start_calls = ec2_requests(port).await;
        for i in 0..32 {
            // From the ADD that takes the last free IP of a full ENI: ipamd starts the new ENI as that ADD's
            // kick reaches the reconciler, possibly before the reply is read.
            let (t0, calls0) = (Instant::now(), ec2_requests(port).await);
            fixture::add_retrying(&ipamd, &format!("bench-ec2-{i}"), Duration::from_secs(60))
                .await
                .map_err(|s| format!("AddNetwork: {s}"))?;
            let st = fixture::try_status(&ipamd).await.ok_or("no status")?;
            if st.enis == 1 && st.free_ips == 0 && st.total_ips + 1 >= st.ips_per_eni {
                loop {
                    let st = fixture::try_status(&ipamd).await.ok_or("no status")?;
                    if st.free_ips > 0 {
                        let refill = t0.elapsed();
                        let refill_calls = ec2_requests(port).await - calls0;
                        return Ok(Economy { start, start_calls, refill, refill_calls });
                    }
                    if t0.elapsed() > Duration::from_secs(60) {
                        return Err("no new ENI usable within 60 s".into());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Err("the primary ENI never filled up".into())
    }
    .await;
    ipamd.terminate().await;
    node.cleanup().await;
    out
}

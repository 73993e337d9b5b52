//! The metrics listener's bounds (a port anyone on the node can reach) and a scrape that never waits on the pool
//! actor.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::planner::Limits;
use crate::state::checkpoint::{Checkpoint, Store};
use crate::state::datastore::{AllocKey, ObservedEni};

async fn listen(bounds: Bounds) -> SocketAddr {
    let app = Router::new().route("/metrics", get(|| async { "ok" }));
    let (addr, fut) = serve_bounded("127.0.0.1:0".parse().unwrap(), app, bounds).await.unwrap();
    tokio::spawn(fut);
    addr
}

/// Whether the server closes `c` (EOF or reset) within `within`.
async fn closed(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, c.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

async fn get_metrics(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_rest_still_served() {
    let addr = listen(Bounds { connections: 2, idle: Duration::from_secs(60), age: Duration::from_secs(60) }).await;
    let mut held = vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut third, Duration::from_secs(5)).await, "a third connection is closed at once");
    assert!(!closed(&mut held[0], Duration::from_millis(200)).await, "the two within the cap stay open");
    held.pop();
    // A slot is free again once its connection ends (the server sees the close).
    let mut body = String::new();
    for _ in 0..50 {
        body = get_metrics(addr).await;
        if body.ends_with("ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200") && body.ends_with("ok"), "{body}");
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let addr = listen(Bounds { connections: 4, idle: Duration::from_millis(300), age: Duration::from_secs(60) }).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut silent, Duration::from_secs(5)).await, "a connection that never sends a request");
    // Half a request line, then nothing: closed as well.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    assert!(closed(&mut slow, Duration::from_secs(5)).await, "a connection that stops mid-request");
}

#[tokio::test]
async fn a_scrape_reads_what_the_pool_published_without_asking_the_actor() {
    let dir = tempfile::tempdir().unwrap();
    let settings = crate::pool::tests::settings();
    let pool = crate::pool::spawn_unsupervised(settings, Store::new(dir.path()), Checkpoint::default());
    let eni = ObservedEni::test_eni(&["10.0.1.10", "10.0.1.11"]);
    pool.observe(vec![eni], Limits { max_enis: 3, ips_per_eni: 9, vcpus: 2 }, 0).await.unwrap();
    pool.reconciled(None).await.unwrap();
    let key = AllocKey { network_name: "aws-cni".into(), container_id: "c1".into(), if_name: "eth0".into() };
    pool.add(key, "default".into(), "web".into(), String::new()).await.unwrap();
    // The actor is gone (it would answer a snapshot command with an error): the scrape does not ask it.
    pool.stop().await.unwrap();
    let (addr, fut) =
        serve("127.0.0.1:0".parse().unwrap(), pool, Telemetry::default(), crate::k8s::Kube::disabled()).await.unwrap();
    tokio::spawn(fut);
    let body = get_metrics(addr).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for line in ["awscni_assigned_ip_addresses 1", "awscni_total_ip_addresses 2", "ipamd_serving 1"] {
        assert!(body.lines().any(|l| l == line), "`{line}` missing:\n{body}");
    }
}

//! One simulated node's namespace: loopback with the IMDS address, the IMDSv2 emulator listening inside it at
//! 169.254.169.254:80, and loopback services of the root namespace (LocalStack at 127.0.0.1:4566, the
//! Kubernetes API server with `--kube`) reachable at the same address inside it — all without touching the root
//! namespace (the listening sockets are opened inside the node namespace; the proxy dials from the sim, to the
//! service or to a stand-in: EC2 goes through the sim's prefix-delegating proxy).

use std::net::SocketAddr;
use std::path::Path;

use crate::imds::ImdsEmulator;
use crate::localstack;
use crate::netns::{self, NetnsError, ip_in, sysctl_in};
use crate::sim::fabric::Names;

pub const IMDS_ADDR: &str = "169.254.169.254";
/// With `--install-cni`, the node's CNI bin and conf directories inside its state dir (ipamd installs there).
pub const CNI_BIN: &str = "cni/bin";
pub const CNI_CONF: &str = "cni/net.d";

pub struct NodeRuntime {
    pub imds: ImdsEmulator,
    proxies: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        for p in &self.proxies {
            p.abort();
        }
    }
}

impl NodeRuntime {
    pub async fn start(
        names: &Names,
        i: usize,
        instance_id: &str,
        ec2: &aws_sdk_ec2::Client,
        upstreams: &[(String, String)],
    ) -> Result<Self, NetnsError> {
        let ns = names.node(i);
        netns::create(&ns)?;
        // Independent of whatever the root namespace's defaults are.
        sysctl_in(&ns, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl_in(&ns, "net.ipv4.conf.default.rp_filter", "1")?;
        ip_in(&ns, &["addr", "add", &format!("{IMDS_ADDR}/32"), "dev", "lo"])?;
        let imds_l = netns::listen_in(&ns, SocketAddr::new(IMDS_ADDR.parse().expect("ip"), 80))?;
        let imds_l = tokio::net::TcpListener::from_std(imds_l)
            .map_err(|e| NetnsError::Io { what: "IMDS listener".into(), source: e })?;
        let imds = ImdsEmulator::serve(imds_l, ec2.clone(), instance_id, localstack::REGION)
            .map_err(|e| NetnsError::Io { what: "IMDS emulator".into(), source: e })?;
        let mut proxies = Vec::new();
        for (listen, upstream) in upstreams {
            let addr: SocketAddr = listen.parse().map_err(|_| NetnsError::Io {
                what: listen.clone(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
            let l = netns::listen_in(&ns, addr)?;
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| NetnsError::Io { what: format!("listener {listen}"), source: e })?;
            proxies.push(tokio::spawn(proxy(l, upstream.clone())));
        }
        Ok(Self { imds, proxies })
    }
}

/// Forwards every connection accepted inside the node to the same address in the root namespace.
async fn proxy(listener: tokio::net::TcpListener, upstream: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The node's CNI network configuration, as a runtime would find it in /etc/cni/net.d: vpc-cni, and with `chain`
/// the reference portmap and bandwidth plugins after it, as aws-vpc-cni ships it.
pub fn write_conflist(dir: &Path, chain: bool) -> std::io::Result<()> {
    let mut conf = serde_json::json!({
        // 1.0.0: the newest version Debian's reference plugins (1.1.1) accept; vpc-cni speaks 1.1.0 too.
        "cniVersion": "1.0.0",
        "name": "aws-cni",
        "plugins": [{
            "type": "vpc-cni",
            "ipamdSocket": dir.join("ipamd.sock"),
            "mtu": 9001,
            "vethPrefix": "eni",
            "logFile": dir.join("plugin.log"),
            "logLevel": "debug",
        }, {
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
        }, {
            "type": "bandwidth",
            "capabilities": { "bandwidth": true },
        }],
    });
    if !chain {
        conf["plugins"].as_array_mut().expect("plugins").truncate(1);
    }
    std::fs::write(dir.join("10-vpc-cni.conflist"), serde_json::to_vec_pretty(&conf).expect("json"))
}

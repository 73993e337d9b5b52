//! One simulated node for ipamd integration tests: its own VPC and instance in LocalStack, an IMDS emulator on
//! loopback, and a private directory for ipamd's socket, checkpoint and log. No network namespace is touched.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Code, Status};
use vpc_cni_proto::v1 as pb;

use crate::ec2faults::Ec2FaultProxy;
use crate::imds::ImdsEmulator;
use crate::ipamd_proc::Ipamd;
use crate::localstack::{self, NodeEni, TestVpc};

pub struct NodeFixture {
    pub ec2: aws_sdk_ec2::Client,
    pub vpc: TestVpc,
    pub imds: ImdsEmulator,
    pub dir: tempfile::TempDir,
    /// With [`NodeFixture::behind_proxy`]: ipamd's and the IMDS emulator's EC2 (prefix delegation, faults).
    pub proxy: Option<Ec2FaultProxy>,
}

impl NodeFixture {
    pub async fn new(tag: &str, instance_type: &str) -> Self {
        Self::in_subnet(tag, instance_type, "10.0.0.0/20").await
    }

    /// As [`NodeFixture::new`] with the node's subnet given.
    pub async fn in_subnet(tag: &str, instance_type: &str, subnet: &str) -> Self {
        Self::build(tag, instance_type, subnet, None).await
    }

    /// As [`NodeFixture::new`], with ipamd and IMDS seeing EC2 through a fault proxy (which also delegates the
    /// prefixes LocalStack ignores, see [`crate::ec2prefix`]).
    pub async fn behind_proxy(tag: &str, instance_type: &str) -> Self {
        let proxy = Ec2FaultProxy::to_localstack().await.expect("EC2 proxy");
        Self::build(tag, instance_type, "10.0.0.0/20", Some(proxy)).await
    }

    async fn build(tag: &str, instance_type: &str, subnet: &str, proxy: Option<Ec2FaultProxy>) -> Self {
        let ec2 = localstack::ec2_client();
        let vpc = TestVpc::create(&ec2, tag, "10.0.0.0/16", &[subnet], instance_type, 1)
            .await
            .expect("LocalStack must be running (scripts/localstack.sh start)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind IMDS emulator");
        let seen = proxy.as_ref().map_or_else(|| ec2.clone(), |p| localstack::ec2_client_at(&p.endpoint));
        let imds = ImdsEmulator::serve(listener, seen, &vpc.instance_ids[0], localstack::REGION).expect("IMDS");
        let dir = tempfile::Builder::new().prefix("vpcsim-ipamd-").tempdir().expect("tempdir");
        Self { ec2, vpc, imds, dir, proxy }
    }

    pub fn instance_id(&self) -> &str {
        &self.vpc.instance_ids[0]
    }

    pub fn spawn_ipamd(&self, env: &[(&str, &str)]) -> Ipamd {
        let mut env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        if let Some(p) = &self.proxy {
            env.insert(0, ("AWS_ENDPOINT_URL_EC2", p.endpoint.clone()));
        }
        Ipamd::spawn(self.dir.path(), &self.imds.endpoint(), &env).expect("spawn ipamd")
    }

    /// Attaches a new ENI in the node's subnet at `device`, with `tags` and two secondary IPs, as a user or
    /// another tool would; returns its id and secondary IPs.
    pub async fn attach_eni(&self, device: i32, tags: &[(&str, &str)]) -> (String, Vec<String>) {
        let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface);
        for (k, v) in tags {
            spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        let created = self
            .ec2
            .create_network_interface()
            .subnet_id(&self.vpc.subnet_ids[0])
            .secondary_private_ip_address_count(2)
            .tag_specifications(spec.build())
            .send()
            .await
            .expect("CreateNetworkInterface");
        let eni = created.network_interface().expect("an ENI");
        let id = eni.network_interface_id().unwrap_or_default().to_string();
        self.ec2
            .attach_network_interface()
            .network_interface_id(&id)
            .instance_id(self.instance_id())
            .device_index(device)
            .send()
            .await
            .expect("AttachNetworkInterface");
        let ips = eni
            .private_ip_addresses()
            .iter()
            .filter(|p| p.primary() != Some(true))
            .filter_map(|p| p.private_ip_address().map(String::from))
            .collect();
        (id, ips)
    }

    /// The node's ENIs as EC2 reports them (through the proxy when there is one: prefixes included).
    pub async fn enis(&self) -> Vec<NodeEni> {
        let ec2 = self.proxy.as_ref().map_or_else(|| self.ec2.clone(), |p| localstack::ec2_client_at(&p.endpoint));
        localstack::node_enis(&ec2, self.instance_id()).await.expect("DescribeNetworkInterfaces")
    }

    /// Secondary IP count per attached ENI, by device index.
    pub async fn ip_counts(&self) -> Vec<usize> {
        self.enis().await.iter().map(|e| e.secondary_ips.len()).collect()
    }

    /// ENIs in the node's VPC that are not attached ("available"): what a leak looks like.
    pub async fn unattached_enis(&self) -> Vec<String> {
        let all = localstack::vpc_enis(&self.ec2, &self.vpc.vpc_id).await.expect("DescribeNetworkInterfaces");
        all.into_iter().filter(|(_, status, _)| status == "available").map(|(id, _, _)| id).collect()
    }

    pub async fn cleanup(self) {
        let errors = self.vpc.destroy(&self.ec2).await;
        if !errors.is_empty() {
            eprintln!("cleanup of {}: {errors:?}", self.vpc.vpc_id);
        }
    }
}

impl Drop for NodeFixture {
    /// A failing test shows what ipamd logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("ipamd.log")).unwrap_or_default();
            eprintln!("---- ipamd log ({}) ----\n{log}---- end of ipamd log ----", self.vpc.vpc_id);
        }
    }
}

pub fn key(container: &str) -> pb::AllocationKey {
    pb::AllocationKey { network_name: "aws-cni".into(), container_id: container.into(), if_name: "eth0".into() }
}

pub async fn add(ipamd: &Ipamd, container: &str) -> Result<pb::AddNetworkReply, Status> {
    add_pod(ipamd, container, ("default", &format!("pod-{container}"), "")).await
}

/// AddNetwork for container `container` of pod (namespace, name, uid), as the plugin sends it.
pub async fn add_pod(ipamd: &Ipamd, container: &str, pod: (&str, &str, &str)) -> Result<pb::AddNetworkReply, Status> {
    let req = pb::AddNetworkRequest {
        key: Some(key(container)),
        k8s_pod_namespace: pod.0.into(),
        k8s_pod_name: pod.1.into(),
        netns: format!("/var/run/netns/{container}"),
        k8s_pod_uid: pod.2.into(),
    };
    ipamd.ipam().await.add_network(req).await.map(tonic::Response::into_inner)
}

/// Add, retrying while ipamd says it is fetching more IPs (as kubelet retries a CNI "try again later").
/// Returns the final status when the node is at its limit or the time is up.
pub async fn add_retrying(ipamd: &Ipamd, container: &str, timeout: Duration) -> Result<pb::AddNetworkReply, Status> {
    let deadline = Instant::now() + timeout;
    loop {
        match add(ipamd, container).await {
            Err(s)
                if s.code() == Code::ResourceExhausted
                    && !s.message().contains("limit")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

pub async fn del(ipamd: &Ipamd, container: &str) -> Result<pb::DelNetworkReply, Status> {
    let req = pb::DelNetworkRequest { key: Some(key(container)) };
    ipamd.ipam().await.del_network(req).await.map(tonic::Response::into_inner)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let v = poll_until(timeout, check, Option::is_some).await;
    v.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for: {what}"))
}

/// Reads with `read` every 200 ms until `done` holds for what it read, or `timeout` passes; returns the last
/// reading either way, for the caller to assert on with its own diagnostics.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let v = read().await;
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free loopback port (for METRICS_BIND_ADDR in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// GET http://127.0.0.1:<port><path> with a plain HTTP/1.0 request; returns the body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The value of one Prometheus sample line `name{labels} value` (labels as written, or empty).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// ipamd's EC2 requests (every attempt) by operation, from its metrics text (`ipamd_ec2_requests_total`).
pub fn ec2_requests_by_op(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ipamd_ec2_requests_total{op=\""))
        .filter_map(|l| {
            let (op, rest) = l.split_once('"')?;
            Some((op.to_string(), rest.rsplit(' ').next()?.parse::<f64>().ok()?))
        })
        .collect()
}

/// `vpcctl status`'s data, `None` while ipamd's socket is not up.
pub async fn try_status(ipamd: &Ipamd) -> Option<pb::GetStatusReply> {
    let mut client = pb::introspection_client::IntrospectionClient::new(ipamd.channel().await.ok()?);
    Some(client.get_status(pb::GetStatusRequest {}).await.ok()?.into_inner())
}

/// Waits for `n` whole reconcile rounds from now (a round under way is not counted) and returns the status
/// then. A test showing that something does NOT happen watches this many of ipamd's own rounds, so the window
/// follows IPAMD_RECONCILE_INTERVAL (and the kicks that start rounds early) instead of a guess in seconds.
pub async fn rounds_pass(ipamd: &Ipamd, n: u64) -> pb::GetStatusReply {
    rounds_pass_by(|| try_status(ipamd), n).await
}

/// As [`rounds_pass`], reading the status through `status` (e.g. a sim node's socket).
pub async fn rounds_pass_by<F, Fut>(mut status: F, n: u64) -> pb::GetStatusReply
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<pb::GetStatusReply>>,
{
    let start = status().await.expect("status").reconcile_rounds;
    let want = start + n + 1;
    let done = |s: &Option<pb::GetStatusReply>| s.as_ref().is_some_and(|s| s.reconcile_rounds >= want);
    let s = poll_until(Duration::from_secs(120), status, done).await;
    let rounds = s.as_ref().map(|s| s.reconcile_rounds);
    assert!(done(&s), "{n} reconcile rounds did not pass within 120 s (rounds: {start} then {rounds:?})");
    s.expect("status")
}

/// `steps` doubling waits of ipamd's error backoff, end to end: a loop failing all along tries at most
/// `steps + 1` times in it (more only without a backoff; the ±20 % jitter cannot fit another try).
pub fn backoff_window(steps: u32) -> Duration {
    ipamd::reconcile::ERROR_BACKOFF * (2u32.pow(steps) - 1)
}

/// The ENIs and IPs ipamd's pool holds (`vpcctl enis`).
pub async fn pool_enis(ipamd: &Ipamd) -> Vec<pb::Eni> {
    let mut client = ipamd.introspection().await;
    client.list_enis(pb::ListEnisRequest {}).await.expect("ListEnis").into_inner().enis
}

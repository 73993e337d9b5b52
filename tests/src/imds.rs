//! IMDSv2 emulator: serves one instance's metadata, read fresh from LocalStack on every request, so ENIs that
//! ipamd attaches show up at once. Tokens are required (PUT /latest/api/token first), as on real EC2.
//! MACs are derived from ENI ids ([`crate::mac::mac_for_eni`]) because LocalStack's are malformed.
//! The tree is cached for [`FRESH_FOR`]: like the real IMDS it may lag EC2 by a moment, and a node that reads
//! it every few seconds does not turn into a stream of LocalStack requests. With a lag set
//! ([`ImdsEmulator::set_address_lag`]) a secondary IP or prefix shows only once EC2 has had it that long, as on EC2,
//! where IMDS takes seconds to list what an assign added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::mac::mac_for_eni;

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(500);

type Tree = Arc<BTreeMap<String, String>>;

#[derive(Clone)]
struct Ctx {
    ec2: Client,
    instance_id: String,
    region: String,
    tokens: Arc<Mutex<BTreeSet<String>>>,
    cache: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Tree)>>>,
    /// An outage: every request is answered 503.
    down: Arc<std::sync::atomic::AtomicBool>,
    /// How long an address or prefix must have been in EC2 before it shows, and when each was first seen.
    lag: Arc<Mutex<(std::time::Duration, BTreeMap<String, std::time::Instant>)>>,
}

/// A running emulator.
#[derive(Debug)]
pub struct ImdsEmulator {
    pub addr: SocketAddr,
    down: Arc<std::sync::atomic::AtomicBool>,
    lag: Arc<Mutex<(std::time::Duration, BTreeMap<String, std::time::Instant>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl ImdsEmulator {
    /// Serves on `listener` (e.g. 127.0.0.1:0 in tests, 169.254.169.254:80 inside a node netns).
    pub fn serve(
        listener: tokio::net::TcpListener,
        ec2: Client,
        instance_id: &str,
        region: &str,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let ctx = Ctx {
            ec2,
            instance_id: instance_id.to_string(),
            region: region.to_string(),
            tokens: Arc::default(),
            cache: Arc::default(),
            down: Arc::default(),
            lag: Arc::default(),
        };
        let (down, lag) = (ctx.down.clone(), ctx.lag.clone());
        let app = Router::new().fallback(handle).with_state(ctx);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("IMDS emulator stopped: {e}");
            }
        });
        Ok(Self { addr, down, lag, task })
    }

    /// Secondary IPs and prefixes show only after they have been in EC2 for `lag` (0: at once).
    pub fn set_address_lag(&self, lag: std::time::Duration) {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).0 = lag;
    }

    /// Starts (`true`) or ends an outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// The value for AWS_EC2_METADATA_SERVICE_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ImdsEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    axum::extract::State(ctx): axum::extract::State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if ctx.down.load(std::sync::atomic::Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "IMDS outage (test)").into_response();
    }
    if method == Method::PUT && path == "/latest/api/token" {
        let ttl = headers.get(TTL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
        if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
            return (StatusCode::BAD_REQUEST, "missing or invalid token TTL").into_response();
        }
        let token = format!("vpcsim-{:032x}", rand::random::<u128>());
        ctx.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone());
        // Clients (aws-config's among them) read the TTL back from the response header.
        return (StatusCode::OK, [(TTL_HEADER, ttl.unwrap_or(0).to_string())], token).into_response();
    }
    let authorized = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| ctx.tokens.lock().unwrap_or_else(|p| p.into_inner()).contains(t));
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let Some(rel) = path.strip_prefix("/latest/meta-data/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match cached(&ctx).await {
        Ok(map) => match map.get(rel) {
            Some(v) => Response::new(Body::from(v.clone())),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// The tree, fetched again once older than [`FRESH_FOR`] (concurrent requests wait for one fetch).
async fn cached(ctx: &Ctx) -> Result<Tree, String> {
    let mut slot = ctx.cache.lock().await;
    if let Some((at, tree)) = slot.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return Ok(tree.clone());
    }
    let tree = Arc::new(metadata(ctx).await?);
    *slot = Some((std::time::Instant::now(), tree.clone()));
    Ok(tree)
}

/// Whether an address (or prefix) `key` of an ENI has been in EC2 long enough to show (see the lag).
fn shown(ctx: &Ctx, key: &str) -> bool {
    let mut lag = ctx.lag.lock().unwrap_or_else(|p| p.into_inner());
    let wait = lag.0;
    let first = *lag.1.entry(key.to_string()).or_insert_with(std::time::Instant::now);
    first.elapsed() >= wait
}

/// The whole metadata tree for the instance, as path → value.
async fn metadata(ctx: &Ctx) -> Result<BTreeMap<String, String>, String> {
    let ec2 = &ctx.ec2;
    let inst = ec2
        .describe_instances()
        .instance_ids(&ctx.instance_id)
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())?;
    let i = inst
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| format!("instance {} not found", ctx.instance_id))?;
    let enis = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("attachment.instance-id").values(&ctx.instance_id).build())
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())?;
    let vpc_id = i.vpc_id().unwrap_or_default();
    let vpcs = ec2
        .describe_vpcs()
        .vpc_ids(vpc_id)
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())?;
    let vpc_cidrs: Vec<String> = vpcs
        .vpcs()
        .iter()
        .flat_map(|v| v.cidr_block_association_set())
        .filter_map(|a| a.cidr_block().map(String::from))
        .collect();
    let subnet_ids: BTreeSet<String> =
        enis.network_interfaces().iter().filter_map(|n| n.subnet_id().map(String::from)).collect();
    let subnets = ec2
        .describe_subnets()
        .set_subnet_ids(Some(subnet_ids.into_iter().collect()))
        .send()
        .await
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())?;
    let subnet_cidr = |id: &str| {
        subnets
            .subnets()
            .iter()
            .find(|s| s.subnet_id() == Some(id))
            .and_then(|s| s.cidr_block())
            .unwrap_or_default()
            .to_string()
    };

    let mut m = BTreeMap::new();
    let az = i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string();
    m.insert("instance-id".into(), ctx.instance_id.clone());
    m.insert("instance-type".into(), i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default());
    m.insert("placement/availability-zone".into(), az);
    m.insert("placement/region".into(), ctx.region.clone());
    m.insert("local-ipv4".into(), i.private_ip_address().unwrap_or_default().to_string());
    let mut macs = Vec::new();
    for ni in enis.network_interfaces() {
        let id = ni.network_interface_id().unwrap_or_default();
        let mac = mac_for_eni(id);
        let dev = ni.attachment().and_then(|a| a.device_index()).unwrap_or(0);
        if dev == 0 {
            m.insert("mac".into(), mac.clone());
        }
        let b = format!("network/interfaces/macs/{mac}");
        let subnet = ni.subnet_id().unwrap_or_default();
        let primary = ni.private_ip_address().unwrap_or_default();
        let ips: Vec<&str> = ni
            .private_ip_addresses()
            .iter()
            .filter_map(|p| p.private_ip_address())
            .filter(|ip| *ip == primary || shown(ctx, &format!("{id}/{ip}")))
            .collect();
        let groups: Vec<&str> = ni.groups().iter().filter_map(|g| g.group_id()).collect();
        m.insert(format!("{b}/mac"), mac.clone());
        m.insert(format!("{b}/interface-id"), id.to_string());
        m.insert(format!("{b}/device-number"), dev.to_string());
        m.insert(format!("{b}/subnet-id"), subnet.to_string());
        m.insert(format!("{b}/subnet-ipv4-cidr-block"), subnet_cidr(subnet));
        m.insert(format!("{b}/security-group-ids"), groups.join("\n"));
        // Absent on an interface without IPv4 (EFA-only, IPv6-only), as in EC2's IMDS.
        if !ips.is_empty() {
            m.insert(format!("{b}/local-ipv4s"), ips.join("\n"));
        }
        let prefixes: Vec<&str> = ni
            .ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix())
            .filter(|p| shown(ctx, &format!("{id}/{p}")))
            .collect();
        if !prefixes.is_empty() {
            m.insert(format!("{b}/ipv4-prefix"), prefixes.join("\n"));
        }
        m.insert(format!("{b}/vpc-id"), vpc_id.to_string());
        m.insert(format!("{b}/vpc-ipv4-cidr-blocks"), vpc_cidrs.join("\n"));
        macs.push((dev, format!("{mac}/")));
    }
    macs.sort();
    m.insert("network/interfaces/macs/".into(), macs.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("\n"));
    Ok(m)
}

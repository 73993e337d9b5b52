//! Node bootstrap from the instance metadata service (IMDSv2 through aws-config's client, so the standard
//! AWS_EC2_METADATA_SERVICE_ENDPOINT override applies). The [`Metadata`] trait is the I/O boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS {path}: {message}")]
    Request { path: String, message: String },
    /// IMDS answered 404: the path does not exist (e.g. `ipv4-prefix` of an ENI without prefixes).
    #[error("IMDS {path}: not found")]
    NotFound { path: String },
    #[error("IMDS {path}: cannot parse '{value}': {message}")]
    Parse { path: String, value: String, message: String },
}

/// Reads one metadata path below `/latest/meta-data/`.
pub trait Metadata: Send + Sync + 'static {
    fn get(&self, path: &str) -> impl Future<Output = Result<String, ImdsError>> + Send;
}

/// The real IMDSv2 client.
#[derive(Clone)]
pub struct AwsImds {
    client: aws_config::imds::Client,
}

impl AwsImds {
    pub fn from_env() -> Self {
        Self { client: aws_config::imds::Client::builder().max_attempts(4).build() }
    }
}

impl Metadata for AwsImds {
    async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let full = format!("/latest/meta-data/{path}");
        self.client.get(full).await.map(String::from).map_err(|e| match &e {
            aws_config::imds::client::error::ImdsError::ErrorResponse(r) if r.response().status().as_u16() == 404 => {
                ImdsError::NotFound { path: path.to_string() }
            }
            _ => ImdsError::Request { path: path.to_string(), message: error_chain(&e) },
        })
    }
}

/// "outer: inner: root" — aws-config's errors keep the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    // Error responses carry the whole HTTP response in their Display; keep logs readable.
    if out.len() > 400 {
        let cut = (0..=400).rev().find(|i| out.is_char_boundary(*i)).unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// One interface as IMDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacInfo {
    pub mac: String,
    pub eni_id: String,
    pub device_number: u32,
    /// `local-ipv4s`: the ENI's primary and secondary private IPs as the instance sees them.
    pub ips: BTreeSet<Ipv4Addr>,
    /// `ipv4-prefix`: the /28s delegated to the ENI (prefix mode).
    pub prefixes: BTreeSet<Ipv4Net>,
}

/// What ipamd needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    pub primary_mac: String,
    pub primary_ip: Ipv4Addr,
    pub primary_eni_id: String,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub security_groups: Vec<String>,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// Empty when IMDS does not say (subnet discovery then keeps to the node's subnet). Absent from checkpoints
    /// written before it existed.
    #[serde(default)]
    pub vpc_id: String,
}

fn parse<T: std::str::FromStr>(path: &str, value: &str) -> Result<T, ImdsError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| ImdsError::Parse {
        path: path.to_string(),
        value: value.to_string(),
        message: e.to_string(),
    })
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

impl NodeInfo {
    pub async fn load(md: &impl Metadata) -> Result<Self, ImdsError> {
        let instance_id = md.get("instance-id").await?.trim().to_string();
        let instance_type = md.get("instance-type").await?.trim().to_string();
        let region = md.get("placement/region").await?.trim().to_string();
        let availability_zone = md.get("placement/availability-zone").await?.trim().to_string();
        let primary_mac = md.get("mac").await?.trim().to_lowercase();
        let primary_ip = parse("local-ipv4", &md.get("local-ipv4").await?)?;
        let base = format!("network/interfaces/macs/{primary_mac}");
        let primary_eni_id = md.get(&format!("{base}/interface-id")).await?.trim().to_string();
        let subnet_id = md.get(&format!("{base}/subnet-id")).await?.trim().to_string();
        let cidr_path = format!("{base}/subnet-ipv4-cidr-block");
        let subnet_cidr = parse(&cidr_path, &md.get(&cidr_path).await?)?;
        let security_groups = lines(&md.get(&format!("{base}/security-group-ids")).await?).map(String::from).collect();
        let vpc_path = format!("{base}/vpc-ipv4-cidr-blocks");
        let vpc_cidrs = lines(&md.get(&vpc_path).await?).map(|l| parse(&vpc_path, l)).collect::<Result<_, _>>()?;
        let vpc_id = match md.get(&format!("{base}/vpc-id")).await {
            Ok(v) => v.trim().to_string(),
            Err(ImdsError::NotFound { .. }) => {
                tracing::warn!(
                    "IMDS has no vpc-id for the primary interface: subnet discovery keeps to the node's subnet"
                );
                String::new()
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            instance_id,
            instance_type,
            region,
            availability_zone,
            primary_mac,
            primary_ip,
            primary_eni_id,
            subnet_id,
            subnet_cidr,
            security_groups,
            vpc_cidrs,
            vpc_id,
        })
    }
}

/// The node's interfaces by ENI id, from `network/interfaces/macs/` (links are matched to ENIs by MAC), with
/// their addresses: the reconcile loop compares this with its EC2 view every round instead of asking EC2.
pub async fn interfaces(md: &impl Metadata) -> Result<BTreeMap<String, MacInfo>, ImdsError> {
    let mut out = BTreeMap::new();
    for mac in lines(&md.get("network/interfaces/macs/").await?) {
        let mac = mac.trim_end_matches('/').to_lowercase();
        let base = format!("network/interfaces/macs/{mac}");
        let eni_id = md.get(&format!("{base}/interface-id")).await?.trim().to_string();
        let dev_path = format!("{base}/device-number");
        let device_number = parse(&dev_path, &md.get(&dev_path).await?)?;
        let ips_path = format!("{base}/local-ipv4s");
        // An interface IMDS has only just learnt about may not list addresses yet.
        let ips = match md.get(&ips_path).await {
            Ok(text) => lines(&text).map(|l| parse(&ips_path, l)).collect::<Result<_, _>>()?,
            Err(_) => BTreeSet::new(),
        };
        let prefix_path = format!("{base}/ipv4-prefix");
        // Absent (404) on an ENI without prefixes; any other failure fails the read rather than hiding prefixes.
        let prefixes = match md.get(&prefix_path).await {
            Ok(text) => {
                let all: BTreeSet<Ipv4Net> = lines(&text).map(|l| parse(&prefix_path, l)).collect::<Result<_, _>>()?;
                // /28s only, as EC2 delegates: anything else is named and left out.
                let (ok, odd): (BTreeSet<Ipv4Net>, BTreeSet<Ipv4Net>) =
                    all.into_iter().partition(|p| p.prefix_len() == crate::cloud::ec2::PREFIX_LEN);
                if !odd.is_empty() {
                    tracing::warn!(eni = %eni_id, prefixes = ?odd, "IMDS lists prefixes that are not /28s: ignored");
                }
                ok
            }
            Err(ImdsError::NotFound { .. }) => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        out.insert(eni_id.clone(), MacInfo { mac, eni_id, device_number, ips, prefixes });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A map-backed [`Metadata`] for unit tests (the integration tests use the real client against the
    //! IMDS emulator in `tests/`).
    use super::*;

    #[derive(Default, Clone)]
    pub struct FakeImds(pub BTreeMap<String, String>);

    impl Metadata for FakeImds {
        async fn get(&self, path: &str) -> Result<String, ImdsError> {
            self.0.get(path).cloned().ok_or_else(|| ImdsError::NotFound { path: path.into() })
        }
    }

    pub fn node() -> FakeImds {
        let mac = "02:aa:bb:cc:dd:00";
        let b = format!("network/interfaces/macs/{mac}");
        let pairs = [
            ("instance-id".to_string(), "i-0123".to_string()),
            ("instance-type".into(), "m5.large".into()),
            ("placement/region".into(), "us-east-1".into()),
            ("placement/availability-zone".into(), "us-east-1a".into()),
            ("mac".into(), mac.into()),
            ("local-ipv4".into(), "10.0.1.4".into()),
            ("network/interfaces/macs/".into(), format!("{mac}/\n")),
            (format!("{b}/interface-id"), "eni-prim".into()),
            (format!("{b}/device-number"), "0".into()),
            (format!("{b}/local-ipv4s"), "10.0.1.4".into()),
            (format!("{b}/subnet-id"), "subnet-1".into()),
            (format!("{b}/subnet-ipv4-cidr-block"), "10.0.1.0/24".into()),
            (format!("{b}/security-group-ids"), "sg-1\nsg-2".into()),
            (format!("{b}/vpc-ipv4-cidr-blocks"), "10.0.0.0/16\n10.1.0.0/16".into()),
        ];
        FakeImds(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn node_info_reads_every_field() {
        let md = fake::node();
        let n = NodeInfo::load(&md).await.unwrap();
        assert_eq!(n.primary_eni_id, "eni-prim");
        assert_eq!(n.security_groups, ["sg-1", "sg-2"]);
        assert_eq!(n.vpc_cidrs.len(), 2);
        let ifs = interfaces(&md).await.unwrap();
        assert_eq!(ifs["eni-prim"].mac, "02:aa:bb:cc:dd:00");
        assert_eq!(ifs["eni-prim"].ips, BTreeSet::from([Ipv4Addr::new(10, 0, 1, 4)]));
    }

    /// Only /28s are delegated prefixes: a /16 listed there is left out, never expanded address by address.
    #[tokio::test]
    async fn only_28_prefixes_are_taken() {
        let mut md = fake::node();
        let at = "network/interfaces/macs/02:aa:bb:cc:dd:00/ipv4-prefix";
        md.0.insert(at.into(), "10.0.0.0/16\n10.0.1.16/28\n10.0.1.0/27".into());
        let ifs = interfaces(&md).await.unwrap();
        assert_eq!(ifs["eni-prim"].prefixes, BTreeSet::from(["10.0.1.16/28".parse().unwrap()]));
    }

    #[tokio::test]
    async fn bad_metadata_names_the_path() {
        let mut md = fake::node();
        md.0.insert("local-ipv4".into(), "ten".into());
        let err = NodeInfo::load(&md).await.unwrap_err().to_string();
        assert!(err.contains("local-ipv4") && err.contains("ten"), "{err}");
    }
}

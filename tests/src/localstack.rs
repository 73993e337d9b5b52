//! LocalStack EC2 fixtures: a client for 127.0.0.1:4566 and a throw-away VPC with one instance, so each test
//! (and each vpc-sim run) works in its own VPC and tests can run in parallel.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
pub const REGION: &str = "us-east-1";
/// LocalStack accepts any image id; this one names what it is.
const IMAGE_ID: &str = "ami-00000000";

/// The environment every AWS client in tests and in the ipamd processes they start gets: a fixed region
/// (so nothing probes the real 169.254.169.254 for one), dummy credentials, LocalStack's endpoint.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_ENDPOINT_URL_EC2", endpoint.to_string()),
    ]
}

pub fn endpoint() -> String {
    std::env::var("LOCALSTACK_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

/// An EC2 client for LocalStack that never consults the environment's credential chain or IMDS.
pub fn ec2_client() -> Client {
    ec2_client_at(&endpoint())
}

/// As [`ec2_client`], through `endpoint` (a [`crate::ec2faults::Ec2FaultProxy`] in front of LocalStack).
pub fn ec2_client_at(endpoint: &str) -> Client {
    let creds = aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "vpc-sim");
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(conf)
}

#[derive(Debug, thiserror::Error)]
#[error("LocalStack {op}: {message}")]
pub struct LsError {
    pub op: &'static str,
    pub message: String,
}

fn ls<E: std::fmt::Debug>(op: &'static str) -> impl FnOnce(E) -> LsError {
    move |e| LsError { op, message: format!("{e:?}") }
}

/// A VPC with one subnet, one security group and some instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TestVpc {
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub subnet_ids: Vec<String>,
    pub sg_id: String,
    pub instance_ids: Vec<String>,
    /// Security groups added later (e.g. for pod ENIs), removed with the VPC.
    #[serde(default)]
    pub extra_sg_ids: Vec<String>,
}

impl TestVpc {
    /// A subnet of this VPC in `az`, removed with it.
    pub async fn add_subnet(&mut self, ec2: &Client, cidr: &str, az: &str) -> Result<String, LsError> {
        let s = ec2.create_subnet().vpc_id(&self.vpc_id).cidr_block(cidr).availability_zone(az).send().await;
        let id = s.map_err(ls("CreateSubnet"))?.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string();
        self.subnet_ids.push(id.clone());
        Ok(id)
    }

    /// A security group of this VPC, removed with it.
    pub async fn add_security_group(&mut self, ec2: &Client, name: &str) -> Result<String, LsError> {
        let out = ec2.create_security_group().vpc_id(&self.vpc_id).group_name(name).description(name).send().await;
        let id = out.map_err(ls("CreateSecurityGroup"))?.group_id().unwrap_or_default().to_string();
        self.extra_sg_ids.push(id.clone());
        Ok(id)
    }

    /// Creates the VPC (`vpc_cidr`, one /24 subnet per entry of `subnets`) and `nodes` instances of
    /// `instance_type` in the first subnet. Everything is tagged `vpc-sim=<tag>`.
    pub async fn create(
        ec2: &Client,
        tag: &str,
        vpc_cidr: &str,
        subnets: &[&str],
        instance_type: &str,
        nodes: usize,
    ) -> Result<Self, LsError> {
        let zoned: Vec<(&str, String)> = subnets.iter().map(|c| (*c, format!("{REGION}a"))).collect();
        Self::create_zoned(ec2, tag, vpc_cidr, &zoned, instance_type, &vec![0; nodes]).await
    }

    /// As [`TestVpc::create`] with each subnet's zone given, and node `i` launched in subnet `node_subnets[i]`.
    pub async fn create_zoned(
        ec2: &Client,
        tag: &str,
        vpc_cidr: &str,
        subnets: &[(&str, String)],
        instance_type: &str,
        node_subnets: &[usize],
    ) -> Result<Self, LsError> {
        let tags = |rt: ResourceType| {
            TagSpecification::builder().resource_type(rt).tags(Tag::builder().key("vpc-sim").value(tag).build()).build()
        };
        let vpc = ec2
            .create_vpc()
            .cidr_block(vpc_cidr)
            .tag_specifications(tags(ResourceType::Vpc))
            .send()
            .await
            .map_err(ls("CreateVpc"))?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string();
        let mut me = Self {
            vpc_id: vpc_id.clone(),
            vpc_cidr: vpc_cidr.to_string(),
            subnet_ids: Vec::new(),
            sg_id: String::new(),
            instance_ids: Vec::new(),
            extra_sg_ids: Vec::new(),
        };
        for (cidr, az) in subnets {
            let s = ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(*cidr)
                .availability_zone(az)
                .tag_specifications(tags(ResourceType::Subnet))
                .send()
                .await
                .map_err(ls("CreateSubnet"))?;
            me.subnet_ids.push(s.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string());
        }
        let sg = ec2
            .create_security_group()
            .vpc_id(&vpc_id)
            .group_name(format!("vpc-sim-{tag}"))
            .description("vpc-sim nodes")
            .send()
            .await
            .map_err(ls("CreateSecurityGroup"))?;
        me.sg_id = sg.group_id().unwrap_or_default().to_string();
        // One RunInstances per run of nodes in the same subnet, so instance ids come back in node order.
        let mut i = 0;
        while i < node_subnets.len() {
            let subnet = node_subnets[i];
            let count = node_subnets[i..].iter().take_while(|s| **s == subnet).count();
            let run = ec2
                .run_instances()
                .image_id(IMAGE_ID)
                .instance_type(InstanceType::from(instance_type))
                .min_count(count as i32)
                .max_count(count as i32)
                .subnet_id(&me.subnet_ids[subnet])
                .security_group_ids(&me.sg_id)
                .tag_specifications(tags(ResourceType::Instance))
                .send()
                .await
                .map_err(ls("RunInstances"))?;
            me.instance_ids.extend(run.instances().iter().filter_map(|i| i.instance_id().map(String::from)));
            i += count;
        }
        Ok(me)
    }

    /// Removes instances, every ENI in the VPC, the security group, subnets and the VPC. Best effort: it
    /// goes on past errors and returns them all.
    pub async fn destroy(&self, ec2: &Client) -> Vec<LsError> {
        let mut errors = Vec::new();
        let vpc_filter = Filter::builder().name("vpc-id").values(&self.vpc_id).build();
        if let Ok(out) = ec2.describe_network_interfaces().filters(vpc_filter.clone()).send().await {
            for ni in out.network_interfaces() {
                let att = ni.attachment();
                if let Some(a) = att.filter(|a| a.device_index().unwrap_or(0) != 0).and_then(|a| a.attachment_id())
                    && let Err(e) = ec2.detach_network_interface().attachment_id(a).force(true).send().await
                {
                    errors.push(ls("DetachNetworkInterface")(e));
                }
                if att.is_none_or(|a| a.device_index().unwrap_or(0) != 0) {
                    let id = ni.network_interface_id().unwrap_or_default();
                    if let Err(e) = ec2.delete_network_interface().network_interface_id(id).send().await {
                        errors.push(ls("DeleteNetworkInterface")(e));
                    }
                }
            }
        }
        if !self.instance_ids.is_empty()
            && let Err(e) = ec2.terminate_instances().set_instance_ids(Some(self.instance_ids.clone())).send().await
        {
            errors.push(ls("TerminateInstances")(e));
        }
        // Primary ENIs go with their instances; sweep whatever is left.
        if let Ok(out) = ec2.describe_network_interfaces().filters(vpc_filter).send().await {
            for ni in out.network_interfaces() {
                let id = ni.network_interface_id().unwrap_or_default();
                let _ = ec2.delete_network_interface().network_interface_id(id).send().await;
            }
        }
        for sg in &self.extra_sg_ids {
            if let Err(e) = ec2.delete_security_group().group_id(sg).send().await {
                errors.push(ls("DeleteSecurityGroup")(e));
            }
        }
        if !self.sg_id.is_empty()
            && let Err(e) = ec2.delete_security_group().group_id(&self.sg_id).send().await
        {
            errors.push(ls("DeleteSecurityGroup")(e));
        }
        for s in &self.subnet_ids {
            if let Err(e) = ec2.delete_subnet().subnet_id(s).send().await {
                errors.push(ls("DeleteSubnet")(e));
            }
        }
        if let Err(e) = ec2.delete_vpc().vpc_id(&self.vpc_id).send().await {
            errors.push(ls("DeleteVpc")(e));
        }
        errors
    }
}

/// An ENI of an instance as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEni {
    pub id: String,
    pub device_index: i32,
    pub primary_ip: String,
    pub secondary_ips: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    /// Delegated /28 prefixes.
    pub prefixes: Vec<String>,
}

/// The ENIs attached to `instance_id`, by device index.
pub async fn node_enis(ec2: &Client, instance_id: &str) -> Result<Vec<NodeEni>, LsError> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("attachment.instance-id").values(instance_id).build())
        .send()
        .await
        .map_err(ls("DescribeNetworkInterfaces"))?;
    let mut enis: Vec<NodeEni> = out
        .network_interfaces()
        .iter()
        .map(|ni| NodeEni {
            id: ni.network_interface_id().unwrap_or_default().to_string(),
            device_index: ni.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
            primary_ip: ni.private_ip_address().unwrap_or_default().to_string(),
            secondary_ips: ni
                .private_ip_addresses()
                .iter()
                .filter(|p| p.primary() != Some(true))
                .filter_map(|p| p.private_ip_address().map(String::from))
                .collect(),
            subnet_id: ni.subnet_id().unwrap_or_default().to_string(),
            security_groups: ni.groups().iter().filter_map(|g| g.group_id().map(String::from)).collect(),
            prefixes: ni.ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix().map(String::from)).collect(),
            tags: ni
                .tag_set()
                .iter()
                .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
                .collect(),
        })
        .collect();
    enis.sort_by_key(|e| e.device_index);
    Ok(enis)
}

/// Every ENI in `vpc_id`: (id, status, tags), whatever it is attached to.
pub async fn vpc_enis(ec2: &Client, vpc_id: &str) -> Result<Vec<(String, String, Vec<(String, String)>)>, LsError> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
        .send()
        .await
        .map_err(ls("DescribeNetworkInterfaces"))?;
    Ok(out
        .network_interfaces()
        .iter()
        .map(|ni| {
            let tags = ni
                .tag_set()
                .iter()
                .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
                .collect();
            let status = ni.status().map(|s| s.as_str().to_string()).unwrap_or_default();
            (ni.network_interface_id().unwrap_or_default().to_string(), status, tags)
        })
        .collect())
}

/// Whether an ENI id still exists in EC2.
pub async fn eni_exists(ec2: &Client, eni_id: &str) -> Result<bool, LsError> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("network-interface-id").values(eni_id).build())
        .send()
        .await
        .map_err(ls("DescribeNetworkInterfaces"))?;
    Ok(!out.network_interfaces().is_empty())
}

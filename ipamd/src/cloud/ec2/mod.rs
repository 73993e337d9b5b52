//! The EC2 boundary: the [`Ec2Api`] trait (one method per EC2 operation ipamd makes) and the types it speaks;
//! [`aws`] implements it with aws-sdk-ec2, rate-limited by a token bucket ([`ratelimit`], every attempt),
//! retried per [`retry`], each attempt reported to a [`CallMeter`]; errors carry a typed [`ErrorKind`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

mod aws;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod ratelimit;
pub mod retry;

pub use aws::AwsEc2;
pub use error::{Ec2Error, ErrorKind};

/// Where every EC2 attempt is reported (the metrics implement it): the operation, how long it took, the error
/// code if it failed; and how long a call waited for EC2_API_QPS.
pub trait CallMeter: Send + Sync + 'static {
    fn ec2_call(&self, op: &str, took: Duration, error_code: Option<&str>);
    fn ec2_throttle_wait(&self, waited: Duration);
}

/// An ENI attached to (or tagged for) this node, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Eni {
    pub id: String,
    pub subnet_id: String,
    /// `None` on an ENI with no private IPv4 address (an EFA-only interface, an IPv6-only ENI a user
    /// attached): ipamd never manages one, it only counts its attachment slot.
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes (prefix mode).
    pub prefixes: Vec<Ipv4Net>,
    pub device_index: Option<u32>,
    pub attachment_id: Option<String>,
    /// The attachment's DeleteOnTermination (`None` when not attached).
    pub delete_on_termination: Option<bool>,
    /// "in-use", "available", …
    pub status: String,
    pub security_groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// The length of a delegated IPv4 prefix: EC2 delegates /28s only, and nothing else is ever expanded.
pub const PREFIX_LEN: u8 = 28;

/// A subnet as ipamd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub cidr: Ipv4Net,
    pub availability_zone: String,
}

/// A subnet as subnet discovery weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: String,
    pub cidr: Ipv4Net,
    /// AvailableIpAddressCount.
    pub free: u32,
    /// The value of its `kubernetes.io/role/cni` tag, when it has one.
    pub cni_role: Option<String>,
}

/// The tag that opts a subnet in (`1`) or out (`0`) of subnet discovery.
pub const TAG_CNI_ROLE: &str = "kubernetes.io/role/cni";

/// What a new ENI is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub ip_count: u32,
    /// /28 prefixes to delegate at creation (prefix mode; `ip_count` is then 0).
    pub prefix_count: u32,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// Instance-type network limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    pub max_enis: u32,
    /// IPv4 addresses per interface, the primary included.
    pub ipv4_per_eni: u32,
    pub vcpus: u32,
}

pub trait Ec2Api: Send + Sync + 'static {
    /// ENIs attached to the instance.
    fn attached_enis(&self, instance_id: &str) -> impl Future<Output = Result<Vec<Ec2Eni>, Ec2Error>> + Send;
    /// ENIs carrying `tag_key = tag_value` that are not attached to anything.
    fn unattached_tagged_enis(
        &self,
        tag_key: &str,
        tag_value: &str,
    ) -> impl Future<Output = Result<Vec<Ec2Eni>, Ec2Error>> + Send;
    fn subnet(&self, subnet_id: &str) -> impl Future<Output = Result<Subnet, Ec2Error>> + Send;
    /// Every subnet of `vpc_id` in `zone`, with its free address count and role tag.
    fn subnets_in_zone(
        &self,
        vpc_id: &str,
        zone: &str,
    ) -> impl Future<Output = Result<Vec<SubnetInfo>, Ec2Error>> + Send;
    fn instance_limits(&self, instance_type: &str) -> impl Future<Output = Result<InstanceLimits, Ec2Error>> + Send;
    fn create_eni(&self, eni: &NewEni) -> impl Future<Output = Result<Ec2Eni, Ec2Error>> + Send;
    /// Attaches and returns the attachment id.
    fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;
    fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn assign_ips(&self, eni_id: &str, count: u32) -> impl Future<Output = Result<Vec<Ipv4Addr>, Ec2Error>> + Send;
    fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// Delegates `count` /28 prefixes (EC2 answers InsufficientCidrBlocks when the subnet has no free aligned /28).
    fn assign_prefixes(&self, eni_id: &str, count: u32) -> impl Future<Output = Result<Vec<Ipv4Net>, Ec2Error>> + Send;
    fn unassign_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn detach_eni(&self, attachment_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn delete_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

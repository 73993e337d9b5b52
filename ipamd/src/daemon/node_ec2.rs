//! The node's EC2 as the reconcile loop sees it: aws-sdk-ec2, or (ENABLE_IMDS_ONLY_MODE) the reads answered from
//! IMDS. One type, so the loop is built and supervised the same way in both modes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::cloud::ec2::{AwsEc2, Ec2Api, Ec2Eni, Ec2Error, InstanceLimits, NewEni, Subnet, SubnetInfo};
use crate::cloud::imds::AwsImds;
use crate::cloud::imds_only::ImdsOnly;

pub enum NodeEc2 {
    Aws(AwsEc2),
    ImdsOnly(ImdsOnly<AwsImds>),
}

/// Calls the same method on whichever EC2 this is.
macro_rules! either {
    ($self:ident, $call:ident($($arg:expr),*)) => {
        match $self {
            NodeEc2::Aws(e) => e.$call($($arg),*).await,
            NodeEc2::ImdsOnly(e) => e.$call($($arg),*).await,
        }
    };
}

impl Ec2Api for NodeEc2 {
    async fn attached_enis(&self, instance_id: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        either!(self, attached_enis(instance_id))
    }
    async fn unattached_tagged_enis(&self, key: &str, value: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        either!(self, unattached_tagged_enis(key, value))
    }
    async fn subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        either!(self, subnet(subnet_id))
    }
    async fn subnets_in_zone(&self, vpc_id: &str, zone: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        either!(self, subnets_in_zone(vpc_id, zone))
    }
    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        either!(self, instance_limits(instance_type))
    }
    async fn create_eni(&self, eni: &NewEni) -> Result<Ec2Eni, Ec2Error> {
        either!(self, create_eni(eni))
    }
    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        either!(self, attach_eni(eni_id, instance_id, device_index))
    }
    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        either!(self, set_delete_on_termination(eni_id, attachment_id))
    }
    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        either!(self, assign_ips(eni_id, count))
    }
    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        either!(self, unassign_ips(eni_id, ips))
    }
    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        either!(self, assign_prefixes(eni_id, count))
    }
    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        either!(self, unassign_prefixes(eni_id, prefixes))
    }
    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        either!(self, detach_eni(attachment_id))
    }
    async fn delete_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        either!(self, delete_eni(eni_id))
    }
}

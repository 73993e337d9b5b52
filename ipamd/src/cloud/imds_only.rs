//! ENABLE_IMDS_ONLY_MODE: the [`Ec2Api`] reads answered from the instance metadata service, so ipamd makes no EC2
//! call at all (nodes without a route or permission to EC2). The mode implies DISABLE_NETWORK_RESOURCE_PROVISIONING:
//! the reconcile loop never asks for a change, and a change asked anyway is refused here, never sent.
//!
//! What IMDS cannot say: tags (so every ENI with an IPv4 address is served — the no_manage tag cannot be seen),
//! attachment ids, the instance type's limits (taken as what is attached: max pods is what those ENIs hold) and
//! the vCPU count.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::ec2::{Ec2Api, Ec2Eni, Ec2Error, ErrorKind, InstanceLimits, NewEni, Subnet, SubnetInfo};
use super::imds::{self, ImdsError, Metadata, NodeInfo};

/// EC2's view of the node, from IMDS.
pub struct ImdsOnly<M: Metadata> {
    imds: Arc<M>,
    node: Arc<NodeInfo>,
}

impl<M: Metadata> ImdsOnly<M> {
    pub fn new(imds: Arc<M>, node: Arc<NodeInfo>) -> Self {
        Self { imds, node }
    }

    /// `(mac, value)` of one interface path for every interface.
    async fn per_mac(&self, op: &'static str, leaf: &str) -> Result<Vec<(String, String)>, Ec2Error> {
        let macs = self.imds.get("network/interfaces/macs/").await.map_err(|e| unreachable(op, e))?;
        let mut out = Vec::new();
        for mac in macs.lines().map(|l| l.trim().trim_end_matches('/')).filter(|l| !l.is_empty()) {
            let value = match self.imds.get(&format!("network/interfaces/macs/{mac}/{leaf}")).await {
                Ok(v) => v,
                Err(ImdsError::NotFound { .. }) => String::new(),
                Err(e) => return Err(unreachable(op, e)),
            };
            out.push((mac.to_lowercase(), value));
        }
        Ok(out)
    }
}

/// IMDS not answering is EC2 not answering for the loop: it serves degraded from what it knows.
fn unreachable(op: &'static str, e: ImdsError) -> Ec2Error {
    match e {
        ImdsError::Parse { .. } => Ec2Error::bad_response(op, format!("IMDS (ENABLE_IMDS_ONLY_MODE): {e}")),
        _ => Ec2Error::of_kind(op, ErrorKind::NoResponse, "ImdsUnavailable", format!("ENABLE_IMDS_ONLY_MODE: {e}")),
    }
}

/// What a change asked in IMDS-only mode gets (the loop never asks: it does not provision).
fn refused(op: &'static str) -> Ec2Error {
    Ec2Error::new(op, "ImdsOnlyMode", "ENABLE_IMDS_ONLY_MODE=true: ipamd makes no EC2 call")
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

impl<M: Metadata> Ec2Api for ImdsOnly<M> {
    async fn attached_enis(&self, _instance_id: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        const OP: &str = "DescribeNetworkInterfaces";
        let interfaces = imds::interfaces(self.imds.as_ref()).await.map_err(|e| unreachable(OP, e))?;
        let subnets = self.per_mac(OP, "subnet-id").await?;
        let ordered = self.per_mac(OP, "local-ipv4s").await?;
        let groups = self.per_mac(OP, "security-group-ids").await?;
        let find = |list: &[(String, String)], mac: &str| {
            list.iter().find(|(m, _)| m == mac).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let mut out = Vec::with_capacity(interfaces.len());
        for i in interfaces.values() {
            // IMDS lists the primary address first.
            let ips: Vec<Ipv4Addr> = lines(&find(&ordered, &i.mac)).filter_map(|l| l.parse().ok()).collect();
            let (primary_ip, secondary_ips) = match ips.split_first() {
                Some((p, rest)) => (Some(*p), rest.to_vec()),
                None => (None, Vec::new()),
            };
            out.push(Ec2Eni {
                id: i.eni_id.clone(),
                subnet_id: find(&subnets, &i.mac).trim().to_string(),
                primary_ip,
                secondary_ips,
                prefixes: i.prefixes.iter().copied().collect::<Vec<Ipv4Net>>(),
                device_index: Some(i.device_number),
                attachment_id: None,
                delete_on_termination: None,
                status: "in-use".into(),
                security_groups: lines(&find(&groups, &i.mac)).map(String::from).collect(),
                tags: Default::default(),
            });
        }
        Ok(out)
    }

    async fn unattached_tagged_enis(&self, _key: &str, _value: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        Ok(Vec::new())
    }

    async fn subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        const OP: &str = "DescribeSubnets";
        for (mac, id) in self.per_mac(OP, "subnet-id").await? {
            if id.trim() == subnet_id {
                let path = format!("network/interfaces/macs/{mac}/subnet-ipv4-cidr-block");
                let text = self.imds.get(&path).await.map_err(|e| unreachable(OP, e))?;
                let cidr = text.trim().parse().map_err(|e| Ec2Error::bad_response(OP, format!("{path}: {e}")))?;
                return Ok(Subnet { cidr, availability_zone: self.node.availability_zone.clone() });
            }
        }
        Err(Ec2Error::new(OP, "InvalidSubnetID.NotFound", format!("{subnet_id} is on none of the node's interfaces")))
    }

    async fn subnets_in_zone(&self, _vpc_id: &str, _zone: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        Ok(Vec::new())
    }

    async fn instance_limits(&self, _instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        let interfaces =
            imds::interfaces(self.imds.as_ref()).await.map_err(|e| unreachable("DescribeInstanceTypes", e))?;
        let widest = interfaces.values().map(|i| i.ips.len() + 16 * i.prefixes.len()).max().unwrap_or(1);
        Ok(InstanceLimits {
            max_enis: interfaces.len().max(1) as u32,
            // At least one secondary slot, so that limits stay well-formed on a node with none yet.
            ipv4_per_eni: widest.max(2) as u32,
            vcpus: 0,
        })
    }

    async fn create_eni(&self, _eni: &NewEni) -> Result<Ec2Eni, Ec2Error> {
        Err(refused("CreateNetworkInterface"))
    }

    async fn attach_eni(&self, _eni_id: &str, _instance_id: &str, _device_index: u32) -> Result<String, Ec2Error> {
        Err(refused("AttachNetworkInterface"))
    }

    async fn set_delete_on_termination(&self, _eni_id: &str, _attachment_id: &str) -> Result<(), Ec2Error> {
        Err(refused("ModifyNetworkInterfaceAttribute"))
    }

    async fn assign_ips(&self, _eni_id: &str, _count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        Err(refused("AssignPrivateIpAddresses"))
    }

    async fn unassign_ips(&self, _eni_id: &str, _ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        Err(refused("UnassignPrivateIpAddresses"))
    }

    async fn assign_prefixes(&self, _eni_id: &str, _count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        Err(refused("AssignPrivateIpAddresses"))
    }

    async fn unassign_prefixes(&self, _eni_id: &str, _prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        Err(refused("UnassignPrivateIpAddresses"))
    }

    async fn detach_eni(&self, _attachment_id: &str) -> Result<(), Ec2Error> {
        Err(refused("DetachNetworkInterface"))
    }

    async fn delete_eni(&self, _eni_id: &str) -> Result<(), Ec2Error> {
        Err(refused("DeleteNetworkInterface"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::imds::fake;

    /// A second interface with two secondary IPs: served with its primary address told apart, its subnet read
    /// from IMDS, and limits that hold what is attached.
    #[tokio::test]
    async fn the_node_is_read_from_imds_alone() {
        let mut md = fake::node();
        let mac = "02:aa:bb:cc:dd:01";
        let b = format!("network/interfaces/macs/{mac}");
        md.0.insert("network/interfaces/macs/".into(), format!("02:aa:bb:cc:dd:00/\n{mac}/\n"));
        for (k, v) in [
            ("interface-id", "eni-user"),
            ("device-number", "1"),
            ("local-ipv4s", "10.0.2.9\n10.0.2.20\n10.0.2.21"),
            ("subnet-id", "subnet-2"),
            ("subnet-ipv4-cidr-block", "10.0.2.0/24"),
            ("security-group-ids", "sg-9"),
        ] {
            md.0.insert(format!("{b}/{k}"), v.into());
        }
        let node = Arc::new(NodeInfo::load(&md).await.unwrap());
        let ec2 = ImdsOnly::new(Arc::new(md), node);
        let enis = ec2.attached_enis("i-0123").await.unwrap();
        let user = enis.iter().find(|e| e.id == "eni-user").unwrap();
        assert_eq!(user.primary_ip, Some("10.0.2.9".parse().unwrap()));
        assert_eq!(user.secondary_ips.len(), 2);
        assert_eq!(user.device_index, Some(1));
        assert_eq!(user.security_groups, ["sg-9"]);
        assert_eq!(ec2.subnet("subnet-2").await.unwrap().cidr.to_string(), "10.0.2.0/24");
        assert!(ec2.subnet("subnet-x").await.is_err());
        let limits = ec2.instance_limits("m5.large").await.unwrap();
        assert_eq!((limits.max_enis, limits.ipv4_per_eni), (2, 3));
        let refused = ec2.assign_ips("eni-user", 1).await.unwrap_err();
        assert!(refused.message.contains("ENABLE_IMDS_ONLY_MODE"), "{refused}");
    }
}

//! A recording, in-memory [`Ec2Api`] (and an IMDS that shows what it holds) for unit tests of the reconcile loop.
//! It keeps ENIs, secondary IPs and /28 prefixes as EC2 does: prefixes aligned, all-or-nothing, and
//! `InsufficientCidrBlocks` on demand (a fragmented subnet). LocalStack ignores prefix delegation, so prefix mode
//! is tested here at the trait level and, at the HTTP level, through the prefix-delegating proxy in `tests/`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use super::{Ec2Api, Ec2Eni, Ec2Error, InstanceLimits, NewEni, Subnet, SubnetInfo};
use crate::cloud::imds::{ImdsError, Metadata};

pub const INSTANCE: &str = "i-fake";
pub const SUBNET: &str = "subnet-fake";
pub const PRIMARY_ENI: &str = "eni-0";

#[derive(Debug)]
struct State {
    enis: Vec<Ec2Eni>,
    limits: InstanceLimits,
    /// Next host address handed out (10.0.0.0/16 from .16 up); prefixes come from 10.0.128.0/17.
    next_ip: u32,
    next_prefix: u32,
    /// Operation (or `Operation:prefix` for prefix requests) → error code.
    faults: BTreeMap<String, String>,
    calls: Vec<String>,
    /// ENIs created so far (ids never repeat, as EC2's).
    created: u32,
}

#[derive(Debug)]
pub struct FakeEc2 {
    state: Mutex<State>,
}

const SUBNET_CIDR: &str = "10.0.0.0/16";

fn err(op: &'static str, code: &str) -> Ec2Error {
    Ec2Error::new(op, code, format!("{code} (fake)"))
}

impl FakeEc2 {
    /// An instance with its primary ENI (no secondary IPs) and these limits.
    pub fn new(limits: InstanceLimits) -> Self {
        let primary = Ec2Eni {
            id: PRIMARY_ENI.into(),
            subnet_id: SUBNET.into(),
            primary_ip: Some(Ipv4Addr::new(10, 0, 0, 10)),
            secondary_ips: Vec::new(),
            prefixes: Vec::new(),
            device_index: Some(0),
            attachment_id: Some("attach-0".into()),
            delete_on_termination: Some(true),
            status: "in-use".into(),
            security_groups: vec!["sg-fake".into()],
            tags: BTreeMap::new(),
        };
        let state = State {
            enis: vec![primary],
            limits,
            next_ip: 16,
            next_prefix: 0,
            faults: BTreeMap::new(),
            calls: Vec::new(),
            created: 0,
        };
        Self { state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches an ENI ipamd did not create at `device`; with `ipv4 = false` one without any private IPv4 address
    /// (an EFA-only interface, an IPv6-only ENI).
    pub fn attach_foreign(&self, id: &str, device: u32, ipv4: bool) {
        let mut s = self.lock();
        let primary_ip = ipv4.then(|| s.ips(1)[0]);
        s.enis.push(Ec2Eni {
            id: id.into(),
            subnet_id: SUBNET.into(),
            primary_ip,
            secondary_ips: Vec::new(),
            prefixes: Vec::new(),
            device_index: Some(device),
            attachment_id: Some(format!("attach-{id}")),
            delete_on_termination: Some(false),
            status: "in-use".into(),
            security_groups: Vec::new(),
            tags: BTreeMap::new(),
        });
    }

    /// Makes `op` (e.g. `AssignPrivateIpAddresses:prefix`) fail with `code` until healed.
    pub fn fail(&self, op: &str, code: &str) {
        self.lock().faults.insert(op.into(), code.into());
    }

    pub fn heal(&self, op: &str) {
        self.lock().faults.remove(op);
    }

    /// Every call so far, e.g. `AssignPrivateIpAddresses:prefix eni-0 2`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn enis(&self) -> Vec<Ec2Eni> {
        self.lock().enis.clone()
    }

    fn call(&self, op: &'static str, key: &str, detail: String) -> Result<std::sync::MutexGuard<'_, State>, Ec2Error> {
        let mut s = self.lock();
        s.calls.push(format!("{key} {detail}").trim_end().to_string());
        match s.faults.get(key) {
            Some(code) => Err(err(op, &code.clone())),
            None => Ok(s),
        }
    }
}

impl State {
    fn ips(&mut self, n: u32) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|_| {
                self.next_ip += 1;
                Ipv4Addr::from(0x0a00_0000 + self.next_ip)
            })
            .collect()
    }
    fn prefixes(&mut self, n: u32) -> Vec<Ipv4Net> {
        (0..n)
            .map(|_| {
                self.next_prefix += 1;
                Ipv4Net::new(Ipv4Addr::from(0x0a00_8000 + 16 * self.next_prefix), 28).expect("/28")
            })
            .collect()
    }
    fn eni(&mut self, op: &'static str, id: &str) -> Result<&mut Ec2Eni, Ec2Error> {
        self.enis.iter_mut().find(|e| e.id == id).ok_or_else(|| err(op, "InvalidNetworkInterfaceID.NotFound"))
    }
}

impl Ec2Api for FakeEc2 {
    async fn attached_enis(&self, _instance_id: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        let s = self.call("DescribeNetworkInterfaces", "DescribeNetworkInterfaces", String::new())?;
        Ok(s.enis.iter().filter(|e| e.attachment_id.is_some()).cloned().collect())
    }

    async fn unattached_tagged_enis(&self, _k: &str, _v: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        let s = self.call("DescribeNetworkInterfaces", "DescribeNetworkInterfaces", "unattached".into())?;
        Ok(s.enis.iter().filter(|e| e.attachment_id.is_none()).cloned().collect())
    }

    async fn subnet(&self, _subnet_id: &str) -> Result<Subnet, Ec2Error> {
        drop(self.call("DescribeSubnets", "DescribeSubnets", String::new())?);
        Ok(Subnet { cidr: SUBNET_CIDR.parse().expect("cidr"), availability_zone: "us-east-1a".into() })
    }

    async fn subnets_in_zone(&self, _vpc_id: &str, _zone: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        drop(self.call("DescribeSubnets", "DescribeSubnets", "zone".into())?);
        Ok(vec![SubnetInfo {
            id: SUBNET.into(),
            cidr: SUBNET_CIDR.parse().expect("cidr"),
            free: 60_000,
            cni_role: None,
        }])
    }

    async fn instance_limits(&self, _instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        Ok(self.call("DescribeInstanceTypes", "DescribeInstanceTypes", String::new())?.limits)
    }

    async fn create_eni(&self, new: &NewEni) -> Result<Ec2Eni, Ec2Error> {
        let key = if new.prefix_count > 0 { "CreateNetworkInterface:prefix" } else { "CreateNetworkInterface" };
        let mut s = self.call("CreateNetworkInterface", key, format!("{} {}", new.ip_count, new.prefix_count))?;
        s.created += 1;
        let id = format!("eni-{}", s.created);
        let primary_ip = s.ips(1)[0];
        let eni = Ec2Eni {
            id,
            subnet_id: new.subnet_id.clone(),
            primary_ip: Some(primary_ip),
            secondary_ips: s.ips(new.ip_count),
            prefixes: s.prefixes(new.prefix_count),
            device_index: None,
            attachment_id: None,
            delete_on_termination: None,
            status: "available".into(),
            security_groups: new.security_groups.clone(),
            tags: new.tags.clone(),
        };
        s.enis.push(eni.clone());
        Ok(eni)
    }

    async fn attach_eni(&self, eni_id: &str, _instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        const OP: &str = "AttachNetworkInterface";
        let mut s = self.call(OP, OP, format!("{eni_id} {device_index}"))?;
        let e = s.eni(OP, eni_id)?;
        e.device_index = Some(device_index);
        e.attachment_id = Some(format!("attach-{eni_id}"));
        e.delete_on_termination = Some(false);
        e.status = "in-use".into();
        Ok(format!("attach-{eni_id}"))
    }

    async fn set_delete_on_termination(&self, eni_id: &str, _attachment_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "ModifyNetworkInterfaceAttribute";
        self.call(OP, OP, eni_id.into())?.eni(OP, eni_id)?.delete_on_termination = Some(true);
        Ok(())
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let mut s = self.call(OP, OP, format!("{eni_id} {count}"))?;
        let ips = s.ips(count);
        s.eni(OP, eni_id)?.secondary_ips.extend(&ips);
        Ok(ips)
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses";
        self.call(OP, OP, format!("{eni_id} {}", ips.len()))?
            .eni(OP, eni_id)?
            .secondary_ips
            .retain(|i| !ips.contains(i));
        Ok(())
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let mut s = self.call(OP, "AssignPrivateIpAddresses:prefix", format!("{eni_id} {count}"))?;
        let got = s.prefixes(count);
        s.eni(OP, eni_id)?.prefixes.extend(&got);
        Ok(got)
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses";
        let mut s = self.call(OP, "UnassignPrivateIpAddresses:prefix", format!("{eni_id} {}", prefixes.len()))?;
        let e = s.eni(OP, eni_id)?;
        if let Some(p) = prefixes.iter().find(|p| !e.prefixes.contains(p)) {
            return Err(Ec2Error::new(OP, "InvalidParameterValue", format!("{p} not on {eni_id}")));
        }
        e.prefixes.retain(|p| !prefixes.contains(p));
        Ok(())
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DetachNetworkInterface";
        let mut s = self.call(OP, OP, attachment_id.into())?;
        if let Some(e) = s.enis.iter_mut().find(|e| e.attachment_id.as_deref() == Some(attachment_id)) {
            e.attachment_id = None;
            e.device_index = None;
            e.status = "available".into();
        }
        Ok(())
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DeleteNetworkInterface";
        self.call(OP, OP, eni_id.into())?.enis.retain(|e| e.id != eni_id);
        Ok(())
    }
}

/// IMDS for [`FakeEc2`]'s instance: what EC2 holds, at once.
#[derive(Debug)]
pub struct FakeEc2Imds(pub std::sync::Arc<FakeEc2>);

fn mac(device: u32) -> String {
    format!("02:fa:00:00:00:{device:02x}")
}

impl Metadata for FakeEc2Imds {
    async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let enis: Vec<Ec2Eni> = self.0.enis().into_iter().filter(|e| e.device_index.is_some()).collect();
        let fixed = match path {
            "instance-id" => Some(INSTANCE.to_string()),
            "instance-type" => Some("m5.large".into()),
            "placement/region" => Some("us-east-1".into()),
            "placement/availability-zone" => Some("us-east-1a".into()),
            "mac" => Some(mac(0)),
            "local-ipv4" => Some("10.0.0.10".into()),
            "network/interfaces/macs/" => Some(
                enis.iter().map(|e| format!("{}/", mac(e.device_index.unwrap_or(0)))).collect::<Vec<_>>().join("\n"),
            ),
            _ => None,
        };
        if let Some(v) = fixed {
            return Ok(v);
        }
        let not_found = || ImdsError::NotFound { path: path.into() };
        let rest = path.strip_prefix("network/interfaces/macs/").ok_or_else(not_found)?;
        let (m, key) = rest.split_once('/').ok_or_else(not_found)?;
        let e = enis.iter().find(|e| mac(e.device_index.unwrap_or(0)) == m).ok_or_else(not_found)?;
        let lines = |v: Vec<String>| v.join("\n");
        match key {
            "interface-id" => Ok(e.id.clone()),
            "device-number" => Ok(e.device_index.unwrap_or(0).to_string()),
            // Absent on an interface without IPv4, as in EC2's IMDS.
            "local-ipv4s" if e.primary_ip.is_some() => Ok(lines(
                e.primary_ip.into_iter().chain(e.secondary_ips.iter().copied()).map(|i| i.to_string()).collect(),
            )),
            "ipv4-prefix" if !e.prefixes.is_empty() => Ok(lines(e.prefixes.iter().map(ToString::to_string).collect())),
            "subnet-id" => Ok(SUBNET.into()),
            "subnet-ipv4-cidr-block" => Ok(SUBNET_CIDR.into()),
            "security-group-ids" => Ok("sg-fake".into()),
            "vpc-ipv4-cidr-blocks" => Ok("10.0.0.0/16".into()),
            "vpc-id" => Ok("vpc-fake".into()),
            _ => Err(not_found()),
        }
    }
}

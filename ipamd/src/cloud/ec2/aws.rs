//! [`Ec2Api`] on aws-sdk-ec2: each call passes the EC2_API_QPS bucket (every attempt), is retried per
//! [`super::retry`], reported to the [`CallMeter`], and its error classified into an [`ErrorKind`] here, once.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
};
use ipnet::Ipv4Net;

use super::ratelimit::TokenBucket;
use super::{
    CallMeter, Ec2Api, Ec2Eni, Ec2Error, ErrorKind, InstanceLimits, NewEni, Subnet, SubnetInfo, TAG_CNI_ROLE, retry,
};

/// aws-sdk-ec2 client behind the token bucket, with ipamd's own retries (see [`crate::cloud::ec2::retry`]).
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
    bucket: TokenBucket,
    meter: Arc<dyn CallMeter>,
}

impl AwsEc2 {
    /// Loads the standard AWS configuration (AWS_ENDPOINT_URL_EC2, credentials chain) for `region`; `endpoint`
    /// (AWS_EC2_ENDPOINT) overrides EC2's address. The SDK's retries are off: they would bypass EC2_API_QPS.
    pub async fn new(region: &str, endpoint: Option<&str>, qps: f64, burst: u32, meter: Arc<dyn CallMeter>) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(20))
            .build();
        let conf = aws_config::from_env()
            .region(aws_config::Region::new(region.to_string()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .load()
            .await;
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&conf);
        if let Some(url) = endpoint {
            ec2 = ec2.endpoint_url(url);
        }
        Self { client: aws_sdk_ec2::Client::from_conf(ec2.build()), bucket: TokenBucket::new(qps, burst), meter }
    }

    /// Sends one EC2 request through the bucket, retrying throttling, server errors and lost answers (where
    /// repeating is safe) with jittered exponential backoff; each attempt takes a token and is counted.
    async fn call<T, F, Fut>(&self, op: &'static str, mut send: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let mut attempt = 1;
        loop {
            let waited = self.bucket.acquire().await;
            if !waited.is_zero() {
                self.meter.ec2_throttle_wait(waited);
                tracing::debug!(op, waited_ms = waited.as_millis() as u64, "EC2 call delayed by EC2_API_QPS");
            }
            let started = std::time::Instant::now();
            let result = send().await;
            self.meter.ec2_call(op, started.elapsed(), result.as_ref().err().map(|e| e.code.as_str()));
            match result {
                Err(e) if retry::should_retry(op, &e, attempt) => {
                    let wait = retry::backoff(attempt);
                    tracing::info!(op, attempt, wait_ms = wait.as_millis() as u64, "EC2 {}: retrying", e.code);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl AwsEc2 {
    /// UnassignPrivateIpAddresses of secondary IPs or of prefixes.
    async fn unassign(
        &self,
        eni_id: &str,
        ips: Option<Vec<String>>,
        prefixes: Option<Vec<String>>,
    ) -> Result<(), Ec2Error> {
        const OP: &str = "UnassignPrivateIpAddresses";
        let (client, ips, prefixes) = (&self.client, &ips, &prefixes);
        self.call(OP, || async move {
            client
                .unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_private_ip_addresses(ips.clone())
                .set_ipv4_prefixes(prefixes.clone())
                .send()
                .await
                .map_err(sdk_err(OP))
        })
        .await?;
        Ok(())
    }
}

fn sdk_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &'static str,
) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E>) -> Ec2Error {
    use aws_sdk_ec2::error::SdkError;
    move |e| {
        let message =
            e.message().map(String::from).unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string());
        // The one place an SDK error is classified: by EC2's code when it sent one, else by what happened.
        match (&e, e.code()) {
            (_, Some(code)) => Ec2Error::new(op, code, message),
            (SdkError::DispatchFailure(_), None) => {
                Ec2Error::of_kind(op, ErrorKind::NoResponse, "DispatchFailure", message)
            }
            (SdkError::TimeoutError(_), None) => Ec2Error::of_kind(op, ErrorKind::NoResponse, "Timeout", message),
            (SdkError::ResponseError(_), None) => {
                Ec2Error::of_kind(op, ErrorKind::NoResponse, "ResponseError", message)
            }
            (_, None) => match e.raw_response().map(|r| r.status().as_u16()) {
                Some(status) if status >= 500 => {
                    Ec2Error::of_kind(op, ErrorKind::Server, format!("HTTP5xx {status}"), message)
                }
                _ => Ec2Error::of_kind(op, ErrorKind::Client, "Unknown", message),
            },
        }
    }
}

fn parse_ip(op: &'static str, s: Option<&str>) -> Result<Ipv4Addr, Ec2Error> {
    s.unwrap_or_default().parse().map_err(|_| Ec2Error::bad_response(op, format!("not an IPv4 address: {s:?}")))
}

fn parse_prefix(op: &'static str, s: Option<&str>) -> Result<Ipv4Net, Ec2Error> {
    s.unwrap_or_default().parse().map_err(|_| Ec2Error::bad_response(op, format!("not an IPv4 prefix: {s:?}")))
}

fn convert(op: &'static str, ni: &aws_sdk_ec2::types::NetworkInterface) -> Result<Ec2Eni, Ec2Error> {
    // No address at all is an interface without IPv4 (EFA-only, IPv6-only), not a bad answer.
    let primary_ip = match ni.private_ip_address() {
        None | Some("") => None,
        some => Some(parse_ip(op, some)?),
    };
    let mut secondary_ips = Vec::new();
    for p in ni.private_ip_addresses() {
        if p.primary() != Some(true) {
            secondary_ips.push(parse_ip(op, p.private_ip_address())?);
        }
    }
    secondary_ips.sort();
    let mut prefixes = Vec::new();
    for p in ni.ipv4_prefixes() {
        let text = p.ipv4_prefix().unwrap_or_default();
        let net: Ipv4Net =
            text.parse().map_err(|_| Ec2Error::bad_response(op, format!("not an IPv4 prefix: {text:?}")))?;
        // EC2 delegates /28s only; anything else would be expanded address by address (a /8: 16 million).
        if net.prefix_len() == super::PREFIX_LEN {
            prefixes.push(net);
        } else {
            tracing::warn!(eni = ni.network_interface_id().unwrap_or_default(), prefix = %net, "not a /28: ignored");
        }
    }
    prefixes.sort();
    let att = ni.attachment();
    Ok(Ec2Eni {
        id: ni.network_interface_id().unwrap_or_default().to_string(),
        subnet_id: ni.subnet_id().unwrap_or_default().to_string(),
        primary_ip,
        secondary_ips,
        prefixes,
        device_index: att.and_then(|a| a.device_index()).map(|d| d as u32),
        attachment_id: att.and_then(|a| a.attachment_id()).map(String::from),
        delete_on_termination: att.and_then(|a| a.delete_on_termination()),
        status: ni.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
        security_groups: ni.groups().iter().filter_map(|g| g.group_id().map(String::from)).collect(),
        tags: ni.tag_set().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect(),
    })
}

impl Ec2Api for AwsEc2 {
    async fn attached_enis(&self, instance_id: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        const OP: &str = "DescribeNetworkInterfaces";
        let client = &self.client;
        let filter = &Filter::builder().name("attachment.instance-id").values(instance_id).build();
        let out = self
            .call(OP, || async move {
                client.describe_network_interfaces().filters(filter.clone()).send().await.map_err(sdk_err(OP))
            })
            .await?;
        out.network_interfaces().iter().map(|n| convert(OP, n)).collect()
    }

    async fn unattached_tagged_enis(&self, tag_key: &str, tag_value: &str) -> Result<Vec<Ec2Eni>, Ec2Error> {
        const OP: &str = "DescribeNetworkInterfaces";
        let client = &self.client;
        let tag = &Filter::builder().name(format!("tag:{tag_key}")).values(tag_value).build();
        let available = &Filter::builder().name("status").values("available").build();
        let out = self
            .call(OP, || async move {
                client
                    .describe_network_interfaces()
                    .filters(tag.clone())
                    .filters(available.clone())
                    .send()
                    .await
                    .map_err(sdk_err(OP))
            })
            .await?;
        let enis: Vec<Ec2Eni> = out.network_interfaces().iter().map(|n| convert(OP, n)).collect::<Result<_, _>>()?;
        Ok(enis.into_iter().filter(|e| e.status == "available").collect())
    }

    async fn subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        const OP: &str = "DescribeSubnets";
        let client = &self.client;
        let out =
            self.call(OP, || async move {
                client.describe_subnets().subnet_ids(subnet_id).send().await.map_err(sdk_err(OP))
            })
            .await?;
        let s = out.subnets().first();
        let cidr = s.and_then(|s| s.cidr_block()).unwrap_or_default();
        Ok(Subnet {
            cidr: cidr.parse().map_err(|_| Ec2Error::bad_response(OP, format!("subnet {subnet_id} CIDR {cidr:?}")))?,
            availability_zone: s.and_then(|s| s.availability_zone()).unwrap_or_default().to_string(),
        })
    }

    async fn subnets_in_zone(&self, vpc_id: &str, zone: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        const OP: &str = "DescribeSubnets";
        let client = &self.client;
        let filters = &[
            Filter::builder().name("vpc-id").values(vpc_id).build(),
            Filter::builder().name("availability-zone").values(zone).build(),
        ];
        let out = self
            .call(OP, || async move {
                client.describe_subnets().set_filters(Some(filters.to_vec())).send().await.map_err(sdk_err(OP))
            })
            .await?;
        let mut subnets = Vec::new();
        for s in out.subnets() {
            let Some(cidr) = s.cidr_block().and_then(|c| c.parse().ok()) else { continue };
            subnets.push(SubnetInfo {
                id: s.subnet_id().unwrap_or_default().to_string(),
                cidr,
                free: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
                cni_role: s
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(TAG_CNI_ROLE))
                    .and_then(|t| t.value())
                    .map(String::from),
            });
        }
        Ok(subnets)
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        const OP: &str = "DescribeInstanceTypes";
        let client = &self.client;
        let out = self
            .call(OP, || async move {
                client
                    .describe_instance_types()
                    .instance_types(InstanceType::from(instance_type))
                    .send()
                    .await
                    .map_err(sdk_err(OP))
            })
            .await?;
        out.instance_types()
            .first()
            .and_then(limits_from)
            .ok_or_else(|| Ec2Error::bad_response(OP, format!("no network limits for instance type {instance_type}")))
    }
    async fn create_eni(&self, eni: &NewEni) -> Result<Ec2Eni, Ec2Error> {
        const OP: &str = "CreateNetworkInterface";
        let client = &self.client;
        let tags = &TagSpecification::builder()
            .resource_type(ResourceType::NetworkInterface)
            .set_tags(Some(eni.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .build();
        let out = self
            .call(OP, || async move {
                let mut req = client
                    .create_network_interface()
                    .subnet_id(&eni.subnet_id)
                    .set_groups(Some(eni.security_groups.clone()))
                    .description(&eni.description)
                    .tag_specifications(tags.clone());
                if eni.ip_count > 0 {
                    req = req.secondary_private_ip_address_count(eni.ip_count as i32);
                }
                if eni.prefix_count > 0 {
                    req = req.ipv4_prefix_count(eni.prefix_count as i32);
                }
                req.send().await.map_err(sdk_err(OP))
            })
            .await?;
        let ni = out.network_interface().ok_or_else(|| Ec2Error::bad_response(OP, "no NetworkInterface"))?;
        convert(OP, ni)
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        const OP: &str = "AttachNetworkInterface";
        let client = &self.client;
        let out = self
            .call(OP, || async move {
                client
                    .attach_network_interface()
                    .network_interface_id(eni_id)
                    .instance_id(instance_id)
                    .device_index(device_index as i32)
                    // The default card: the one whose ENIs the limits count (see `limits_from`).
                    .network_card_index(0)
                    .send()
                    .await
                    .map_err(sdk_err(OP))
            })
            .await?;
        out.attachment_id().map(String::from).ok_or_else(|| Ec2Error::bad_response(OP, "no AttachmentId"))
    }

    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "ModifyNetworkInterfaceAttribute";
        let client = &self.client;
        let change = &NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment_id)
            .delete_on_termination(true)
            .build();
        self.call(OP, || async move {
            client
                .modify_network_interface_attribute()
                .network_interface_id(eni_id)
                .attachment(change.clone())
                .send()
                .await
                .map_err(sdk_err(OP))
        })
        .await?;
        Ok(())
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let client = &self.client;
        let out = self
            .call(OP, || async move {
                client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .secondary_private_ip_address_count(count as i32)
                    .send()
                    .await
                    .map_err(sdk_err(OP))
            })
            .await?;
        out.assigned_private_ip_addresses().iter().map(|a| parse_ip(OP, a.private_ip_address())).collect()
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.unassign(eni_id, Some(ips.iter().map(Ipv4Addr::to_string).collect()), None).await
    }

    async fn assign_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const OP: &str = "AssignPrivateIpAddresses";
        let client = &self.client;
        let out = self
            .call(OP, || async move {
                client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .ipv4_prefix_count(count as i32)
                    .send()
                    .await
                    .map_err(sdk_err(OP))
            })
            .await?;
        out.assigned_ipv4_prefixes().iter().map(|p| parse_prefix(OP, p.ipv4_prefix())).collect()
    }

    async fn unassign_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        self.unassign(eni_id, None, Some(prefixes.iter().map(Ipv4Net::to_string).collect())).await
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DetachNetworkInterface";
        let client = &self.client;
        self.call(OP, || async move {
            client.detach_network_interface().attachment_id(attachment_id).send().await.map_err(sdk_err(OP))
        })
        .await?;
        Ok(())
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "DeleteNetworkInterface";
        let client = &self.client;
        self.call(OP, || async move {
            client.delete_network_interface().network_interface_id(eni_id).send().await.map_err(sdk_err(OP))
        })
        .await?;
        Ok(())
    }
}

/// An instance type's limits for pods: ENIs of the default network card (instances with several cards list
/// every card's in `MaximumNetworkInterfaces`: see [`max_pods::pod_eni_limit`]), IPv4 addresses per ENI, vCPUs.
pub(crate) fn limits_from(t: &aws_sdk_ec2::types::InstanceTypeInfo) -> Option<InstanceLimits> {
    let net = t.network_info()?;
    let (wide, ipv4) = (net.maximum_network_interfaces()?, net.ipv4_addresses_per_interface()?);
    let cards: Vec<max_pods::NetworkCard> = net
        .network_cards()
        .iter()
        .filter_map(|c| {
            let index = u32::try_from(c.network_card_index()?).ok()?;
            Some(max_pods::NetworkCard { index, max_enis: u32::try_from(c.maximum_network_interfaces()?).ok()? })
        })
        .collect();
    let default = net.default_network_card_index().and_then(|i| u32::try_from(i).ok());
    let max_enis = max_pods::pod_eni_limit(u32::try_from(wide).ok()?, &cards, default);
    let vcpus = t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0).max(0) as u32;
    (max_enis > 0 && ipv4 > 1).then_some(InstanceLimits { max_enis, ipv4_per_eni: ipv4 as u32, vcpus })
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{InstanceTypeInfo, NetworkCardInfo, NetworkInfo, VCpuInfo};

    use super::*;

    /// DescribeInstanceTypes' answer for a type with `cards` network cards of `per_card` ENIs each.
    fn info(wide: i32, cards: i32, per_card: i32, ipv4: i32) -> InstanceTypeInfo {
        let mut net = NetworkInfo::builder()
            .maximum_network_interfaces(wide)
            .ipv4_addresses_per_interface(ipv4)
            .default_network_card_index(0);
        for i in 0..cards {
            net = net.network_cards(
                NetworkCardInfo::builder().network_card_index(i).maximum_network_interfaces(per_card).build(),
            );
        }
        InstanceTypeInfo::builder()
            .network_info(net.build())
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(192).build())
            .build()
    }

    /// p5.48xlarge (64 ENIs over 32 cards, 2 on card 0) plans 2 ENIs, as EKS' 100 max pods; trn1.32xlarge 5
    /// (EKS: 247); a single-card type its one limit. Before: the instance-wide 64 and 40, so every round tried
    /// an attach card 0 refuses.
    #[test]
    fn the_default_network_cards_enis_are_the_limit() {
        for (name, t, enis, ipv4) in [
            ("p5.48xlarge", info(64, 32, 2, 50), 2, 50),
            ("trn1.32xlarge", info(40, 8, 5, 50), 5, 50),
            ("m5.large", info(3, 1, 3, 10), 3, 10),
        ] {
            let l = limits_from(&t).unwrap();
            assert_eq!((l.max_enis, l.ipv4_per_eni, l.vcpus), (enis, ipv4, 192), "{name}");
        }
        let no_cards = InstanceTypeInfo::builder()
            .network_info(NetworkInfo::builder().maximum_network_interfaces(4).ipv4_addresses_per_interface(15).build())
            .build();
        assert_eq!(limits_from(&no_cards).map(|l| l.max_enis), Some(4));
        assert!(limits_from(&InstanceTypeInfo::builder().build()).is_none());
    }
}

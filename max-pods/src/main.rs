//! `vpcctl-max-pods` (run as `vpcctl max-pods`): kubelet's `--max-pods` for an instance type, from its limits in
//! DescribeInstanceTypes, with the usual AWS credentials and region (so it runs off-node too). It replaces the
//! shell calculator EKS operators use; the formula is in the library ([`max_pods`]).
//!
//! `vpcctl max-pods --instance-type T [--prefix-delegation] [--custom-networking] [--max-eni N] [-o text|json]`

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::InstanceType;
use clap::{Parser, ValueEnum};
use max_pods::{InstanceNetwork, Mode};
use serde_json::json;

#[derive(Parser)]
#[command(name = "vpcctl max-pods", version, about = "Max pods for an instance type, as EKS computes it")]
struct Cli {
    /// EC2 instance type, e.g. m5.large.
    #[arg(long)]
    instance_type: String,
    /// ENABLE_PREFIX_DELEGATION=true on the node (/28 prefixes; capped at 110 up to 30 vCPUs, 250 above).
    #[arg(long)]
    prefix_delegation: bool,
    /// AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true on the node (the primary ENI serves no pods).
    #[arg(long)]
    custom_networking: bool,
    /// MAX_ENI on the node.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_eni: Option<u32>,
    /// AWS region (default: the SDK's usual chain: AWS_REGION, the profile, IMDS).
    #[arg(long)]
    region: Option<String>,
    /// `text` prints the number only (for scripts, as the EKS calculator does); `json` shows the inputs too.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    /// Accepted for symmetry with vpcctl's other commands: same as text.
    Table,
}

async fn describe(client: &aws_sdk_ec2::Client, instance_type: &str) -> Result<InstanceNetwork> {
    let out = client
        .describe_instance_types()
        .instance_types(InstanceType::from(instance_type))
        .send()
        .await
        .map_err(|e| match e.code() {
            Some(code) => anyhow::anyhow!("{code}: {}", e.message().unwrap_or_default()),
            None => anyhow::anyhow!("{}", DisplayErrorContext(&e)),
        })
        .with_context(|| format!("DescribeInstanceTypes {instance_type}"))?;
    let Some(t) = out.instance_types().first() else {
        bail!("DescribeInstanceTypes knows no instance type {instance_type:?}");
    };
    let net = t.network_info();
    let (Some(wide), Some(ipv4)) =
        (net.and_then(|n| n.maximum_network_interfaces()), net.and_then(|n| n.ipv4_addresses_per_interface()))
    else {
        bail!("DescribeInstanceTypes gives no network limits for {instance_type}");
    };
    // Several network cards: pods use the default card's ENIs (see max_pods::pod_eni_limit).
    let cards: Vec<max_pods::NetworkCard> = net
        .map(|n| n.network_cards())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let index = u32::try_from(c.network_card_index()?).ok()?;
            Some(max_pods::NetworkCard { index, max_enis: u32::try_from(c.maximum_network_interfaces()?).ok()? })
        })
        .collect();
    let default = net.and_then(|n| n.default_network_card_index()).and_then(|i| u32::try_from(i).ok());
    let max_enis = max_pods::pod_eni_limit(wide.max(0) as u32, &cards, default);
    let vcpus = t.v_cpu_info().and_then(|v| v.default_v_cpus());
    let Some(vcpus) = vcpus else { bail!("DescribeInstanceTypes gives no vCPU count for {instance_type}") };
    Ok(InstanceNetwork { max_enis, ipv4_per_eni: ipv4 as u32, vcpus: vcpus as u32 })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut loader = aws_config::from_env();
    if let Some(r) = &cli.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let conf = loader.load().await;
    if conf.region().is_none() {
        bail!("no AWS region: pass --region or set AWS_REGION");
    }
    let net = describe(&aws_sdk_ec2::Client::new(&conf), &cli.instance_type).await?;
    let mode = Mode {
        prefix_delegation: cli.prefix_delegation,
        custom_networking: cli.custom_networking,
        max_eni: cli.max_eni,
    };
    let m = max_pods::max_pods(net, mode);
    if cli.output == Output::Json {
        let v = json!({
            "instance_type": cli.instance_type,
            "max_enis": net.max_enis,
            "ipv4_per_eni": net.ipv4_per_eni,
            "vcpus": net.vcpus,
            "prefix_delegation": mode.prefix_delegation,
            "custom_networking": mode.custom_networking,
            "max_eni": mode.max_eni,
            "pod_enis": m.pod_enis,
            "pod_ips_per_eni": m.per_eni,
            "by_addresses": m.by_addresses,
            "ceiling": m.ceiling,
            "max_pods": m.max_pods,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", m.max_pods);
    }
    Ok(())
}

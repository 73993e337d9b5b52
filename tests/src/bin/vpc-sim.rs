//! `vpc-sim`: local VPC emulation on LocalStack EC2.
//!
//! `vpc-sim ipamd-demo` runs one node's ipamd against a throw-away VPC in LocalStack with the IMDS emulator,
//! shows the warm pool through `vpcctl`, hands out a few pod IPs, shows the pool again and cleans up.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use vpc_sim::fixture::{add_retrying, del};
use vpc_sim::imds::ImdsEmulator;
use vpc_sim::ipamd_proc::{Ipamd, sibling_binary};
use vpc_sim::localstack::{self, TestVpc};

#[derive(Parser)]
#[command(
    name = "vpc-sim",
    version,
    about = "Local VPC emulation on LocalStack EC2"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One node's ipamd on LocalStack: warm pool, a few allocations, clean-up.
    IpamdDemo {
        #[arg(long, default_value = "m5.large")]
        instance_type: String,
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Extra ipamd settings, KEY=VALUE (repeatable).
        #[arg(long = "ipamd-env")]
        ipamd_env: Vec<String>,
    },
}

fn vpcctl(ipamd: &Ipamd, args: &[&str]) -> Result<()> {
    println!("\n$ vpcctl {}", args.join(" "));
    let status = Command::new(sibling_binary("vpcctl"))
        .arg("--socket")
        .arg(&ipamd.socket)
        .args(args)
        .status()?;
    if !status.success() {
        bail!("vpcctl {} failed: {status}", args.join(" "));
    }
    Ok(())
}

async fn ipamd_demo(instance_type: &str, pods: usize, env: &[String]) -> Result<()> {
    let ec2 = localstack::ec2_client();
    let tag = format!("demo-{}", std::process::id());
    let vpc = TestVpc::create(
        &ec2,
        &tag,
        "10.0.0.0/16",
        &["10.0.0.0/20"],
        instance_type,
        1,
    )
    .await
    .context("creating the demo VPC (is LocalStack running? scripts/localstack.sh start)")?;
    println!(
        "LocalStack: {} with instance {} ({instance_type})",
        vpc.vpc_id, vpc.instance_ids[0]
    );
    let result = run_node(&ec2, &vpc, pods, env).await;
    let errors = vpc.destroy(&ec2).await;
    if !errors.is_empty() {
        eprintln!("clean-up left errors: {errors:?}");
    }
    println!("\ncleaned up {}", vpc.vpc_id);
    result
}

async fn run_node(
    ec2: &aws_sdk_ec2::Client,
    vpc: &TestVpc,
    pods: usize,
    env: &[String],
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let imds = ImdsEmulator::serve(
        listener,
        ec2.clone(),
        &vpc.instance_ids[0],
        localstack::REGION,
    )?;
    let dir = tempfile::Builder::new().prefix("vpcsim-demo-").tempdir()?;
    let env: Vec<(&str, String)> = env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k, v.to_string()))
                .context("--ipamd-env takes KEY=VALUE")
        })
        .collect::<Result<_>>()?;
    let mut ipamd = Ipamd::spawn(dir.path(), &imds.endpoint(), &env)?;
    let took = ipamd.wait_serving(Duration::from_secs(60)).await?;
    println!(
        "ipamd SERVING {} ms after start (IMDS emulator {})",
        took.as_millis(),
        imds.addr
    );
    vpcctl(&ipamd, &["status"])?;
    vpcctl(&ipamd, &["enis"])?;
    println!();
    for i in 0..pods {
        let r = add_retrying(&ipamd, &format!("demo-{i}"), Duration::from_secs(30)).await?;
        println!(
            "AddNetwork default/pod-demo-{i} -> {} on {} (device {}, route table {})",
            r.ipv4_addr, r.eni_id, r.device_number, r.route_table
        );
    }
    // The first pod left less than one ENI of free IPs: give the warm ENI a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    vpcctl(&ipamd, &["enis", "-o", "wide"])?;
    vpcctl(&ipamd, &["pods"])?;
    let r = del(&ipamd, "demo-0").await?;
    println!(
        "\nDelNetwork pod-demo-0 -> released {} (cooling before reuse)",
        r.ipv4_addr
    );
    vpcctl(&ipamd, &["status"])?;
    ipamd.terminate().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::IpamdDemo {
            instance_type,
            pods,
            ipamd_env,
        } => ipamd_demo(&instance_type, pods, &ipamd_env).await,
    }
}

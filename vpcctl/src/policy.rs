//! `vpcctl policy status|explain`: NetworkPolicy enforcement on this node, and the verdict on one flow with the
//! policies and rules that decide it.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use vpc_cni_proto::v1 as pb;
use vpc_cni_proto::v1::introspection_client::IntrospectionClient;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Whether policies are in force: the table's generation, sizes, and what of the policies was dropped.
    Status,
    /// Both ends' verdicts on a new flow: `vpcctl policy explain NS/POD NS/POD tcp/80` (an end may be an IPv4
    /// address).
    Explain { from: String, to: String, port: String },
}

fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

pub async fn run(
    mut client: IntrospectionClient<tonic::transport::Channel>,
    cmd: PolicyCmd,
    as_json: bool,
) -> Result<()> {
    match cmd {
        PolicyCmd::Status => {
            let s = client.get_policy_status(pb::GetPolicyStatusRequest {}).await.map_err(rpc)?.into_inner();
            if as_json {
                println!(
                    "{:#}",
                    json!({"enabled": s.enabled, "synced": s.synced, "generation": s.generation,
                        "applied_unix": s.applied_unix, "policies": s.policies, "local_pods": s.local_pods,
                        "chains": s.chains, "rules": s.rules, "problems": s.problems, "error": s.error,
                        "last_change": s.last_change, "repairs": s.repairs})
                );
            } else if !s.enabled {
                println!("network policy  off (ENABLE_NETWORK_POLICY=false)");
            } else {
                let state = if !s.synced { "waiting for the API server's lists" } else { "in force" };
                println!(
                    "network policy  {state}: generation {} (unix {}, last change: {})",
                    s.generation, s.applied_unix, s.last_change
                );
                println!(
                    "table           {} policies, {} chains, {} rules, {} pods of this node",
                    s.policies, s.chains, s.rules, s.local_pods
                );
                if s.repairs > 0 {
                    println!(
                        "repaired        {} time(s): the table read back differed from what was loaded",
                        s.repairs
                    );
                }
                if !s.error.is_empty() {
                    println!("error           {}", s.error);
                }
                for p in &s.problems {
                    println!("dropped         {p}");
                }
            }
        }
        PolicyCmd::Explain { from, to, port } => {
            let (protocol, number) = port.split_once('/').unwrap_or(("tcp", port.as_str()));
            let number: u32 = number.parse().map_err(|_| anyhow::anyhow!("'{port}' is not PROTO/PORT, e.g. tcp/80"))?;
            let req = pb::ExplainPolicyRequest {
                from: from.clone(),
                to: to.clone(),
                protocol: protocol.into(),
                port: number,
            };
            let r = client.explain_policy(req).await.map_err(rpc)?.into_inner();
            let side = |s: &Option<pb::PolicySide>| s.clone().unwrap_or_default();
            let (eg, ing) = (side(&r.egress), side(&r.ingress));
            if as_json {
                let j = |s: &pb::PolicySide| json!({"isolated_by": s.isolated_by, "allowed_by": s.allowed_by, "allows": s.allows});
                println!("{:#}", json!({"allowed": r.allowed, "egress": j(&eg), "ingress": j(&ing)}));
            } else {
                println!("{from} -> {to} {protocol}/{number}: {}", if r.allowed { "ALLOWED" } else { "DENIED" });
                for (what, who, s) in [("egress ", &from, &eg), ("ingress", &to, &ing)] {
                    let verdict = match (s.isolated_by.is_empty(), s.allows) {
                        (true, _) => "open (no policy selects it)".to_string(),
                        (false, true) => format!("allowed by {}", s.allowed_by.join(", ")),
                        (false, false) => format!("denied: isolated by {}, no rule matches", s.isolated_by.join(", ")),
                    };
                    println!("  {what} of {who}: {verdict}");
                }
            }
        }
    }
    Ok(())
}

//! Keeps the node's SNAT in place, in a loop of its own: the nftables table `ip vpc-cni` (read back from the kernel
//! each round and applied again when it differs: a `nft flush ruleset` or a firewall reload removes it) and the
//! NodePort routing rule (`fwmark 0x80/0x80 lookup main`). Pod IPAM never waits on it: when `nft` is missing,
//! fails or hangs (each run is killed after [`snat::NFT_TIMEOUT`]), GetStatus (`snat`), the metric
//! `ipamd_snat_broken` and a Warning Event say so and why, and the next round tries again.

use std::sync::Arc;
use std::time::Duration;

use datapath::HostNet;
use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::k8s::events::Recorder;
use crate::node::snat::{self, SnatConfig};
use crate::pool::PoolHandle;
use crate::tasks::Heartbeat;
use crate::telemetry::Telemetry;

pub struct SnatKeeper<N: HostNet> {
    /// The table wanted, its VPC CIDRs replaced by [`SnatKeeper::vpc_cidrs`]'s.
    pub config: SnatConfig,
    /// The VPC's CIDRs as the reconcile loop reads them from IMDS (a CIDR associated later shows up here).
    pub vpc_cidrs: watch::Receiver<Vec<String>>,
    pub net: Arc<N>,
    pub pool: PoolHandle,
    pub telemetry: Telemetry,
    pub events: Recorder,
    /// Between rounds (a change of the VPC's CIDRs starts one at once).
    pub interval: Duration,
    pub timeout: Duration,
}

/// What a round changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Nothing,
    Applied,
    /// The kernel's table was not what was applied (flushed, edited), or the NodePort rule was gone.
    Repaired,
}

impl<N: HostNet> SnatKeeper<N> {
    fn want(&self) -> SnatConfig {
        let cidrs: Vec<Ipv4Net> = self.vpc_cidrs.borrow().iter().filter_map(|c| c.parse().ok()).collect();
        let mut want = self.config.clone();
        if !cidrs.is_empty() {
            want.vpc_cidrs = cidrs;
        }
        want
    }

    /// Runs forever; each round beats `heartbeat` (a round takes at most two `nft` runs).
    pub async fn run(mut self, heartbeat: Heartbeat) {
        let mut applied: Option<(SnatConfig, String)> = None;
        let mut broken = false;
        loop {
            heartbeat.beat(self.timeout * 2 + Duration::from_secs(5));
            let want = self.want();
            match self.round(&want, &mut applied).await {
                Ok(done) => {
                    self.telemetry.set_snat(Ok("in place".into()));
                    let was_broken = std::mem::take(&mut broken);
                    let what =
                        format!("table ip {} (VPC {:?}, external {})", snat::TABLE, want.vpc_cidrs, want.external);
                    if done != Done::Nothing {
                        self.telemetry.awscni().connmark_reconciled(true);
                    }
                    match done {
                        Done::Nothing => {}
                        Done::Applied => self.pool.emit("snat-applied", what.clone()),
                        Done::Repaired => {
                            tracing::warn!("node SNAT was not in place (flushed or changed by another tool): restored");
                            self.pool.emit("snat-repaired", what.clone());
                        }
                    }
                    if done == Done::Repaired || was_broken {
                        self.events.normal("SNATRestored", "ApplySNAT", format!("node SNAT in place again: {what}"));
                    }
                }
                Err(why) => {
                    self.telemetry.set_snat(Err(why.clone()));
                    self.telemetry.awscni().connmark_reconciled(false);
                    if !std::mem::replace(&mut broken, true) {
                        tracing::warn!("node SNAT cannot be put in place (pods still get IPs): {why}");
                        self.pool.emit("snat-broken", why.clone());
                        self.events.warning("SNATFailed", "ApplySNAT", format!("node SNAT is not in place: {why}"));
                    }
                }
            }
            heartbeat.beat(self.interval * 2 + Duration::from_secs(5));
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                changed = self.vpc_cidrs.changed() => {
                    if changed.is_err() {
                        // The reconcile loop is gone (shutting down): no more changes will come.
                        tokio::time::sleep(self.interval).await;
                    }
                }
            }
        }
    }

    async fn round(&self, want: &SnatConfig, applied: &mut Option<(SnatConfig, String)>) -> Result<Done, String> {
        let rule_added = datapath::ensure_nodeport_rule(self.net.as_ref(), want.nodeport_mark)
            .await
            .map_err(|e| format!("NodePort rule: {e}"))?;
        let external = datapath::ensure_external_service_rules(self.net.as_ref(), &want.external_service_cidrs)
            .await
            .map_err(|e| format!("AWS_EXTERNAL_SERVICE_CIDRS rules: {e}"))?;
        let rule_added = rule_added || external > 0;
        let mut drifted = rule_added;
        if let Some((cfg, listing)) = applied.as_ref()
            && cfg == want
        {
            match snat::listing(self.timeout).await.map_err(|e| e.to_string())? {
                Some(now) if now == *listing => return Ok(if rule_added { Done::Repaired } else { Done::Nothing }),
                _ => drifted = true,
            }
        }
        let listing = snat::apply(want, self.timeout).await.map_err(|e| e.to_string())?;
        *applied = Some((want.clone(), listing));
        Ok(if drifted { Done::Repaired } else { Done::Applied })
    }
}

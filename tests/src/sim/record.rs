//! `<state-dir>/sim.json`: what a run made (VPC ids, ipamd pids), written as soon as it exists, so the next
//! run — or `vpc-sim status` — can find it even if this one crashed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::localstack::TestVpc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRecord {
    pub prefix: String,
    pub vpc: TestVpc,
    pub pids: Vec<u32>,
    /// What `--kube` made in the API server.
    #[serde(default)]
    pub kube: Option<crate::sim::cluster::SimKube>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("sim.json")
}

impl SimRecord {
    pub fn load(state_dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path(state_dir)).ok()?).ok()
    }

    pub fn save(&self, state_dir: &Path) {
        let tmp = state_dir.join("sim.json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("json")).is_ok() {
            let _ = std::fs::rename(&tmp, path(state_dir));
        }
    }

    pub fn remove(state_dir: &Path) {
        let _ = std::fs::remove_file(path(state_dir));
    }

    /// Kills the recorded ipamd processes that are still ipamd (a pid may have been reused).
    pub fn kill_processes(&self) {
        for pid in &self.pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("ipamd") {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

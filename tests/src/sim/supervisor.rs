//! What the kubelet does for the ipamd DaemonSet pod: when a node's ipamd exits (a crash, `kill -9` in the
//! chaos suite), start it again after a second, with the same environment and state directory.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::ipamd_proc::Ipamd;

pub struct Supervised {
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How a node's ipamd is started again.
#[derive(Clone)]
pub struct Launch {
    pub node: usize,
    pub netns: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Launch {
    pub fn spawn(&self) -> Result<Ipamd, crate::ipamd_proc::ProcError> {
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Ipamd::spawn_in(Some(&self.netns), &self.dir, "http://169.254.169.254", &env)
    }
}

impl Supervised {
    /// Takes over a running `ipamd`.
    pub fn new(ipamd: Ipamd, launch: Launch) -> Self {
        let socket = ipamd.socket.clone();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(ipamd, launch, rx));
        Self { socket, stop, task }
    }

    /// Stops ipamd (SIGTERM) and the supervision.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn supervise(mut ipamd: Ipamd, launch: Launch, mut stop: watch::Receiver<bool>) {
    const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
    loop {
        let exited = tokio::select! {
            _ = stop.changed() => None,
            status = ipamd.wait_exit(FOREVER) => Some(status),
        };
        let Some(status) = exited else {
            ipamd.terminate().await;
            return;
        };
        eprintln!("vpc-sim: ipamd of node {} exited ({status:?}); restarting in 1 s", launch.node);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match launch.spawn() {
                Ok(p) => {
                    ipamd = p;
                    break;
                }
                Err(e) => eprintln!("vpc-sim: restarting ipamd of node {}: {e}", launch.node),
            }
        }
    }
}

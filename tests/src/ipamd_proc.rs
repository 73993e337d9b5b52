//! Runs the real `ipamd` binary as a child process (so tests can SIGKILL it) and talks to it over its socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use vpc_cni_proto::v1::{introspection_client::IntrospectionClient, ipam_client::IpamClient};

/// Finds a binary built next to the running executable (target/<profile>/), or in VPC_CNI_BIN_DIR.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VPC_CNI_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first (make test does)", p.display());
    p
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("spawning ipamd: {0}")]
    Spawn(std::io::Error),
    #[error("ipamd did not become SERVING within {0:?}; log:\n{1}")]
    NotServing(Duration, String),
    #[error("ipamd exited early ({0}); log:\n{1}")]
    Exited(String, String),
}

/// A running ipamd.
#[derive(Debug)]
pub struct Ipamd {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub started: Instant,
}

impl Ipamd {
    /// Starts ipamd with `env` (plus AWS_* for LocalStack and the IMDS endpoint) writing its log to
    /// `<dir>/ipamd.log`; socket and state live in `dir`.
    pub fn spawn(dir: &Path, imds_endpoint: &str, env: &[(&str, String)]) -> Result<Self, ProcError> {
        Self::spawn_in(None, dir, imds_endpoint, env)
    }

    /// As [`Ipamd::spawn`], inside network namespace `netns` (through `ip netns exec`, which execs ipamd, so
    /// the child's pid is ipamd's) when given.
    pub fn spawn_in(
        netns: Option<&str>,
        dir: &Path,
        imds_endpoint: &str,
        env: &[(&str, String)],
    ) -> Result<Self, ProcError> {
        let socket = dir.join("ipamd.sock");
        let log = dir.join("ipamd.log");
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(ProcError::Spawn)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(sibling_binary("ipamd"));
                c
            }
            None => Command::new(sibling_binary("ipamd")),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(crate::localstack::aws_env(&crate::localstack::endpoint()))
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_endpoint)
            .env("IPAMD_SOCKET", &socket)
            .env("IPAMD_STATE_DIR", dir)
            .env("METRICS_BIND_ADDR", "off")
            .env("NO_COLOR", "1")
            // Outside a node netns ipamd must leave the host alone; vpc-sim turns this on per node.
            .env("IPAMD_HOST_NETWORK", "false")
            // Never pick up an aws-node checkpoint of the machine running the tests.
            .env("IPAMD_AWS_NODE_CHECKPOINT", "off")
            .env("LOG_LEVEL", "info,aws=warn,aws_smithy_runtime=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(ProcError::Spawn)?;
        Ok(Self { child, socket, log, started: Instant::now() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        vpc_cni_proto::uds::connect(&self.socket, Some(Duration::from_secs(10))).await
    }

    pub async fn ipam(&self) -> IpamClient<Channel> {
        IpamClient::new(self.channel().await.expect("connect to ipamd"))
    }

    pub async fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel().await.expect("connect to ipamd"))
    }

    /// Health as the kubelet probe would see it; `None` when the socket does not answer yet.
    pub async fn serving(&self) -> Option<bool> {
        let ch = self.channel().await.ok()?;
        let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.ok()?;
        Some(r.into_inner().status == ServingStatus::Serving as i32)
    }

    /// Waits for SERVING; returns the time since spawn.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<Duration, ProcError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcError::Exited(status.to_string(), self.log_text()));
            }
            if self.serving().await == Some(true) {
                return Ok(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ProcError::NotServing(timeout, self.log_text()))
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
        }
    }
}

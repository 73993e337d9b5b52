//! The node daemon. Configuration errors exit with status 2 and a message naming the variable; a start that
//! fails, or a supervised task that dies, exits with status 1 (at once: the kubelet restarts ipamd, and its
//! checkpoint is durable); SIGTERM exits 0 once every task has stopped.

use ipamd::config::{Config, ConfigError};

// Two workers whatever the node's size: ipamd's load is a few requests per pod, and every worker costs memory
// (a 96-vCPU node would otherwise get 96).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Parse(e)) => e.exit(),
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) =
        ipamd::telemetry::logging::init(cfg.log_format, &cfg.log_filter().0, cfg.aws_vpc_k8s_cni_log_file.as_ref())
    {
        eprintln!("ipamd: invalid configuration: AWS_VPC_K8S_CNI_LOG_FILE: cannot open {e}");
        std::process::exit(2);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // `exit` rather than a return: dropping the runtime would wait for blocking work still running.
    match ipamd::daemon::run(cfg).await {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    }
}

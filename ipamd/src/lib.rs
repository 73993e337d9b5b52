//! ipamd: keeps a warm pool of ENIs and secondary IPs from EC2 and hands them to the CNI plugin over gRPC on a
//! local Unix socket.
//!
//! Layout: [`config`] (env/flags) → [`imds`] (node bootstrap) and [`ec2`] (the EC2 boundary) feed the
//! [`reconcile`] loop, which observes, asks the [`pool`] actor for a [`planner`] decision and applies it;
//! the actor owns the [`datastore`] and persists it through [`checkpoint`]; [`grpc`] and [`metrics`] are thin
//! adapters over the actor; [`k8s`] is the optional Kubernetes side (ENIConfig custom networking through
//! [`placement`], node facts, Events, pod-aware clean-up); [`daemon`] wires it all.

pub mod checkpoint;
pub mod config;
pub mod ctjanitor;
pub mod daemon;
pub mod datastore;
pub mod deferred;
pub mod ec2;
#[cfg(test)]
pub(crate) mod ec2_fake;
pub mod ec2sync;
pub mod grpc;
/// The shared datapath crate under the name ipamd's modules have always used.
pub use datapath as hostnet;
pub mod imds;
pub mod install;
pub mod k8s;
pub mod metrics;
pub mod migrate;
pub mod placement;
pub mod planner;
pub mod pool;
pub mod ratelimit;
pub mod reconcile;
pub mod retry;
pub mod snat;
pub mod subnets;
pub mod surge;
pub mod telemetry;

/// Sets up tracing to stderr in the configured format.
pub fn init_logging(format: config::LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

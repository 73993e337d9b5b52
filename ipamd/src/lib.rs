//! ipamd: keeps a warm pool of ENIs and secondary IPs from EC2 and hands them to the CNI plugin over gRPC on a
//! local Unix socket.
//!
//! The subsystems, each a folder whose `mod.rs` says its job and which others it may use (docs/architecture.md
//! draws the arrows; `tests/layers.rs` holds the code to them):
//! - [`config`]: every setting (env var or flag), checked at start;
//! - [`clock`]: the monotonic clock every deadline runs on, and the wall clock for what is shown or saved;
//! - [`planner`]: the pure warm-pool decision, `plan(view, targets, limits) -> actions`;
//! - [`cloud`]: the AWS boundary, EC2 (trait, typed errors, retry, rate limit) and IMDS;
//! - [`state`]: the datastore of ENIs, IPs and allocations, and how it survives a crash (checkpoint, aws-node
//!   import);
//! - [`pool`]: the one owner of the state (an actor on its own thread) and the handle everyone else uses;
//! - [`k8s`]: the optional Kubernetes side (watches, ENIConfig, Events, pod-aware clean-up);
//! - [`node`]: what ipamd does to the node besides ENIs (CNI install, SNAT, conntrack clean-up);
//! - [`policy`]: NetworkPolicy enforcement (ENABLE_NETWORK_POLICY), one nftables table of its own;
//! - [`telemetry`]: counters, the `/metrics` endpoint, logging;
//! - [`reconcile`]: the loop that observes EC2/IMDS, asks the pool for a plan and applies it;
//! - [`grpc`]: the socket the plugin and `vpcctl` talk to;
//! - [`daemon`]: start-up, wiring, supervision of every long-lived task, shutdown.

pub mod clock;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod grpc;
pub mod k8s;
pub mod node;
pub mod planner;
pub mod policy;
pub mod pool;
pub mod reconcile;
pub mod state;
pub mod tasks;
pub mod telemetry;

//! Generated gRPC types and stubs for package `vpccni.v1` (ipamd ⇄ plugin, ipamd ⇄ vpcctl), and the
//! Unix-socket client connector they share.

/// `vpccni.v1`: the Ipam and Introspection services.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("vpccni.v1");
}

pub mod uds;

/// The gRPC health service name that answers liveness: SERVING while the process and its loops are alive,
/// whether or not the pool can serve pods yet (that is the readiness answer, service ""). A node whose
/// first reconcile cannot complete (a missing IAM permission) is then unready and visible, not restarted in a
/// loop.
pub const LIVENESS_SERVICE: &str = "vpccni.v1.Liveness";

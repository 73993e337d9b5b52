//! Generated gRPC types and stubs for package `vpccni.v1` (ipamd ⇄ plugin, ipamd ⇄ vpcctl), and the
//! Unix-socket client connector they share.

/// `vpccni.v1`: the Ipam and Introspection services.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("vpccni.v1");
}

pub mod uds;

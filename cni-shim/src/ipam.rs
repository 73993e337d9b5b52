//! The plugin's side of `vpccni.v1.Ipam` over ipamd's Unix socket, every call bounded by `timeoutMs`, and the
//! mapping of gRPC statuses onto CNI codes (unreachable or out of IPs: 11, try again later).

use std::path::Path;
use std::time::Duration;

use tonic::Code as G;
use tonic::transport::Channel;
use vpc_cni_proto::v1 as pb;
use vpc_cni_proto::v1::ipam_client::IpamClient;

use crate::cni::{CniError, Code};

pub struct Ipam {
    client: IpamClient<Channel>,
}

/// A DelNetwork that did not go through.
#[derive(Debug)]
pub enum DelFailure {
    /// No answer (the connection failed, timed out or was cut): ipamd may be down.
    Unreachable(CniError),
    /// ipamd answered with an error: it is up and still holds what it held.
    Answered(CniError),
}

impl std::fmt::Display for DelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) | Self::Answered(e) => e.fmt(f),
        }
    }
}

fn status_error(what: &str, s: tonic::Status) -> CniError {
    let code = match s.code() {
        G::Unavailable | G::ResourceExhausted | G::DeadlineExceeded | G::Cancelled | G::Unknown => Code::TryAgainLater,
        G::InvalidArgument => Code::InvalidConfig,
        _ => Code::Ipamd,
    };
    CniError::new(code, format!("ipamd {what}: {:?}", s.code()), s.message().to_string())
}

/// The plugin runs as root: it talks only to a real socket owned by root (or by the user it runs as), never
/// through a symlink someone could point elsewhere.
pub fn check_socket(socket: &Path) -> Result<(), CniError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let bad = |why: String| CniError::new(Code::InvalidConfig, "refusing ipamd socket", why);
    let m = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        // Not there (yet): ipamd is starting; the connect reports "unreachable", try again later.
        Err(_) => return Ok(()),
    };
    if m.file_type().is_symlink() {
        return Err(bad(format!("{} is a symlink", socket.display())));
    }
    if !m.file_type().is_socket() {
        return Err(bad(format!("{} is not a socket", socket.display())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        return Err(bad(format!("{} is owned by uid {}, not root", socket.display(), m.uid())));
    }
    Ok(())
}

impl Ipam {
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, CniError> {
        check_socket(socket)?;
        let channel = vpc_cni_proto::uds::connect(socket, Some(timeout)).await.map_err(|e| {
            CniError::new(Code::TryAgainLater, "ipamd is unreachable", format!("{}: {e}", socket.display()))
        })?;
        Ok(Self { client: IpamClient::new(channel) })
    }

    pub async fn add(&mut self, req: pb::AddNetworkRequest) -> Result<pb::AddNetworkReply, CniError> {
        self.client.add_network(req).await.map(tonic::Response::into_inner).map_err(|s| status_error("AddNetwork", s))
    }

    pub async fn del(&mut self, key: pb::AllocationKey) -> Result<pb::DelNetworkReply, DelFailure> {
        let req = pb::DelNetworkRequest { key: Some(key) };
        self.client.del_network(req).await.map(tonic::Response::into_inner).map_err(|s| {
            // Unknown is what a connection cut mid-call (ipamd killed) comes back as; ipamd's own answers are typed.
            let reached = !matches!(s.code(), G::Unavailable | G::DeadlineExceeded | G::Cancelled | G::Unknown);
            let e = status_error("DelNetwork", s);
            if reached { DelFailure::Answered(e) } else { DelFailure::Unreachable(e) }
        })
    }

    pub async fn check(&mut self, key: pb::AllocationKey) -> Result<pb::CheckNetworkReply, CniError> {
        let req = pb::CheckNetworkRequest { key: Some(key) };
        self.client
            .check_network(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("CheckNetwork", s))
    }

    pub async fn gc(&mut self, req: pb::GcNetworksRequest) -> Result<pb::GcNetworksReply, CniError> {
        self.client.gc_networks(req).await.map(tonic::Response::into_inner).map_err(|s| status_error("GcNetworks", s))
    }

    pub async fn status(&mut self) -> Result<pb::StatusReply, CniError> {
        self.client
            .status(pb::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error("Status", s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_socket_of_root_or_ours_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ipamd.sock");
        assert!(check_socket(&sock).is_ok(), "missing: ipamd is starting");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(check_socket(&sock).is_ok());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let e = check_socket(&link).unwrap_err();
        assert!(e.code == Code::InvalidConfig && e.details.contains("symlink"), "{e}");
        let file = dir.path().join("file.sock");
        std::fs::write(&file, b"").unwrap();
        assert!(check_socket(&file).unwrap_err().details.contains("not a socket"));
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&sock, Some(65534), None).unwrap();
            assert!(check_socket(&sock).unwrap_err().details.contains("uid 65534"));
        }
    }
}

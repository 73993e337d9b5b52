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

fn status_error(what: &str, s: tonic::Status) -> CniError {
    let code = match s.code() {
        G::Unavailable | G::ResourceExhausted | G::DeadlineExceeded | G::Cancelled | G::Unknown => Code::TryAgainLater,
        G::InvalidArgument => Code::InvalidConfig,
        _ => Code::Ipamd,
    };
    CniError::new(code, format!("ipamd {what}: {:?}", s.code()), s.message().to_string())
}

impl Ipam {
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, CniError> {
        let channel = vpc_cni_proto::uds::connect(socket, Some(timeout)).await.map_err(|e| {
            CniError::new(Code::TryAgainLater, "ipamd is unreachable", format!("{}: {e}", socket.display()))
        })?;
        Ok(Self { client: IpamClient::new(channel) })
    }

    pub async fn add(&mut self, req: pb::AddNetworkRequest) -> Result<pb::AddNetworkReply, CniError> {
        self.client.add_network(req).await.map(tonic::Response::into_inner).map_err(|s| status_error("AddNetwork", s))
    }

    pub async fn del(&mut self, key: pb::AllocationKey) -> Result<pb::DelNetworkReply, CniError> {
        let req = pb::DelNetworkRequest { key: Some(key) };
        self.client.del_network(req).await.map(tonic::Response::into_inner).map_err(|s| status_error("DelNetwork", s))
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

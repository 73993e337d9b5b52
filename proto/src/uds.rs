//! gRPC over a Unix socket, client side: tonic needs a URI, so a dummy one is parsed and every connection
//! is opened on the socket path instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Error};

/// Connects a channel to the gRPC server on `path`. `timeout` bounds the connect and every request.
pub async fn connect(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Channel, Error> {
    let path: PathBuf = path.as_ref().to_path_buf();
    let mut endpoint = Endpoint::from_static("http://localhost");
    if let Some(t) = timeout {
        endpoint = endpoint.connect_timeout(t).timeout(t);
    }
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

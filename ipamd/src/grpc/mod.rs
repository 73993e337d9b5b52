//! The gRPC surface on a Unix socket: socket file 0600 in a 0700 directory, every request checked against the
//! peer's uid (SO_PEERCRED), the Ipam, Introspection and grpc.health.v1 services. No TCP listener.
//!
//! May use: pool (every request is a command to it), state, cloud (node facts), k8s and telemetry (status),
//! policy (an ADD waits for its pod's NetworkPolicy table), tasks.

pub mod introspection;
pub mod ipam;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("IPAMD_SOCKET {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Who may call: root always, plus IPAMD_ALLOWED_UIDS.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub allowed_uids: Vec<u32>,
}

impl PeerPolicy {
    /// The peer-credential check applied to every request.
    pub fn check(&self, info: Option<&UdsConnectInfo>) -> Result<(), Status> {
        self.check_uid(info.and_then(|i| i.peer_cred).map(|c| c.uid()))
    }

    /// The decision on a peer uid (`None`: the kernel gave no credentials).
    pub fn check_uid(&self, uid: Option<u32>) -> Result<(), Status> {
        match uid {
            Some(0) => Ok(()),
            Some(u) if self.allowed_uids.contains(&u) => Ok(()),
            Some(u) => Err(Status::permission_denied(format!(
                "peer uid {u} may not use ipamd (allowed: 0{})",
                self.allowed_uids.iter().map(|u| format!(",{u}")).collect::<String>()
            ))),
            None => Err(Status::permission_denied("peer credentials unavailable")),
        }
    }

    pub fn interceptor(&self) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let policy = self.clone();
        move |req: Request<()>| {
            policy.check(req.extensions().get::<UdsConnectInfo>())?;
            Ok(req)
        }
    }
}

/// Binds the socket, born 0600 (no moment in which another user could connect). Its directory is 0700
/// whoever made it: created so when missing, made so when it is ipamd's own (kubelet's hostPath
/// DirectoryOrCreate makes it 0755); only a directory shared with everyone (world-writable, like /tmp for
/// IPAMD_SOCKET=/tmp/x.sock) is left as it is. A socket left by an earlier run is replaced; anything else at the
/// path (a file, a symlink) is refused, not deleted.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let err = |source| ServeError::Socket { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
            Ok(m) if m.is_dir() && m.permissions().mode() & 0o002 == 0 && m.permissions().mode() & 0o777 != 0o700 => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            }
            Ok(_) => {}
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // The socket takes its mode from the umask at bind. The umask is the process's: a file another thread
    // creates meanwhile is born private too, which is harmless.
    let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(before);
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

pub fn incoming(listener: UnixListener) -> UnixListenerStream {
    UnixListenerStream::new(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::Connected;

    /// The real SO_PEERCRED of a socket pair (our own uid) through the same check every request passes.
    #[tokio::test]
    async fn peer_uid_must_be_root_or_allowed() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let info = a.connect_info();
        let me = info.peer_cred.unwrap().uid();
        let policy = PeerPolicy { allowed_uids: vec![] };
        assert_eq!(policy.check(Some(&info)).is_ok(), me == 0);
        // A policy that admits only some other uid refuses us, unless we are root.
        let other = PeerPolicy { allowed_uids: vec![me + 1] };
        if me != 0 {
            let err = other.check(Some(&info)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
        }
        assert!(PeerPolicy { allowed_uids: vec![me] }.check(Some(&info)).is_ok());
        assert_eq!(policy.check(None).unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn non_root_uid_is_refused_with_a_message() {
        let policy = PeerPolicy { allowed_uids: vec![1000] };
        assert!(policy.check_uid(Some(0)).is_ok());
        assert!(policy.check_uid(Some(1000)).is_ok());
        let err = policy.check_uid(Some(65534)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("65534"), "{}", err.message());
        let fake = UdsConnectInfo { peer_addr: None, peer_cred: None };
        assert!(policy.check(Some(&fake)).unwrap_err().message().contains("credentials"));
    }

    #[tokio::test]
    async fn socket_is_private_and_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A directory ipamd creates is private.
        let path = dir.path().join("run/ipamd.sock");
        drop(bind(&path).unwrap());
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // The socket of an earlier run is replaced.
        let _l = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        // A directory someone else made 0755 (kubelet's hostPath) is made private; one shared with everyone
        // (world-writable and sticky, like /tmp) is left as it is.
        let hostpath = dir.path().join("aws-node");
        std::fs::create_dir(&hostpath).unwrap();
        std::fs::set_permissions(&hostpath, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _h = bind(&hostpath.join("ipamd.sock")).unwrap();
        assert_eq!(mode(&hostpath), 0o700);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let _s = bind(&shared.join("ipamd.sock")).unwrap();
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(mode(&shared.join("ipamd.sock")), 0o600);
        // A regular file or a symlink at the path is refused and left in place.
        let file = shared.join("data");
        std::fs::write(&file, b"precious").unwrap();
        assert!(bind(&file).unwrap_err().to_string().contains("not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        let link = shared.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind(&link).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    }
}

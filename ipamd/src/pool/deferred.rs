//! Deferred DELs (format in [`datapath::deferred`]): DELs the plugin could not hand to ipamd while it was
//! down. ipamd carries them out before it serves its first request after a start, before every ADD, and at
//! every reconcile round, so an ipamd restart during pod churn leaks no IP.
//!
//! A deferred DEL never takes an IP from a newer pod: it is dropped when the key's allocation was made after
//! the DEL was written (a runtime that retried ADD with the same container id).

use std::path::{Path, PathBuf};

pub use datapath::deferred::{DIR, Entry, dir_for, record};

use crate::pool::PoolHandle;
use crate::state::datastore::AllocKey;

/// What one drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub released: Vec<(AllocKey, std::net::Ipv4Addr)>,
    /// Entries whose key held nothing, or a newer allocation.
    pub dropped: usize,
}

/// Carries out every entry in `dir`, oldest first. An entry that cannot be carried out now (the checkpoint
/// write failed) stays for the next drain; one that cannot be read is moved aside as `*.bad`.
pub async fn drain(dir: &Path, pool: &PoolHandle) -> Drained {
    let mut out = Drained::default();
    let Ok(read) = std::fs::read_dir(dir) else { return out };
    let mut files: Vec<PathBuf> =
        read.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    for path in files {
        let entry = match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
            Some(e) => e,
            None => {
                tracing::error!(path = %path.display(), "unreadable deferred DEL moved aside");
                let _ = std::fs::rename(&path, path.with_extension("bad"));
                continue;
            }
        };
        let key = AllocKey {
            network_name: entry.network_name.clone(),
            container_id: entry.container_id.clone(),
            if_name: entry.if_name.clone(),
        };
        let newer = match pool.check(key.clone()).await {
            Ok(Some((a, _))) => a.allocated_unix * 1000 > entry.unix_ms,
            Ok(None) => {
                out.dropped += 1;
                let _ = std::fs::remove_file(&path);
                continue;
            }
            Err(_) => continue,
        };
        if newer {
            tracing::warn!(container = %key.container_id, "deferred DEL older than the allocation it names: dropped");
            out.dropped += 1;
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match pool.del(key.clone()).await {
            Ok(Some((a, _))) => {
                pool.emit(
                    "deferred-del",
                    format!(
                        "{} from {}/{} ({}): DEL asked while ipamd was down",
                        a.ip, a.pod_namespace, a.pod_name, key.container_id
                    ),
                );
                out.released.push((key, a.ip));
                let _ = std::fs::remove_file(&path);
            }
            Ok(None) => {
                out.dropped += 1;
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => tracing::warn!(path = %path.display(), "deferred DEL not carried out yet: {e}"),
        }
    }
    out
}

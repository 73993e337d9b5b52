//! Deferred DELs (format in [`datapath::deferred`]): DELs the plugin could not hand to ipamd while it was
//! down. ipamd carries them out before it serves its first request after a start, before every ADD, and at
//! every reconcile round, so an ipamd restart during pod churn leaks no IP.
//!
//! A deferred DEL releases what its key holds, whatever the clocks say: its `unix_ms` is the plugin's wall clock
//! (kept for the file's name and the log), and comparing it with an allocation's wall-clock stamp, as an earlier
//! version did to spare a newer pod, dropped every DEL written after the system time was stepped back (the IPs
//! leaked) and misjudged two in the same second. Nothing newer can hold the key while its DEL is on disk:
//! - the runtime runs one CNI operation at a time per sandbox, and the plugin writes the file before its DEL
//!   returns, so an ADD of the same key (a runtime retrying one sandbox) comes after the file is there;
//! - every ADD drains first, and is refused (try again later) while a DEL of its own key is left undone
//!   ([`Drained::left`]), so it is never answered with the allocation that DEL is about to release;
//! - drains run one at a time, so none acts on a file it listed after another drain carried it out and an ADD
//!   took the key again.

use std::path::{Path, PathBuf};

use tokio::time::Instant;

pub use datapath::deferred::{DIR, Entry, dir_for, record};

use crate::pool::PoolHandle;
use crate::state::datastore::AllocKey;

/// What one drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Each key released, its IP, and when (no later than the release: for the conntrack janitor).
    pub released: Vec<(AllocKey, std::net::Ipv4Addr, Instant)>,
    /// Entries whose key held nothing (the DEL reached ipamd after all, or was repeated).
    pub dropped: usize,
    /// Keys whose DEL could not be carried out now (it stays for the next drain).
    pub left: Vec<AllocKey>,
}

/// One drain at a time (see the module's doc).
static DRAINING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Carries out every entry in `dir`, oldest first. An entry that cannot be carried out now (the checkpoint
/// write failed) stays for the next drain; one that cannot be read is moved aside as `*.bad`.
pub async fn drain(dir: &Path, pool: &PoolHandle) -> Drained {
    let mut out = Drained::default();
    // Nearly always there is nothing, and then no lock is needed (an empty listing acts on nothing): every ADD
    // drains, and 100 of them at once must not queue for it.
    if entries(dir).is_empty() {
        return out;
    }
    let _one_at_a_time = DRAINING.lock().await;
    for path in entries(dir) {
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
        let asked = Instant::now();
        match pool.del(key.clone()).await {
            Ok(Some((a, _))) => {
                pool.emit(
                    "deferred-del",
                    format!(
                        "{} from {}/{} ({}): DEL asked while ipamd was down",
                        a.ip, a.pod_namespace, a.pod_name, key.container_id
                    ),
                );
                out.released.push((key, a.ip, asked));
                let _ = std::fs::remove_file(&path);
            }
            Ok(None) => {
                out.dropped += 1;
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "deferred DEL not carried out yet: {e}");
                out.left.push(key);
            }
        }
    }
    out
}

/// The entries in `dir`, oldest first (by name: `<unix ms>-<pid>.json`).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        read.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    files
}

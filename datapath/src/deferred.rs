//! Deferred DELs, the file format and the plugin's side: a CNI DEL must not block a pod's deletion, so when
//! ipamd cannot be reached the plugin tears the pod's network down from prevResult, succeeds, and leaves the
//! release here: one small JSON file per DEL in `<socket dir>/deferred-del/`. ipamd carries them out
//! (`ipamd::deferred::drain`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DIR: &str = "deferred-del";

/// One DEL the plugin could not hand to ipamd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    /// When the DEL was asked (unix millis).
    pub unix_ms: i64,
}

/// The directory next to ipamd's socket.
pub fn dir_for(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new(".")).join(DIR)
}

/// Writes one entry atomically (temp file + rename) and returns its path. Called by the plugin.
pub fn record(dir: &Path, entry: &Entry) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = format!("{}-{}.json", entry.unix_ms, std::process::id());
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(entry).expect("entry serializes"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

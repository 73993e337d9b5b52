//! `ipam.json`: the allocations and cooling IPs that must survive a crash, and the last known node, limits and
//! ENIs, so that ipamd can serve from it when EC2 or IMDS cannot be reached. Versioned, written atomically
//! (temp file, fsync, rename, fsync of the directory), so a reader sees the old or the new file, never half.
//! A write that fails before its rename leaves the old file, one that gets past it has put the new file in
//! place (see [`Store::save_parts`]): the caller keeps in memory exactly what the file says.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::cloud::imds::NodeInfo;
use crate::planner::Limits;
use crate::state::datastore::{AllocKey, Allocation, ObservedEni};
use crate::state::file::{FileError, FileProblem};

mod validate;

pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "ipam.json";

/// Why the checkpoint could not be read, trusted or written.
pub type CheckpointError = FileError;

const WHAT: &str = "checkpoint";

fn error(path: &Path, problem: FileProblem) -> CheckpointError {
    FileError::new(WHAT, path, problem)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: AllocKey,
    #[serde(flatten)]
    allocation: Allocation,
}

/// Whether this node's aws-node checkpoint has been dealt with (see [`crate::state::migrate`]): the import runs
/// while it is pending, and once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwsNodeImport {
    /// A checkpoint only being made: no `ipam.json` on the node yet (a first start, or one lost).
    #[default]
    Pending,
    /// Imported, or nothing to import; written with the first save. A file an ipamd wrote before the marker
    /// existed counts as done: its node had its first start then.
    Done,
}

impl AwsNodeImport {
    fn done() -> Self {
        Self::Done
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct File {
    version: u32,
    allocations: Vec<Entry>,
    #[serde(default = "AwsNodeImport::done")]
    aws_node_import: AwsNodeImport,
    /// IP → unix millis when it may be reused, on the wall clock of the process that wrote it: for people and older
    /// versions. A start reads only which IPs were cooling, and cools each again for the whole cooldown.
    #[serde(default)]
    cooling: BTreeMap<Ipv4Addr, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<NodeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    enis: Vec<SavedEni>,
}

/// What [`encode`] writes: [`File`]'s layout, borrowed from the pool (no copy of its maps per write, no
/// `flatten` buffering), compact.
#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    allocations: Vec<EntryRef<'a>>,
    aws_node_import: AwsNodeImport,
    cooling: &'a BTreeMap<Ipv4Addr, i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a NodeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(skip_serializing_if = "<[SavedEni]>::is_empty")]
    enis: &'a [SavedEni],
}

/// An [`Entry`] as written: the key's fields and the allocation's side by side.
#[derive(Serialize)]
struct EntryRef<'a> {
    network_name: &'a str,
    container_id: &'a str,
    if_name: &'a str,
    ip: Ipv4Addr,
    eni_id: &'a str,
    pod_namespace: &'a str,
    pod_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod_uid: &'a str,
    allocated_unix: i64,
}

/// The parts of a checkpoint, borrowed (what the pool actor writes after every change).
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub allocations: &'a BTreeMap<AllocKey, Allocation>,
    pub cooling: &'a BTreeMap<Ipv4Addr, i64>,
    pub node: Option<&'a NodeInfo>,
    pub limits: Option<Limits>,
    pub enis: &'a [SavedEni],
    pub aws_node_import: AwsNodeImport,
}

/// An ENI and its usable secondary IPs as last observed (loaded as ready: its host networking was in place
/// when it was saved; a node that rebooted has lost its pods too).
pub type SavedEni = ObservedEni;

/// What the checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub allocations: BTreeMap<AllocKey, Allocation>,
    pub cooling: BTreeMap<Ipv4Addr, i64>,
    /// The node as IMDS last described it.
    pub node: Option<NodeInfo>,
    pub limits: Option<Limits>,
    pub enis: Vec<SavedEni>,
    pub aws_node_import: AwsNodeImport,
}

#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    /// Makes the rename durable (a test puts a failing one in).
    sync_dir: fn(&Path) -> std::io::Result<()>,
    /// The last directory fsync failed: said once in the log, and again when one succeeds.
    unsynced: Arc<AtomicBool>,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join(FILE_NAME), sync_dir: fsync_dir, unsynced: Arc::default() }
    }

    /// The store with `sync_dir` in place of the directory fsync.
    #[cfg(test)]
    pub(crate) fn with_dir_sync(self, sync_dir: fn(&Path) -> std::io::Result<()>) -> Self {
        Self { sync_dir, ..self }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the checkpoint; a missing file is an empty one.
    pub fn load(&self) -> Result<Checkpoint, CheckpointError> {
        self.read().map(Option::unwrap_or_default)
    }

    /// Reads the checkpoint; `None` when there is no file.
    pub fn read(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(error(&self.path, FileProblem::Io(source)));
            }
        };
        let file: File = serde_json::from_slice(&bytes)
            .map_err(|source| error(&self.path, FileProblem::Decode { format: "ipam.json", source }))?;
        if file.version > VERSION {
            return Err(error(&self.path, FileProblem::Version { found: file.version.to_string(), supported: "1" }));
        }
        let problems = validate::problems(&file.allocations, &file.enis);
        if !problems.is_empty() {
            return Err(error(&self.path, FileProblem::Invalid(problems)));
        }
        Ok(Some(Checkpoint {
            allocations: file.allocations.into_iter().map(|e| (e.key, e.allocation)).collect(),
            cooling: file.cooling,
            node: file.node,
            limits: file.limits,
            enis: file.enis,
            aws_node_import: file.aws_node_import,
        }))
    }

    /// Renames an unreadable checkpoint to `ipam.json.corrupt-<unix seconds>` (kept for a post-mortem) and
    /// returns the new path.
    pub fn move_aside(&self) -> Result<PathBuf, CheckpointError> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = self.path.with_extension(format!("json.corrupt-{secs}"));
        std::fs::rename(&self.path, &aside).map_err(|source| error(&self.path, FileProblem::Io(source)))?;
        Ok(aside)
    }

    pub fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        self.save_parts(cp.parts())
    }

    /// Writes the checkpoint atomically and durably (temp file, fsync, rename, fsync of the directory). `Ok`: the
    /// file holds `parts`; `Err`: it still holds what it held before.
    ///
    /// Once the rename is done the new file is the one every reader sees, a restarted ipamd included; a failed
    /// directory fsync after it only means a crash of the whole node might bring the old file back, and such a
    /// crash ends every pod the difference is about. So that failure is logged and the write counts as done:
    /// failing it made the pool undo in memory what the file already held (a released IP kept from new pods
    /// until a restart freed it under a pod whose DEL had been refused, an allocation the file keeps for a pod
    /// told it had none). The next write fsyncs the directory again.
    pub fn save_parts(&self, parts: Parts<'_>) -> Result<(), CheckpointError> {
        let io = |source| error(&self.path, FileProblem::Io(source));
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        let bytes = encode(parts);
        // 0600: it names every pod of the node. A temp file an older version left (0644) is made private too.
        let mut f = {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp);
            let f = f.map_err(io)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            f
        };
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        match (self.sync_dir)(dir) {
            Ok(()) => {
                if self.unsynced.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "checkpoint directory fsync works again");
                }
            }
            Err(e) => {
                if !self.unsynced.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.path.display(),
                        "checkpoint written, but the fsync of its directory failed ({e}): it is in place, and \
                         durable once a later write's fsync succeeds"
                    );
                }
            }
        }
        Ok(())
    }
}

impl Checkpoint {
    pub fn parts(&self) -> Parts<'_> {
        Parts {
            allocations: &self.allocations,
            cooling: &self.cooling,
            node: self.node.as_ref(),
            limits: self.limits,
            enis: &self.enis,
            aws_node_import: self.aws_node_import,
        }
    }
}

/// The bytes of `ipam.json`.
pub fn encode(p: Parts<'_>) -> Vec<u8> {
    let file = FileRef {
        version: VERSION,
        allocations: p
            .allocations
            .iter()
            .map(|(k, a)| EntryRef {
                network_name: &k.network_name,
                container_id: &k.container_id,
                if_name: &k.if_name,
                ip: a.ip,
                eni_id: &a.eni_id,
                pod_namespace: &a.pod_namespace,
                pod_name: &a.pod_name,
                pod_uid: &a.pod_uid,
                allocated_unix: a.allocated_unix,
            })
            .collect(),
        aws_node_import: p.aws_node_import,
        cooling: p.cooling,
        node: p.node,
        limits: p.limits,
        enis: p.enis,
    };
    serde_json::to_vec(&file).expect("checkpoint serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load().unwrap(), Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.allocations.insert(
            AllocKey { network_name: "aws-cni".into(), container_id: "abc".into(), if_name: "eth0".into() },
            Allocation {
                ip: "10.0.1.9".parse().unwrap(),
                eni_id: "eni-1".into(),
                pod_namespace: "default".into(),
                pod_name: "web".into(),
                pod_uid: "5f1c2d8e-uid".into(),
                allocated_unix: 7,
            },
        );
        cp.cooling.insert("10.0.1.10".parse().unwrap(), 99);
        // A temp file a crashed older version left world-readable.
        std::fs::write(dir.path().join("ipam.json.tmp"), b"{").unwrap();
        let everyone = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        std::fs::set_permissions(dir.path().join("ipam.json.tmp"), everyone).unwrap();
        store.save(&cp).unwrap();
        assert_eq!(store.load().unwrap(), cp);
        assert!(!dir.path().join("ipam.json.tmp").exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(store.path()).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "ipam.json names every pod: private");
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"version\":1") && text.contains("\"container_id\":\"abc\""), "{text}");
    }

    /// The import marker: a checkpoint being made is pending, and each state reads back as written.
    #[test]
    fn the_aws_node_import_marker_round_trips_and_starts_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load().unwrap().aws_node_import, AwsNodeImport::Pending, "no ipam.json: not imported yet");
        for mark in [AwsNodeImport::Pending, AwsNodeImport::Done] {
            store.save(&Checkpoint { aws_node_import: mark, ..Checkpoint::default() }).unwrap();
            assert_eq!(store.load().unwrap().aws_node_import, mark);
        }
        assert!(std::fs::read_to_string(store.path()).unwrap().contains("\"aws_node_import\":\"done\""));
    }

    /// What the previous release wrote (no `vpc_id`, no `vcpus`, no prefixes) still loads: an upgrade keeps every
    /// allocation. And a prefix-mode checkpoint round-trips its prefixes.
    #[test]
    fn an_older_checkpoint_loads_and_prefixes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let old = r#"{"version":1,"allocations":[{"network_name":"aws-cni","container_id":"abc","if_name":"eth0",
            "ip":"10.0.1.9","eni_id":"eni-1","pod_namespace":"default","pod_name":"web","allocated_unix":7}],
            "cooling":{},"node":{"instance_id":"i-1","instance_type":"m5.large","region":"us-east-1",
            "availability_zone":"us-east-1a","primary_mac":"02:00:00:00:00:01","primary_ip":"10.0.1.4",
            "primary_eni_id":"eni-1","subnet_id":"subnet-1","subnet_cidr":"10.0.1.0/24","security_groups":["sg-1"],
            "vpc_cidrs":["10.0.0.0/16"]},"limits":{"max_enis":3,"ips_per_eni":9},
            "enis":[{"id":"eni-1","mac":"02:00:00:00:00:01","device_number":0,"subnet_id":"subnet-1",
            "subnet_cidr":"10.0.1.0/24","primary_ip":"10.0.1.4","secondary_ips":["10.0.1.9"]}]}"#;
        std::fs::write(store.path(), old).unwrap();
        let mut cp = store.load().expect("the previous release's checkpoint loads");
        assert_eq!((cp.allocations.len(), cp.node.as_ref().map(|n| n.vpc_id.as_str())), (1, Some("")));
        assert_eq!(cp.limits.map(|l| l.vcpus), Some(0));
        assert_eq!(cp.aws_node_import, AwsNodeImport::Done, "its node had its first start: nothing to import");
        cp.enis[0].prefixes = vec!["10.0.1.32/28".parse().unwrap()];
        store.save(&cp).unwrap();
        assert_eq!(store.load().unwrap().enis[0].prefixes, cp.enis[0].prefixes);
    }

    /// The rename is done when the directory fsync fails: the write counts (the file holds the new state), so
    /// its caller does not roll memory back to what the file no longer says.
    #[test]
    fn a_failed_directory_fsync_after_the_rename_is_a_done_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).with_dir_sync(|_| Err(std::io::Error::other("injected: EIO")));
        let mut cp = Checkpoint::default();
        cp.cooling.insert("10.0.1.10".parse().unwrap(), 99);
        store.save(&cp).expect("the new file is in place: the write is done");
        assert_eq!(store.load().unwrap(), cp);
        // A failure before the rename still fails the write and leaves the old file.
        std::fs::create_dir(dir.path().join("ipam.json.tmp")).unwrap();
        assert!(store.save(&Checkpoint::default()).is_err());
        assert_eq!(store.load().unwrap(), cp);
    }

    #[test]
    fn corrupt_or_future_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(store.path(), b"{nope").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("ipam.json"));
        std::fs::write(store.path(), br#"{"version": 9, "allocations": []}"#).unwrap();
        assert!(matches!(store.load().unwrap_err().problem, FileProblem::Version { ref found, .. } if found == "9"));
    }
}

#[cfg(test)]
mod fuzz;

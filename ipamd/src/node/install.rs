//! The readiness-gated CNI install, done by ipamd itself instead of an entrypoint script: once ipamd is SERVING,
//! the `vpc-cni` plugin (and the reference plugins the conflist chains) go into the host CNI bin directory, then
//! the conflist into the host CNI conf directory. The kubelet reports a node network-ready only once a conflist
//! exists, so no pod is scheduled onto a node whose ipamd cannot serve yet.
//!
//! Every file is written atomically (temp file in the same directory, fsync, rename, fsync of the directory): a
//! kubelet or runtime exec never sees half a binary, even while a rolling upgrade replaces one that is running.
//! Files already identical are left alone. aws-node's `10-aws.conflist` is removed once ours is in place, so a
//! migrated node has one network configuration.
//!
//! The conflist is deliberately left in place on SIGTERM: during an upgrade the next ipamd serves within seconds,
//! and removing it would flip the node NotReady and leave the runtime without the configuration it needs to DEL
//! the pods still running (while ipamd is away an ADD fails with "try again later" and the kubelet retries).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::Config;

/// The conflist's file name; the lowest-sorting file in the conf directory is the one the runtime uses.
pub const CONFLIST: &str = "10-vpc-cni.conflist";
/// aws-vpc-cni's conflist, replaced by ours on a migrated node.
pub const AWS_CONFLIST: &str = "10-aws.conflist";
/// The network name: aws-vpc-cni's, so that allocations imported from aws-node keep their keys.
pub const NETWORK_NAME: &str = "aws-cni";
/// The newest version Debian's reference plugins accept; vpc-cni speaks 1.1.0 too.
const CNI_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "plugin {name}: not in CNI_PLUGINS_SOURCE_DIR ({source_dir}) nor already in CNI_INSTALL_BIN_DIR ({bin_dir})"
    )]
    MissingPlugin { name: String, source_dir: PathBuf, bin_dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Install {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The vpc-cni binary to install (next to ipamd's own).
    pub plugin: PathBuf,
    pub plugins_source_dir: PathBuf,
    pub conflist: Value,
}

/// The conflist for this configuration: vpc-cni, then portmap (hostPort, with SNAT for hairpin traffic), then
/// bandwidth when ENABLE_BANDWIDTH_PLUGIN is set — the chain aws-vpc-cni installs.
pub fn conflist(cfg: &Config) -> Value {
    let mut plugins = vec![
        json!({
            "type": "vpc-cni",
            "ipamdSocket": cfg.ipamd_socket,
            "mtu": cfg.effective_pod_mtu(),
            "vethPrefix": cfg.aws_vpc_k8s_cni_vethprefix,
            "logFile": cfg.aws_vpc_k8s_plugin_log_file,
            "logLevel": cfg.aws_vpc_k8s_plugin_log_level,
        }),
        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
    ];
    if cfg.enable_bandwidth_plugin {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    json!({"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": plugins})
}

impl Install {
    /// The install this configuration asks for, if any (CNI_INSTALL_BIN_DIR and CNI_INSTALL_CONF_DIR set).
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let (bin_dir, conf_dir) = (cfg.cni_install_bin_dir.clone()?, cfg.cni_install_conf_dir.clone()?);
        let plugin = std::env::current_exe().ok()?.with_file_name("vpc-cni");
        Some(Self {
            bin_dir,
            conf_dir,
            plugin,
            plugins_source_dir: cfg.cni_plugins_source_dir.clone(),
            conflist: conflist(cfg),
        })
    }

    /// Installs binaries, then the conflist. Returns how many files changed.
    pub fn run(&self) -> Result<usize, InstallError> {
        let mut changed = usize::from(copy_atomic(&self.plugin, &self.bin_dir.join("vpc-cni"))?);
        for p in self.conflist["plugins"].as_array().into_iter().flatten() {
            let name = p["type"].as_str().unwrap_or_default();
            if name == "vpc-cni" {
                continue;
            }
            let (src, dst) = (self.plugins_source_dir.join(name), self.bin_dir.join(name));
            if src.exists() {
                changed += usize::from(copy_atomic(&src, &dst)?);
            } else if !dst.exists() {
                return Err(InstallError::MissingPlugin {
                    name: name.to_string(),
                    source_dir: self.plugins_source_dir.clone(),
                    bin_dir: self.bin_dir.clone(),
                });
            }
        }
        let text = serde_json::to_vec_pretty(&self.conflist).expect("JSON");
        changed += usize::from(write_atomic(&self.conf_dir.join(CONFLIST), &text, 0o644)?);
        let aws = self.conf_dir.join(AWS_CONFLIST);
        if aws.exists() {
            std::fs::remove_file(&aws).map_err(io(&aws))?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// Copies `src` to `dst` atomically with mode 0755 unless `dst` already has the same bytes.
fn copy_atomic(src: &Path, dst: &Path) -> Result<bool, InstallError> {
    let bytes = std::fs::read(src).map_err(io(src))?;
    write_atomic(dst, &bytes, 0o755)
}

/// Writes `bytes` to `path` through a temp file in the same directory; false when it already held them.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(InstallError::Io { path: path.to_path_buf(), source: e });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(extra: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("ipamd").chain(extra.iter().copied())).unwrap()
    }

    #[test]
    fn conflist_follows_the_settings() {
        let c = conflist(&cfg(&["--pod-mtu", "1500", "--aws-vpc-k8s-cni-vethprefix", "veth"]));
        let p = &c["plugins"];
        assert_eq!((c["name"].as_str(), p.as_array().unwrap().len()), (Some("aws-cni"), 2));
        assert_eq!((p[0]["mtu"].as_u64(), p[0]["vethPrefix"].as_str()), (Some(1500), Some("veth")));
        assert_eq!(p[1]["type"], "portmap");
        let c = conflist(&cfg(&["--enable-bandwidth-plugin", "true"]));
        assert_eq!(c["plugins"][2]["type"], "bandwidth");
    }

    #[test]
    fn install_is_atomic_idempotent_and_replaces_aws_nodes_conflist() {
        let d = tempfile::tempdir().unwrap();
        let (src, bin, conf) = (d.path().join("src"), d.path().join("bin"), d.path().join("net.d"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(src.join("vpc-cni"), b"plugin v1").unwrap();
        std::fs::write(src.join("portmap"), b"portmap").unwrap();
        std::fs::write(conf.join(AWS_CONFLIST), b"{}").unwrap();
        let mut inst = Install {
            bin_dir: bin.clone(),
            conf_dir: conf.clone(),
            plugin: src.join("vpc-cni"),
            plugins_source_dir: src.clone(),
            conflist: conflist(&cfg(&[])),
        };
        assert_eq!(inst.run().unwrap(), 4, "plugin, portmap, conflist, aws-node's conflist removed");
        assert_eq!(inst.run().unwrap(), 0, "nothing changes the second time");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(bin.join("vpc-cni")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!conf.join(AWS_CONFLIST).exists());
        let names: Vec<String> =
            std::fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "no temp file left: {names:?}");
        // An upgrade replaces the binary in place.
        std::fs::write(src.join("vpc-cni"), b"plugin v2").unwrap();
        assert_eq!(inst.run().unwrap(), 1);
        assert_eq!(std::fs::read(bin.join("vpc-cni")).unwrap(), b"plugin v2");
        // A chained plugin found nowhere is an error naming both places.
        inst.conflist = conflist(&cfg(&["--enable-bandwidth-plugin", "true"]));
        let err = inst.run().unwrap_err().to_string();
        assert!(err.contains("bandwidth") && err.contains("CNI_PLUGINS_SOURCE_DIR"), "{err}");
    }
}

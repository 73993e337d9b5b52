//! One error shape for every state file ipamd reads or writes (its own checkpoint, aws-node's): which file,
//! where, and what is wrong with it, in words that name the file.

use std::path::{Path, PathBuf};

/// A state file that could not be read, trusted or written.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {problem}")]
pub struct FileError {
    /// What the file is, for the message ("checkpoint", "aws-node checkpoint").
    pub what: &'static str,
    pub path: PathBuf,
    pub problem: FileProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("not valid {format}: {source}")]
    Decode { format: &'static str, source: serde_json::Error },
    #[error("version {found} is not one this ipamd reads ({supported})")]
    Version { found: String, supported: &'static str },
    #[error("inconsistent: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl FileError {
    pub fn new(what: &'static str, path: &Path, problem: FileProblem) -> Self {
        Self { what, path: path.to_path_buf(), problem }
    }

    /// The file itself is damaged (unparsable or inconsistent), as opposed to unreadable or from a newer ipamd.
    pub fn damaged(&self) -> bool {
        matches!(self.problem, FileProblem::Decode { .. } | FileProblem::Invalid(_))
    }
}

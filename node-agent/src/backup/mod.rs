//! Offsite backups (DESIGN §5.9): a project's snapshots as `zfs send` streams in an
//! S3-compatible bucket, with manifests, sealed client-side when the target has a key; the
//! same chain read back to rebuild the project or to verify the backup.
//!
//! - [`seal`]: AES-256-GCM over chunks;
//! - [`bucket`]: the project's objects: listing, manifests, resumable multipart uploads;
//! - [`lease`]: one node at a time writes a project's objects;
//! - [`restore`]: a chain from the bucket into `zfs recv`, verified before it commits;
//! - [`target`]: a `BackupTarget` and its Secrets as a bucket.

pub mod bucket;
pub mod lease;
pub mod restore;
pub mod seal;
pub mod target;

use projstore_api::s3::{Refusal, classify};

use crate::zfs::{NameError, ZfsError};

/// What went wrong with a backup, a restore or a verification.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The service refused or did not answer.
    #[error("the backup target: {}", .0.message)]
    Target(Refusal),
    /// The target's spec or Secrets cannot be used.
    #[error("the backup target: {0}")]
    Config(String),
    /// What the bucket holds is not a valid backup of the project.
    #[error("the bucket: {0}")]
    Bucket(String),
    /// A stream from the bucket failed its checks: nothing of it was committed.
    #[error("stream refused: {0}")]
    Unverified(String),
    /// This stream's object in the bucket is not what its manifest says (corrupted,
    /// truncated, substituted, not sealed with the key): nothing of it was committed.
    #[error("stream refused: {stream}: {why}")]
    Broken { stream: String, why: String },
    /// A resumed upload's stream differs from the interrupted one: it starts over.
    #[error("upload starts over: {0}")]
    Changed(String),
    /// This host's side (the upload state file, a dataset in the way).
    #[error("{0}")]
    Local(String),
    /// A verification cannot run there now (another one runs, too little free space, no
    /// pool spare): another spare pool, or a later try.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Name(#[from] NameError),
}

impl BackupError {
    pub fn store(e: object_store::Error) -> Self {
        Self::Target(classify(&e))
    }
}

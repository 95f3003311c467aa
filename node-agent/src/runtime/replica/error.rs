//! Why a pass over a replica failed. Each boundary the pass crosses keeps its own error, and
//! its message reaches the replica's status (`lastError`, the Ready condition) unchanged.

use crate::fetch::FetchError;
use crate::streams::StoreError;
use crate::streams::plan::PlanError;
use crate::transfer::TransferError;
use crate::zfs::{NameError, ZfsError};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A `zfs` or `zpool` command failed.
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    /// A dataset or snapshot name that ZFS would not accept.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The local stream store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored chain cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Writing or applying a stream.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// Fetching from a peer's stream server.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A live send from a peer that did not commit.
    #[error(transparent)]
    Live(#[from] crate::live::LiveError),
    /// The Kubernetes API.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The dataset was written under a newer epoch than this replica's: another copy took
    /// over, and this one must not serve it.
    #[error(
        "the dataset was written under epoch {seen}, newer than this replica's {ours}: not serving it"
    )]
    Fenced { seen: u64, ours: u64 },
    /// A blocking task of the pass did not finish (it panicked or was cancelled).
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// An annotation of the controller's that cannot be read.
    #[error(transparent)]
    Contract(#[from] projstore_api::contract::BadAnnotation),
    /// Anything else, said in words (a spec the agent cannot serve, a missing peer, …).
    #[error("{0}")]
    Other(String),
}

/// Two errors are the same when they say the same: what a user reads in status (and what
/// the plans' tables compare).
impl PartialEq for ReplicaError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl From<String> for ReplicaError {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
}

impl From<&str> for ReplicaError {
    fn from(s: &str) -> Self {
        Self::Other(s.to_owned())
    }
}

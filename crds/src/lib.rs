//! projstore API types: the `Project`, `StoragePool` and `StreamReplica` custom resources of
//! `projstore.io/v1alpha1`, the rules their schemas enforce, and the generated CRDs.

pub mod crd;
pub mod names;
pub mod project;
mod schema;
pub mod storage_pool;
pub mod stream_replica;
pub mod units;
#[cfg(feature = "validate")]
pub mod validate;

pub use project::*;
pub use storage_pool::*;
pub use stream_replica::*;

/// API group of every projstore kind.
pub const GROUP: &str = "projstore.io";
/// API version of every projstore kind.
pub const VERSION: &str = "v1alpha1";
/// Label the controller sets on StreamReplicas: the node whose agent acts on them.
pub const NODE_LABEL: &str = "projstore.io/node";
/// Label on every StreamReplica: the name of its Project (in the same namespace).
pub const PROJECT_LABEL: &str = "projstore.io/project";
/// Finalizer the controller keeps on Projects until their data is in the trash.
pub const CLEANUP_FINALIZER: &str = "projstore.io/cleanup";
/// Annotation: any new value asks the primary for a snapshot now.
pub const SNAPSHOT_NOW_ANNOTATION: &str = "projstore.io/snapshot-now";
/// Annotation: any new value asks the primary to repair ownership of the project tree.
pub const REPAIR_OWNERSHIP_ANNOTATION: &str = "projstore.io/repair-ownership";
/// Annotation the controller keeps on a consumer's primary StreamReplica: where each mounted
/// source project is served now (JSON object by project name, [`MountSource`] values). The
/// consumer's agent mounts from there; the source's agent lets that node's sftp client in.
pub const MOUNT_SOURCES_ANNOTATION: &str = "projstore.io/mount-sources";

/// Where a mounted source project is served: one value of [`MOUNT_SOURCES_ANNOTATION`].
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MountSource {
    pub pool: String,
    pub node: String,
    #[serde(default)]
    pub epoch: u64,
    /// The source host's sftp endpoint (`host:port`), when its agent serves sftp.
    #[serde(default)]
    pub sftp: Option<String>,
    /// That sshd's own host key, trusted for exactly that endpoint.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Every mount of the project is read-only: the source host lets the consumer's node read
    /// it, not write it. Missing (an annotation of an older controller): read-only, until the
    /// controller writes it again.
    #[serde(default = "read_only_unless_said")]
    pub read_only: bool,
}

fn read_only_unless_said() -> bool {
    true
}

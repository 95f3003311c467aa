//! `StreamReplica`: a project's data on one pool. Created and owned by the controller; the
//! agent of the pool's node acts on it and reports its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names;

/// One copy of a project: which pool holds it, in which role and epoch, and where a secondary
/// pulls its streams from.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "projstore.io",
    version = "v1alpha1",
    kind = "StreamReplica",
    doc = "One copy of a project on one pool, created by the controller and served by that pool's agent.",
    namespaced,
    status = "StreamReplicaStatus",
    shortname = "sr",
    category = "projstore",
    derive = "PartialEq",
    printcolumn = r#"{"name":"PROJECT","type":"string","jsonPath":".spec.project"}"#,
    printcolumn = r#"{"name":"POOL","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"ROLE","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"EPOCH","type":"integer","jsonPath":".spec.epoch"}"#,
    printcolumn = r#"{"name":"APPLIED","type":"string","jsonPath":".status.appliedSnapshot.name"}"#,
    printcolumn = r#"{"name":"LAG","type":"integer","jsonPath":".status.lagSeconds","description":"Seconds behind the primary"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StreamReplicaSpec {
    /// Name of the Project (same namespace). Immutable.
    #[schemars(length(min = 1, max = 63), pattern(names::DNS1123_LABEL))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("project is immutable"))]
    pub project: String,
    /// StoragePool holding this copy. Immutable.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("pool is immutable"))]
    pub pool: String,
    /// Node of that pool (also the `projstore.io/node` label). Immutable.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("node is immutable"))]
    pub node: String,
    /// Primary (serves read-write) or Secondary (receives streams).
    pub role: ReplicaRole,
    /// Fencing epoch; grows by one at every promotion. Never decreases.
    #[x_kube(validation = Rule::new("self >= oldSelf").message("epoch never decreases"))]
    pub epoch: u64,
    /// For a Secondary: the primary it pulls streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ReplicaSource>,
    /// Live, Archived (closed project: streams only) or Trashed (deleted project).
    #[serde(default)]
    pub state: ReplicaState,
}

/// Role of a copy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReplicaRole {
    /// Serves the project read-write, takes snapshots, writes streams.
    Primary,
    /// Receives streams from the primary; never mounted read-write.
    #[default]
    Secondary,
}

/// Data state of a copy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReplicaState {
    /// A live dataset plus streams.
    #[default]
    Live,
    /// Streams only (closed project).
    Archived,
    /// In the trash until retention ends (deleted project).
    Trashed,
}

/// Where a secondary pulls from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSource {
    /// The primary's StoragePool.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub pool: String,
    /// The primary's node.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub node: String,
    /// Base URL of the primary's stream server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        pattern(r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?$")
    )]
    pub stream_endpoint: Option<String>,
}

/// Phase of a copy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReplicaPhase {
    Pending,
    Creating,
    Syncing,
    Ready,
    Error,
    Archived,
    Trashed,
}

/// A snapshot, identified by its GUID and ordered by its creation txg.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SnapshotRef {
    /// Snapshot name (the part after `@`).
    pub name: String,
    /// ZFS GUID as a decimal string (64-bit values do not survive JSON numbers everywhere).
    #[schemars(pattern(r"^[0-9]{1,20}$"))]
    pub guid: String,
    /// ZFS creation transaction group.
    pub createtxg: u64,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Stream files held for the project on this pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct StreamsSummary {
    /// Number of complete stream files.
    pub count: u32,
    /// Their total size.
    pub bytes: u64,
}

/// A transfer under way.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferProgress {
    /// Bytes transferred so far.
    pub bytes_done: u64,
    /// Bytes to transfer in all (an estimate: a live send's size is known when it ends).
    pub bytes_total: u64,
    /// The rate over the last seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
}

/// What the agent observes about this copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamReplicaStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Phase of the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReplicaPhase>,
    /// Newest snapshot this copy holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_snapshot: Option<SnapshotRef>,
    /// Stream files kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamsSummary>,
    /// Offsite backups uploaded from this copy (only on the copy that uploads them), or the
    /// restore that builds it from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::BackupStatus>,
    /// Set on a primary built from a backup: `<target>:<namespace>/<name>@<snapshot>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// The transfer under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferProgress>,
    /// Seconds behind the primary's newest snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    /// On the primary: bytes used by the live data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// On the primary: bytes held only by snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_used_bytes: Option<u64>,
    /// On the primary: the quota as applied (`refquota`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Number of snapshots held here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u32>,
    /// On the primary: where the project is mounted on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// The last error, with what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// On the primary: the project's mounts of other projects' folders, as the agent sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::MountStatus>,
    /// Ready, Synced, Diverged, SnapshotsBlocked, HandedOff, Mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

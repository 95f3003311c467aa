//! `Project`: one user project, stored as a ZFS dataset with replicas on other hosts.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::schema::quantity_schema;

/// What a user declares about a project: its size, owner, copies, where it may live, how it is
/// snapshotted, and which folders of other projects appear inside it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "projstore.io",
    version = "v1alpha1",
    kind = "Project",
    doc = "A user project: a ZFS dataset with a quota, rolling snapshots and replicas on other hosts.",
    namespaced,
    status = "ProjectStatus",
    shortname = "proj",
    category = "projstore",
    derive = "PartialEq",
    printcolumn = r#"{"name":"PRIMARY","type":"string","jsonPath":".status.primary.node","description":"Node serving the project read-write"}"#,
    printcolumn = r#"{"name":"REPLICAS","type":"string","jsonPath":".status.replicasReady","description":"Copies ready / copies desired"}"#,
    printcolumn = r#"{"name":"USED","type":"string","jsonPath":".status.used","description":"Space used by the live data"}"#,
    printcolumn = r#"{"name":"QUOTA","type":"string","jsonPath":".spec.quota"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"BACKUP","type":"date","jsonPath":".status.backup.time","priority":1,"description":"When the newest offsite backup finished"}"#,
    printcolumn = r#"{"name":"BACKUP-PHASE","type":"string","jsonPath":".status.backup.phase","priority":1}"#,
    validation = Rule::new("has(self.spec.restoreFrom) == has(oldSelf.spec.restoreFrom) && (!has(self.spec.restoreFrom) || self.spec.restoreFrom == oldSelf.spec.restoreFrom)")
        .message("restoreFrom is immutable and can only be set when the project is created")
        .field_path(".spec.restoreFrom"),
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1123 label of at most 63 characters (lower-case letters, digits, '-')"),
    validation = Rule::new("!has(self.spec.mounts) || self.spec.mounts.all(m, m.project != self.metadata.name)")
        .message("a project cannot mount a folder of itself")
        .field_path(".spec.mounts"),
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// Size limit of the project's live data (ZFS `refquota`; snapshots do not count against
    /// it), between 1Mi and 1Pi. It can be raised at any time; it is never lowered below what
    /// the project already uses.
    #[schemars(schema_with = "quantity_schema")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('1Mi')) >= 0 && quantity(self).compareTo(quantity('1Pi')) <= 0")
        .message("quota must be a quantity between 1Mi and 1Pi"))]
    pub quota: Quantity,

    /// Who owns the project's files: the project root belongs to this uid/gid.
    pub owner: Owner,

    /// How many copies of the project to keep: the primary plus copies-1 replicas (1..5).
    #[serde(default = "default_copies")]
    #[schemars(range(min = 1, max = 5))]
    pub copies: u8,

    /// Where the project may be stored.
    #[serde(default)]
    pub placement: Placement,

    /// Rolling snapshots: how often, how many to keep, how much space they may use.
    #[serde(default)]
    pub snapshots: SnapshotPolicy,

    /// Open (served read-write by its primary) or Closed (archived to streams only).
    #[serde(default)]
    pub state: ProjectState,

    /// Whether the controller promotes a replica by itself when the primary's host is lost.
    #[serde(default)]
    pub failover: FailoverMode,

    /// Folders of other projects in the same namespace to mount inside this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.mountPath == m.mountPath))")
        .message("each mount needs its own mountPath"))]
    pub mounts: Vec<ProjectMount>,

    /// What happens to the data after the Project object is deleted.
    #[serde(default)]
    pub deletion: DeletionPolicy,

    /// Offsite backups of the project to a BackupTarget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,

    /// Build this new project from a backup (only when the project is created; immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFrom>,
}

/// Offsite backups: how often and which snapshots stay restorable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicy {
    /// Name of the BackupTarget (cluster-scoped) to upload to.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub target: String,
    /// Minutes between backups (5..44640); the annotation `projstore.io/backup-now` (any new
    /// value) backs up at once.
    #[serde(default = "default_backup_interval")]
    #[schemars(range(min = 5, max = 44640))]
    pub interval_minutes: u32,
    /// Which backed-up snapshots stay restorable: the newest in each of the N most recent UTC
    /// days, weeks and months (0..1000 each). The newest backup always stays.
    #[serde(default)]
    pub keep: BackupKeep,
}

fn default_backup_interval() -> u32 {
    1440
}

/// Restore points kept in the bucket per age class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BackupKeep {
    /// Daily restore points kept.
    #[serde(default = "keep_backup_daily")]
    #[schemars(range(max = 1000))]
    pub daily: u32,
    /// Weekly restore points kept.
    #[serde(default = "keep_weekly_backup")]
    #[schemars(range(max = 1000))]
    pub weekly: u32,
    /// Monthly restore points kept.
    #[serde(default = "keep_monthly_backup")]
    #[schemars(range(max = 1000))]
    pub monthly: u32,
}

impl Default for BackupKeep {
    fn default() -> Self {
        Self {
            daily: keep_backup_daily(),
            weekly: keep_weekly_backup(),
            monthly: keep_monthly_backup(),
        }
    }
}

fn keep_backup_daily() -> u32 {
    7
}
fn keep_weekly_backup() -> u32 {
    4
}
fn keep_monthly_backup() -> u32 {
    6
}

/// The backup a new project is built from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RestoreFrom {
    /// Name of the BackupTarget holding the backup.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub target: String,
    /// Namespace of the backed-up project. It must be the Project's own: a namespace's
    /// backups are restored only within it (the agent refuses others; CRD rules cannot see
    /// an object's namespace).
    #[schemars(length(min = 1, max = 63), pattern(names::DNS1123_LABEL))]
    pub namespace: String,
    /// Name of the backed-up project.
    #[schemars(length(min = 1, max = 63), pattern(names::DNS1123_LABEL))]
    pub name: String,
    /// A backed-up snapshot to restore (its name); the newest when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), pattern(names::SNAPSHOT_SHORT))]
    pub snapshot: Option<String>,
}

fn default_copies() -> u8 {
    3
}

/// File ownership of a project. Root (0) is refused: project files never belong to root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Owner {
    /// User id owning the project root (1..4294967294).
    #[schemars(range(min = 1, max = 4294967294u32))]
    pub uid: u32,
    /// Group id owning the project root (1..4294967294).
    #[schemars(range(min = 1, max = 4294967294u32))]
    pub gid: u32,
}

/// Constraints on where the copies of a project are placed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Pin the primary to this StoragePool. Changing it moves the project there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub pool: Option<String>,

    /// Only StoragePools whose labels match this selector are candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_selector: Option<LabelSelector>,

    /// How copies are spread: across datacenters (default), across zones, or not at all.
    /// A preference: when impossible, copies still land on distinct nodes.
    #[serde(default)]
    pub spread: Spread,

    /// Allow automatic placement on pools marked experimental.
    #[serde(default)]
    pub tolerate_experimental: bool,
}

impl Placement {
    /// Whether a pool with `labels` matches `poolSelector` (every pool when there is none).
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        let Some(sel) = &self.pool_selector else {
            return true;
        };
        let labels_ok = sel
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
            let val = labels.get(&e.key);
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => val.is_some_and(|v| values.contains(v)),
                "NotIn" => val.is_none_or(|v| !values.contains(v)),
                "Exists" => val.is_some(),
                "DoesNotExist" => val.is_none(),
                _ => false,
            }
        });
        labels_ok && exprs_ok
    }
}

/// Spread preference for the copies of a project.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Spread {
    /// Prefer copies in distinct datacenters, then zones.
    #[default]
    Datacenter,
    /// Prefer copies in distinct zones.
    Zone,
    /// Only require distinct nodes.
    None,
}

/// Rolling snapshot policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPolicy {
    /// Minutes between automatic snapshots (1..10080). No snapshot is taken when nothing was
    /// written since the last one.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 10080))]
    pub interval_minutes: u32,

    /// How many snapshots of each age class to keep.
    #[serde(default)]
    pub keep: KeepPolicy,

    /// New snapshots are refused while snapshot space exceeds this multiple of the quota
    /// (1..100).
    #[serde(default = "default_space_ratio")]
    #[schemars(range(min = 1, max = 100))]
    pub max_space_ratio: u32,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            interval_minutes: default_interval(),
            keep: KeepPolicy::default(),
            max_space_ratio: default_space_ratio(),
        }
    }
}

fn default_interval() -> u32 {
    15
}
fn default_space_ratio() -> u32 {
    3
}

/// For each class, the newest snapshot in each of the N most recent UTC periods that hold one
/// is kept (0..10000 each). The newest snapshot is always kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct KeepPolicy {
    /// Most recent snapshots kept regardless of age.
    #[serde(default = "keep_frequent")]
    #[schemars(range(max = 10000))]
    pub frequent: u32,
    /// Hourly snapshots kept.
    #[serde(default = "keep_hourly")]
    #[schemars(range(max = 10000))]
    pub hourly: u32,
    /// Daily snapshots kept.
    #[serde(default = "keep_daily")]
    #[schemars(range(max = 10000))]
    pub daily: u32,
    /// Weekly snapshots kept.
    #[serde(default = "keep_weekly")]
    #[schemars(range(max = 10000))]
    pub weekly: u32,
    /// Monthly snapshots kept.
    #[serde(default = "keep_monthly")]
    #[schemars(range(max = 10000))]
    pub monthly: u32,
}

impl Default for KeepPolicy {
    fn default() -> Self {
        Self {
            frequent: keep_frequent(),
            hourly: keep_hourly(),
            daily: keep_daily(),
            weekly: keep_weekly(),
            monthly: keep_monthly(),
        }
    }
}

fn keep_frequent() -> u32 {
    8
}
fn keep_hourly() -> u32 {
    24
}
fn keep_daily() -> u32 {
    14
}
fn keep_weekly() -> u32 {
    7
}
fn keep_monthly() -> u32 {
    4
}

/// Whether a project is live or archived.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProjectState {
    /// Served read-write by its primary, replicated to its secondaries.
    #[default]
    Open,
    /// Archived: a final verified stream chain is kept on every copy; no live dataset.
    Closed,
}

/// Who decides to promote a replica when the primary's host is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailoverMode {
    /// The controller promotes the freshest ready replica after the grace period.
    #[default]
    Automatic,
    /// The controller only reports the lost primary (condition and Event); an operator acts.
    Manual,
}

/// A folder of another project of the same namespace, mounted inside this one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectMount {
    /// Name of the source Project (same namespace).
    #[schemars(length(max = 63), pattern(names::DNS1123_LABEL))]
    pub project: String,
    /// Folder inside the source project, relative to its root (no `..`, no leading `/`).
    #[schemars(length(max = 1024), pattern(names::RELATIVE_PATH))]
    pub path: String,
    /// Where the folder appears inside this project, relative to its root (no `..`).
    #[schemars(length(max = 1024), pattern(names::RELATIVE_PATH))]
    pub mount_path: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Retention of a deleted project's data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionPolicy {
    /// Days the data stays in the trash after the Project is deleted (0..3650). Re-creating
    /// the Project within that time restores it.
    #[serde(default = "default_retain_days")]
    #[schemars(range(max = 3650))]
    pub retain_days: u32,
}

impl Default for DeletionPolicy {
    fn default() -> Self {
        Self {
            retain_days: default_retain_days(),
        }
    }
}

fn default_retain_days() -> u32 {
    7
}

/// Lifecycle phase of a project.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProjectPhase {
    Pending,
    Placing,
    Ready,
    Degraded,
    Moving,
    Closing,
    Closed,
    Opening,
    Deleting,
}

/// What the controller observes about a project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProjectPhase>,
    /// The copy serving the project read-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryStatus>,
    /// The secondary copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaSummary>,
    /// Ready copies over desired copies, e.g. `3/3` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_ready: Option<String>,
    /// Bytes used by the live data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Live data use in human units, e.g. `1.2Gi` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    /// Bytes held only by snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_used_bytes: Option<u64>,
    /// The quota in bytes as applied on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Name of the newest snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// Number of snapshots on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u32>,
    /// State of each mount of `spec.mounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountStatus>,
    /// When the project's data was first created (kept across restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// Set when the project was restored: the trash dataset it came from, or the backup
    /// (`<target>:<namespace>/<name>@<snapshot>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Offsite backups: the newest, its verification, and how the latest attempt went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// Ready, Placed, Replicated, SnapshotsBlocked, Diverged, Mounted, BackedUp,
    /// BackupVerified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where the primary copy lives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryStatus {
    /// StoragePool holding the primary.
    pub pool: String,
    /// Node of that pool.
    pub node: String,
    /// Fencing epoch: only the copy with the newest epoch serves read-write.
    pub epoch: u64,
    /// Where the project is mounted on the primary's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

/// One secondary copy as seen from the project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSummary {
    /// StoragePool holding the copy.
    pub pool: String,
    /// Node of that pool.
    pub node: String,
    /// Primary or Secondary.
    pub role: crate::ReplicaRole,
    /// Newest snapshot applied on that copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_snapshot: Option<String>,
    /// Seconds the copy is behind the primary's newest snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    /// Phase of the copy's StreamReplica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::ReplicaPhase>,
}

/// State of one mount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountStatus {
    /// The mount's `mountPath`.
    pub mount_path: String,
    /// Pending, Mounted or Failed.
    pub phase: String,
    /// What went wrong, or where the folder comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a project's offsite backups.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BackupPhase {
    /// An upload or a restore runs.
    Running,
    /// The newest snapshot due is in the bucket.
    Succeeded,
    /// The latest attempt failed (see `message`); it is retried with backoff.
    Failed,
}

/// Offsite backups of a project (on the Project, and from the copy that uploads them on its
/// StreamReplica).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Newest snapshot in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// When that backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Bytes uploaded by that backup (stored size of its objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When the newest backup was last restored into a scratch dataset and found equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// Whether the latest verification succeeded (absent before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// What the latest verification found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_message: Option<String>,
    /// When the latest verification ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_time: Option<Time>,
    /// Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// What the latest attempt did or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the latest backup attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<Time>,
    /// Consecutive failed attempts (for the backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// The `projstore.io/verify-backup-now` value the latest verification answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_requested: Option<String>,
    /// The `projstore.io/backup-now` value the latest backup answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// Bytes uploaded / to upload while an upload runs, or downloaded while a restore runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// Total of the running transfer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

//! `StoragePool`: a ZFS pool on one storage host.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names;

/// A ZFS pool on a storage host, created and kept by that host's agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "projstore.io",
    version = "v1alpha1",
    kind = "StoragePool",
    doc = "A ZFS pool on one storage host. The host's agent creates, imports and grows it and reports its capacity and health.",
    status = "StoragePoolStatus",
    shortname = "sp",
    category = "projstore",
    derive = "PartialEq",
    selectable = ".spec.nodeName",
    printcolumn = r#"{"name":"NODE","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"POOL","type":"string","jsonPath":".spec.poolName"}"#,
    printcolumn = r#"{"name":"DC","type":"string","jsonPath":".spec.topology.datacenter"}"#,
    printcolumn = r#"{"name":"FREE","type":"string","jsonPath":".status.free","description":"Free space"}"#,
    printcolumn = r#"{"name":"SIZE","type":"string","jsonPath":".status.size","description":"Pool size"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolSpec {
    /// The Kubernetes node (storage host) that holds the pool. Immutable.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable"))]
    pub node_name: String,

    /// ZFS pool name: starts with a letter; letters, digits, `_`, `-`, `.`, `:`; not a
    /// reserved word (`mirror`, `raidz`, `draid`, `spare`, `log`, …). Immutable.
    #[schemars(length(min = 1, max = 64), pattern(names::POOL_NAME))]
    #[x_kube(validation = Rule::new(names::RESERVED_POOL_NAME_RULE)
        .message("poolName must not be a reserved ZFS word (mirror*, raidz*, draid*, spare*, log, cache, special, dedup)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolName is immutable"))]
    pub pool_name: String,

    /// Devices or image files backing the pool. Adding entries grows the pool; entries cannot
    /// be removed.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("oldSelf.all(o, self.exists(n, n.path == o.path))")
        .message("vdevs may only grow: an existing vdev cannot be removed"))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.path == v.path))")
        .message("each vdev path may appear once"))]
    pub vdevs: Vec<Vdev>,

    /// ZFS properties set on the pool's root filesystem.
    #[serde(default)]
    pub properties: PoolProperties,

    /// Failure domains of the host. Defaults to the node's topology labels when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,

    /// Whether new copies may be placed here.
    #[serde(default = "default_true")]
    pub schedulable: bool,

    /// Experimental pools get no automatic placements; a Project may still pin to one.
    #[serde(default)]
    pub experimental: bool,

    /// Percent of the pool's space kept out of placement (0..90).
    #[serde(default = "default_reserved_percent")]
    #[schemars(range(max = 90))]
    pub reserved_percent: u8,

    /// Import with `-f` when the pool was last used by another host. Only set this when you
    /// know that host is gone: importing a pool on two hosts corrupts it.
    #[serde(default)]
    pub force_import: bool,
}

fn default_true() -> bool {
    true
}
fn default_reserved_percent() -> u8 {
    10
}

/// One vdev: a block device, or an image file the agent creates sparse.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vdev {
    /// Absolute, normalised path of a device or image file (no `..`).
    #[schemars(length(min = 2, max = 1024), pattern(names::ABSOLUTE_PATH))]
    pub path: String,
    /// Size of the image file to create when `path` does not exist (at least 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 67108864u64))]
    pub size_bytes: Option<u64>,
}

/// Pool-wide ZFS properties. The agent falls back to what the host's ZFS supports and says so
/// in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolProperties {
    /// Compression algorithm (quote `"on"`/`"off"` in YAML): on, off, lz4, lzjb, zle, gzip, gzip-1..9, zstd, zstd-1..19.
    #[serde(default = "default_compression")]
    #[schemars(pattern(
        r"^(on|off|lz4|lzjb|zle|gzip|gzip-[1-9]|zstd|zstd-fast|zstd-([1-9]|1[0-9]))$"
    ))]
    pub compression: String,
    /// Update access times on reads (ZFS `atime`; off by default, as reads then cost no writes).
    #[serde(default)]
    pub atime: bool,
    /// Record size, a power of two from 512 to 16M (e.g. `128K`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(512|1K|2K|4K|8K|16K|32K|64K|128K|256K|512K|1M|2M|4M|8M|16M)$"))]
    pub recordsize: Option<String>,
    /// Synchronous write hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logbias: Option<LogBias>,
}

impl Default for PoolProperties {
    fn default() -> Self {
        Self {
            compression: default_compression(),
            atime: false,
            recordsize: None,
            logbias: None,
        }
    }
}

fn default_compression() -> String {
    "lz4".to_owned()
}

/// ZFS `logbias` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogBias {
    Latency,
    Throughput,
}

/// Failure domains of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Topology {
    /// Zone (e.g. a rack or a room) within the datacenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(names::LABEL_VALUE))]
    pub zone: Option<String>,
    /// Datacenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), pattern(names::LABEL_VALUE))]
    pub datacenter: Option<String>,
}

/// Phase of a pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PoolPhase {
    Pending,
    Ready,
    Degraded,
    NotReady,
}

/// What the agent (capacity, health, capabilities) and controller (phase) observe.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Ready, Degraded or NotReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,
    /// ZFS health (ONLINE, DEGRADED, FAULTED, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Pool size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Allocated bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<u64>,
    /// Free bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// Pool size in human units (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Free space in human units (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<String>,
    /// Number of projects with a copy here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<u32>,
    /// What the host's ZFS can do and which features the agent uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Properties as actually set, where they differ from the spec (e.g. lz4 unsupported).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties_in_effect: BTreeMap<String, String>,
    /// The agent serving this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// Ready, SanityChecksPassed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The ZFS implementation on a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Capabilities {
    /// `openzfs` or `zfs-fuse`.
    pub implementation: String,
    /// Implementation version, when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Features in use: lz4, zstd, resumable-send, bookmarks, holds, raw-send, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// How peers reach the agent of a pool, and when it last reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Base URL of the agent's stream server (TLS only), e.g. `https://127.0.0.2:7420`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_endpoint: Option<String>,
    /// `host:port` of the agent's sftp-only sshd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sftp_endpoint: Option<String>,
    /// The public half of that sshd's own host key (`ssh-ed25519 AAAA…`), made by the agent
    /// on its host: peers mounting from this host trust exactly this key for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub sftp_host_key: Option<String>,
    /// The public half of the agent's own sftp client key: the peers it mounts from let in
    /// exactly this key, from this host's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub sftp_client_key: Option<String>,
}

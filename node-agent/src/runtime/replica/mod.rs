//! Serving StreamReplicas of this node (DESIGN §5.2–§5.5), `state: Live` only so far.
//!
//! Primary: the dataset (created, or rebuilt from the stream chain), epoch fencing, quota,
//! owner, mount; snapshots on schedule and on `projstore.io/snapshot-now`, with the space
//! guard and retention; a stream per snapshot; superseded streams collected.
//! Secondary: fetch what the chain lacks from the primary's stream server (resuming, checked
//! against the peer's manifest), apply it never mounted, report what it holds.

use std::path::Path;

use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Api;
use kube::{Client, ResourceExt};
use projstore_api::{Project, ReplicaRole, ReplicaState, StreamReplica};
use serde_json::{Value, json};

use crate::fetch::Peer;
use crate::layout::{NewProject, PROP_EPOCH, PROP_ROLE, PoolLayout, create_project};
use crate::retention::{
    RetentionPolicy, SnapshotFacts, is_managed, managed_name, retain, snapshot_due,
    snapshots_blocked,
};
use crate::streams::StoreError;
use crate::streams::{ProjectKey, ReplicaPlan, StreamStore, plan, plan_for_replica};
use crate::transfer::{Storage, TransferError, apply_stream, write_stream};
use crate::zfs::{DatasetName, PoolName, Progress, PropertyName, SnapshotInfo, Zfs};

mod archive;
mod chain;
mod fencing;
mod ownership;
mod primary;
mod secondary;
mod serve_mounts;
mod trash;

use archive::*;
use chain::*;
pub use fencing::fence_all;
use fencing::*;
use ownership::*;
use primary::*;
use secondary::*;
use serve_mounts::*;
use trash::*;
pub use trash::{PROP_PURGE_AFTER, purge_trash};

/// Annotation on the primary's replica during a move: the pool taking over.
pub const HANDOFF_TO: &str = "projstore.io/handoff-to";

/// Everything a replica pass needs.
pub struct ReplicaEnv<'a> {
    pub zfs: &'a Zfs,
    pub client: &'a Client,
    pub node: &'a str,
    pub projects_root: &'a Path,
    pub streams_root: &'a Path,
    /// This node's TLS identity, for fetching from peers.
    pub tls: std::sync::Arc<crate::tls::NodeTls>,
    pub run_dir: &'a Path,
    /// Key files for sftp mounts (None: mounts from other hosts are not possible).
    pub keys: Option<crate::sftp::SshKeys>,
    /// This host's address as its sftp endpoint names it: peers let its client key in from
    /// there only, so its sshfs connections leave from it.
    pub sftp_address: Option<std::net::IpAddr>,
    /// Per primary dataset: when a scheduled snapshot last found nothing written (no snapshot
    /// was taken; the next check is one interval later).
    pub quiet: &'a std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// What a pass over a replica asks of the scheduler: the time until it has work of its own
/// (a primary's next snapshot), or None when only a change to the replica makes work.
pub type Due = Option<std::time::Duration>;

pub(super) fn p(name: &str) -> Result<PropertyName, String> {
    PropertyName::parse(name).map_err(|e| e.to_string())
}

pub(super) fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    prev: &[Condition],
) -> Condition {
    projstore_api::units::condition(
        prev,
        type_,
        ok,
        reason,
        message,
        k8s_openapi::jiff::Timestamp::now(),
        None,
    )
}

pub(super) fn snapshot_ref(s: &SnapshotInfo) -> Value {
    let t = k8s_openapi::jiff::Timestamp::from_second(s.creation)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    json!({"name": s.name, "guid": s.guid.to_string(), "createtxg": s.createtxg, "time": Time(t)})
}

/// One pass over replica `sr` on pool `pool`; returns the status to write, and when the
/// replica has work of its own next.
pub async fn reconcile(env: &ReplicaEnv<'_>, sr: &StreamReplica, pool: &PoolName) -> (Value, Due) {
    let prev = sr.status.clone().unwrap_or_default();
    let result = match (sr.spec.state, sr.spec.role) {
        (ReplicaState::Live, ReplicaRole::Primary) => primary(env, sr, pool).await,
        (ReplicaState::Live, ReplicaRole::Secondary) => {
            secondary(env, sr, pool).await.map(|s| (s, None))
        }
        (ReplicaState::Trashed, _) => trash(env, sr, pool).await.map(|s| (s, None)),
        (ReplicaState::Archived, role) => archive(env, sr, pool, role).await.map(|s| (s, None)),
    };
    let due = result.as_ref().ok().and_then(|(_, d)| *d);
    let status = match result.map(|(s, _)| s) {
        Ok(mut status) => {
            status["observedGeneration"] = json!(sr.metadata.generation);
            let ready = status["phase"] == "Ready";
            let mut all: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
            let reason = if ready { "Serving" } else { "NotInSync" };
            all.push(
                serde_json::to_value(cond("Ready", ready, reason, "", &prev.conditions))
                    .unwrap_or_default(),
            );
            status["conditions"] = Value::Array(all);
            status["lastError"] = Value::Null;
            status
        }
        Err(e) => {
            crate::metrics::add(&crate::metrics::METRICS.errors, 1);
            json!({
            "phase": "Error",
            "lastError": e,
            "observedGeneration": sr.metadata.generation,
            "conditions": [cond("Ready", false, "Error", e.clone(), &prev.conditions)],
            })
        }
    };
    (status, due)
}

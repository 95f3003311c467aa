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

use super::AgentContext;
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
mod error;
mod fencing;
mod ownership;
mod primary;
mod secondary;
mod serve_mounts;
mod trash;

use archive::*;
use chain::*;
pub use error::ReplicaError;
pub use fencing::fence_all;
use fencing::*;
use ownership::*;
use primary::*;
use secondary::*;
use serve_mounts::*;
use trash::*;
pub use trash::{PROP_PURGE_AFTER, purge_trash};

/// What a pass over a replica asks of the scheduler: the time until it has work of its own
/// (a primary's next snapshot), or None when only a change to the replica makes work.
pub type Due = Option<std::time::Duration>;

pub(super) fn p(name: &str) -> Result<PropertyName, ReplicaError> {
    PropertyName::parse(name).map_err(ReplicaError::from)
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
pub async fn reconcile(cx: &AgentContext, sr: &StreamReplica, pool: &PoolName) -> (Value, Due) {
    let prev = sr.status.clone().unwrap_or_default();
    let result = match (sr.spec.state, sr.spec.role) {
        (ReplicaState::Live, ReplicaRole::Primary) => primary(cx, sr, pool).await,
        (ReplicaState::Live, ReplicaRole::Secondary) => {
            secondary(cx, sr, pool).await.map(|s| (s, None))
        }
        (ReplicaState::Trashed, _) => trash(cx, sr, pool).await.map(|s| (s, None)),
        (ReplicaState::Archived, role) => archive(cx, sr, pool, role).await.map(|s| (s, None)),
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
            let e = e.to_string();
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

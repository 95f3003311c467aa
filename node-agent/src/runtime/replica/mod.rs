//! Serving StreamReplicas of this node (DESIGN §5.2–§5.6): one pass over a replica, by its
//! state and role. Each concern has its room: [`primary`] (a live primary), [`secondary`] (a
//! live copy), [`trash`], [`archive`] (Closed), [`chain`] (the stored stream chain),
//! [`fencing`] (stopping writes), [`ownership`], [`serve_mounts`] (a primary's folder
//! mounts). What a pass decides is in [`plans`], pure and table-tested; the rest reads and
//! acts.

use std::path::Path;

use chrono::Utc;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use projstore_api::StreamReplicaStatus;
use projstore_api::{Project, ReplicaRole, ReplicaState, StreamReplica};

use super::AgentContext;
use crate::fetch::Peer;
use crate::layout::{NewProject, PROP_EPOCH, PROP_ROLE, PoolLayout, create_project};
use crate::retention::managed_name;
use crate::streams::{ProjectKey, StreamStore, plan};
use crate::transfer::{Storage, apply_stream, write_stream};
use crate::zfs::{DatasetName, PoolName, Progress, PropertyName, SnapshotInfo, Zfs};

mod archive;
mod backup;
mod chain;
mod error;
mod fencing;
mod ownership;
pub mod plans;
pub use backup::{
    BackupJob, MAX_UPLOADS, VerifyMemo, backup_due, stop_job as stop_backup_job, uploads, verifier,
    verify_due,
};
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
use plans::{PrimaryFacts, PrimaryReport, SnapshotFacts, TrashPlan, Verdict};
use primary::*;
use secondary::*;
use serve_mounts::*;
use trash::*;
pub use trash::{PROP_PURGE_AFTER, purge_trash};

/// The copy a pass works on, as this host names it: its project, its dataset on the pool,
/// the pool's stream store.
pub(super) struct Copy<'a> {
    pub zfs: &'a Zfs,
    pub ns: String,
    pub key: ProjectKey,
    pub pool: &'a PoolName,
    pub layout: PoolLayout,
    pub ds: DatasetName,
    pub store: StreamStore,
    node: &'a str,
}

impl<'a> Copy<'a> {
    pub fn new(
        cx: &'a AgentContext,
        sr: &StreamReplica,
        pool: &'a PoolName,
    ) -> Result<Self, ReplicaError> {
        let ns = sr.namespace().unwrap_or_default();
        let key = ProjectKey::new(&ns, &sr.spec.project)?;
        let layout = PoolLayout::new(pool.clone());
        Ok(Self {
            zfs: cx.zfs()?,
            ds: layout.project(&key)?,
            store: cx.store_of(pool),
            ns,
            key,
            pool,
            layout,
            node: cx.node(),
        })
    }

    /// What writing and applying streams of this copy needs.
    pub fn storage(&self) -> Storage<'_> {
        Storage {
            zfs: self.zfs,
            store: &self.store,
            pool: self.pool,
            node: self.node,
        }
    }
}

/// What a pass over a replica asks of the scheduler: the time until it has work of its own
/// (a primary's next snapshot), or None when only a change to the replica makes work.
pub type Due = Option<std::time::Duration>;

/// The stream server of a secondary's source (its primary), as the spec names it.
pub(super) fn source_peer(cx: &AgentContext, sr: &StreamReplica) -> Result<Peer, ReplicaError> {
    let source = sr.spec.source.as_ref().ok_or("no source primary yet")?;
    let endpoint = source
        .stream_endpoint
        .as_deref()
        .ok_or("the primary's stream endpoint is not known yet")?;
    Ok(Peer::new(endpoint, &source.node, cx.tls()?)?)
}

pub(super) fn p(name: &str) -> Result<PropertyName, ReplicaError> {
    PropertyName::parse(name).map_err(ReplicaError::from)
}

/// One pass over replica `sr` on pool `pool`; returns the status to write, and when the
/// replica has work of its own next.
pub async fn reconcile(
    cx: &std::sync::Arc<AgentContext>,
    sr: &StreamReplica,
    pool: &PoolName,
) -> (StreamReplicaStatus, Due) {
    let prev = sr.status.clone().unwrap_or_default();
    if sr.spec.state != ReplicaState::Live {
        // Before its dataset is archived or trashed: no upload sends from it any more.
        backup::stop_job(cx, sr);
    }
    let result = match (sr.spec.state, sr.spec.role) {
        (ReplicaState::Live, ReplicaRole::Primary) => primary(cx, sr, pool).await,
        (ReplicaState::Live, ReplicaRole::Secondary) => {
            secondary(cx, sr, pool).await.map(|s| (s, None))
        }
        (ReplicaState::Trashed, _) => trash(cx, sr, pool).await.map(|s| (s, None)),
        (ReplicaState::Archived, role) => archive(cx, sr, pool, role).await,
    };
    // Offsite backups ride on a live copy's pass that went well.
    let result = match result {
        Ok((mut status, due)) if sr.spec.state == ReplicaState::Live => {
            if status.backup.is_none() {
                status.backup = prev.backup.clone();
            }
            if status.restored_from.is_none() {
                status.restored_from = prev.restored_from.clone();
            }
            let backup_due = backup::backup_pass(cx, sr, pool, &mut status).await;
            let due = match (due, backup_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok((status, due))
        }
        other => other,
    };
    let due = result.as_ref().ok().and_then(|(_, d)| *d);
    if let Err(e) = &result {
        crate::metrics::add(&crate::metrics::METRICS.errors, 1);
        tracing::warn!(error = %e, "replica pass failed");
    }
    let outcome = result.map(|(s, _)| s).map_err(|e| e.to_string());
    let status = plans::finish(&prev, outcome, sr.metadata.generation, Timestamp::now());
    (status, due)
}

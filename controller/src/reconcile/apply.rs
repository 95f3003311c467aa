//! Applying decisions: the only place the Project and StoragePool reconcilers write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::{Api, DeleteParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use projstore_api::contract::{PROJECT_LABEL, RETAIN_DAYS, TRASHED_AT};
use projstore_api::{
    CLEANUP_FINALIZER, Project, ProjectPhase, ReplicaState, StoragePool, StreamReplica,
};
use serde_json::json;

use super::decide::{Change, Inputs, decide};
use super::pool::{lease_name, pool_phase};
pub use crate::context::{Context, MANAGER, Settings};
use crate::context::{patch_params, post_params};
use crate::view::PoolView;

/// Errors of a reconcile; each says what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

/// Reconciles one Project.
#[tracing::instrument(skip_all, fields(project = %project_key(&p)))]
pub async fn reconcile_project(p: Arc<Project>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["Project"]).inc();
    let ns = p.namespace().ok_or(Error::NoNamespace)?;
    let name = p.name_any();
    let uid = p.uid().unwrap_or_default();
    let all: Vec<Arc<StreamReplica>> = ctx.replicas.state();
    // Sorted: caches iterate in no particular order, and the status must not depend on it.
    let mut mine: Vec<StreamReplica> = all
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                && r.owner_references().iter().any(|o| o.uid == uid)
        })
        .map(|r| (**r).clone())
        .collect();
    mine.sort_by_key(|r| r.name_any());
    let tombstones: Vec<StreamReplica> = all
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                && r.owner_references().is_empty()
                && r.labels().get(PROJECT_LABEL) == Some(&name)
                && r.spec.state == ReplicaState::Trashed
        })
        .map(|r| (**r).clone())
        .collect();
    let mut pools: Vec<PoolView> = ctx
        .pools
        .state()
        .iter()
        .map(|p| PoolView::from_pool(p))
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let grace = chrono::Duration::from_std(ctx.settings.failover_grace)
        .unwrap_or(chrono::Duration::seconds(120));
    let mount_sources: BTreeMap<String, Option<projstore_api::PrimaryStatus>> = p
        .spec
        .mounts
        .iter()
        .map(|m| {
            let src = ctx
                .projects
                .get(&ObjectRef::new(&m.project).within(&ns))
                .and_then(|s| s.status.clone())
                .and_then(|s| s.primary);
            (m.project.clone(), src)
        })
        .collect();
    let decision = decide(&Inputs {
        project: &p,
        replicas: &mine,
        tombstones: &tombstones,
        pools: &pools,
        now: Utc::now(),
        failover_grace: grace,
        mount_sources: &mount_sources,
    });

    let projects: Api<Project> = Api::namespaced(ctx.client.clone(), &ns);
    let srs: Api<StreamReplica> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = p.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let mut finalizer_removed = false;
    for change in &decision.changes {
        tracing::info!(change = %describe(change), "applying");
        match change {
            // The finalizer is decided with the trash dance in `decide` (see its `deletion`
            // module for why not kube-runtime's finalizer helper); here it is only written.
            Change::AddFinalizer => {
                let mut f = p.finalizers().to_vec();
                f.push(CLEANUP_FINALIZER.to_owned());
                let patch =
                    json!({"metadata": {"finalizers": f, "resourceVersion": p.resource_version()}});
                projects
                    .patch(&name, &patch_params(), &Patch::Merge(&patch))
                    .await?;
            }
            Change::RemoveFinalizer => {
                let f: Vec<&String> = p
                    .finalizers()
                    .iter()
                    .filter(|f| *f != CLEANUP_FINALIZER)
                    .collect();
                let patch =
                    json!({"metadata": {"finalizers": f, "resourceVersion": p.resource_version()}});
                projects
                    .patch(&name, &patch_params(), &Patch::Merge(&patch))
                    .await?;
                finalizer_removed = true;
            }
            Change::Create(sr) => {
                let mut sr = (**sr).clone();
                sr.metadata.owner_references = owner.clone().map(|o| vec![o]);
                done_if(409, srs.create(&post_params(), &sr).await)?;
            }
            Change::Update {
                name,
                spec,
                annotations,
            } => {
                let ann: BTreeMap<&String, &Option<String>> = annotations.iter().collect();
                let patch = if ann.is_empty() {
                    json!({"spec": spec})
                } else {
                    json!({"spec": spec, "metadata": {"annotations": ann}})
                };
                srs.patch(name, &patch_params(), &Patch::Merge(&patch))
                    .await?;
            }
            Change::Adopt { name } => {
                let patch = json!({
                    "metadata": {"ownerReferences": owner.clone().map(|o| vec![o]), "annotations": {TRASHED_AT: null, RETAIN_DAYS: null}},
                    "spec": {"state": ReplicaState::Live},
                });
                srs.patch(name, &patch_params(), &Patch::Merge(&patch))
                    .await?;
            }
            Change::Orphan { name } => {
                srs.patch(
                    name,
                    &patch_params(),
                    &Patch::Merge(&json!({"metadata": {"ownerReferences": null}})),
                )
                .await?;
            }
            Change::Delete { name } => {
                done_if(404, srs.delete(name, &DeleteParams::default()).await)?;
            }
            Change::Event {
                warning,
                reason,
                message,
            } => {
                if *reason == "Unplaceable" {
                    ctx.metrics
                        .placement_failures
                        .with_label_values(&["unplaceable"])
                        .inc();
                }
                let ev = Event {
                    type_: if *warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: (*reason).to_owned(),
                    note: Some(message.chars().take(1000).collect()),
                    action: (*reason).to_owned(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&ev, &p.object_ref(&())).await {
                    tracing::warn!(error = %e, "cannot record event");
                }
            }
        }
    }
    if !finalizer_removed && p.status.as_ref() != Some(&decision.status) {
        projects
            .patch_status(
                &name,
                &patch_params(),
                &Patch::Merge(&json!({"status": decision.status})),
            )
            .await?;
    }
    for r in &decision.status.replicas {
        if let Some(lag) = r.lag_seconds {
            ctx.metrics
                .lag
                .with_label_values(&[ns.as_str()])
                .observe(lag as f64);
        }
    }
    ctx.metrics
        .duration
        .with_label_values(&["Project"])
        .observe(start.elapsed().as_secs_f64());
    ctx.forget_failures(&format!("Project/{ns}/{name}"));
    // Time-driven steps (grace periods, catching up) need a look again soon.
    let settled = matches!(
        decision.status.phase,
        Some(ProjectPhase::Ready | ProjectPhase::Closed)
    );
    Ok(if decision.changes.is_empty() && settled {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

/// Reconciles one StoragePool: phase and `Ready` from the agent's Lease.
#[tracing::instrument(skip_all, fields(pool = %pool.name_any()))]
pub async fn reconcile_pool(pool: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics
        .reconciles
        .with_label_values(&["StoragePool"])
        .inc();
    let lease = ctx.leases.get(
        &ObjectRef::new(&lease_name(&pool.spec.node_name)).within(&ctx.settings.lease_namespace),
    );
    let renewed = lease
        .and_then(|l| l.spec.clone())
        .and_then(|s| s.renew_time)
        .map(|t| crate::view::chrono_of(&t.0));
    let timeout = chrono::Duration::from_std(ctx.settings.heartbeat_timeout)
        .unwrap_or(chrono::Duration::seconds(40));
    let (phase, ready) = pool_phase(&pool, renewed, Utc::now(), timeout);
    let status = pool.status.clone().unwrap_or_default();
    let current_ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    if status.phase != Some(phase) || current_ready != Some(&ready) {
        // Keep the agent's conditions; replace only ours. The resourceVersion guards the list.
        let mut conds: Vec<_> = status
            .conditions
            .iter()
            .filter(|c| c.type_ != "Ready")
            .cloned()
            .collect();
        let (ready_reason, ready_message) = (ready.reason.clone(), ready.message.clone());
        conds.push(ready);
        let patch = json!({
            "metadata": {"resourceVersion": pool.resource_version()},
            "status": {"phase": phase, "conditions": conds, "observedGeneration": pool.metadata.generation},
        });
        let api: Api<StoragePool> = Api::all(ctx.client.clone());
        api.patch_status(&pool.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await?;
        if status.phase != Some(phase) {
            let ev = Event {
                type_: if phase == projstore_api::PoolPhase::Ready {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: format!("Pool{phase:?}"),
                note: Some(
                    format!("{ready_reason}: {ready_message}")
                        .chars()
                        .take(1000)
                        .collect(),
                ),
                action: "Heartbeat".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &pool.object_ref(&())).await {
                tracing::warn!(pool = %pool.name_any(), error = %e, "cannot record event");
            }
        }
    }
    ctx.metrics
        .duration
        .with_label_values(&["StoragePool"])
        .observe(start.elapsed().as_secs_f64());
    ctx.forget_failures(&format!("StoragePool//{}", pool.name_any()));
    // Look again when the heartbeat would go stale.
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// Counts, logs, and backs off per object: 1 s, 2 s, 4 s, … up to 5 minutes.
pub fn on_error<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind = K::kind(&());
    ctx.metrics.errors.with_label_values(&[kind.as_ref()]).inc();
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let key = format!("{kind}/{ns}/{name}");
    let n = ctx.failures.lock().map(|mut f| {
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = Duration::from_secs(1u64 << n.unwrap_or(1).min(9).saturating_sub(1))
        .min(Duration::from_secs(300));
    // Outside the reconcile's span: name the object the way that span does.
    if kind == "Project" {
        let project = format!("{ns}/{name}");
        tracing::warn!(%project, error = %err, retry_in = ?delay, "reconcile failed");
    } else {
        tracing::warn!(pool = %name, object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    }
    Action::requeue(delay)
}

/// A write whose API answer `code` means it is done already (409: the object exists, 404: it
/// is gone) succeeds.
fn done_if<T>(code: u16, written: Result<T, kube::Error>) -> Result<(), Error> {
    match written {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == code => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `namespace/name` of a Project, as its reconcile's span and log lines carry it.
fn project_key(p: &Project) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// One line about a change, for the log.
fn describe(change: &Change) -> String {
    match change {
        Change::AddFinalizer => "add the cleanup finalizer".into(),
        Change::RemoveFinalizer => "remove the cleanup finalizer".into(),
        Change::Create(sr) => format!(
            "create replica {} ({:?} at epoch {})",
            sr.name_any(),
            sr.spec.role,
            sr.spec.epoch
        ),
        Change::Update { name, spec, .. } => format!(
            "update replica {name} ({:?} at epoch {}, {:?})",
            spec.role, spec.epoch, spec.state
        ),
        Change::Adopt { name } => format!("adopt trashed replica {name}"),
        Change::Orphan { name } => format!("leave replica {name} in the trash"),
        Change::Delete { name } => format!("delete replica {name}"),
        Change::Event { reason, .. } => format!("record Event {reason}"),
    }
}

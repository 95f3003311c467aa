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

/// Annotation on the primary's replica during a move: the pool taking over.
pub const HANDOFF_TO: &str = "projstore.io/handoff-to";

/// User property on a primary's dataset: the last `projstore.io/snapshot-now` value acted on.
const PROP_SNAPSHOT_NOW: &str = "projstore.io:snapshot-now";

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

fn p(name: &str) -> Result<PropertyName, String> {
    PropertyName::parse(name).map_err(|e| e.to_string())
}

fn cond(
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

fn snapshot_ref(s: &SnapshotInfo) -> Value {
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

async fn primary(
    env: &ReplicaEnv<'_>,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<(Value, Due), String> {
    let ns = sr.namespace().unwrap_or_default();
    let key = ProjectKey::new(&ns, &sr.spec.project)?;
    let project = Api::<Project>::namespaced(env.client.clone(), &ns)
        .get_opt(&sr.spec.project)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("project {key} does not exist"))?;
    let owner = (project.spec.owner.uid, project.spec.owner.gid);
    if owner.0 == 0 || owner.1 == 0 {
        // The schema refuses it too; root must never own a tenant's files (defence in depth).
        return Err(format!(
            "owner {}:{} is refused: a project cannot be owned by uid or gid 0",
            owner.0, owner.1
        ));
    }
    let zfs = env.zfs;
    let layout = PoolLayout::new(pool.clone());
    let ds = layout.project(&key).map_err(|e| e.to_string())?;
    let store = StreamStore::new(env.streams_root.join(pool.as_str()));
    let storage = Storage {
        zfs,
        store: &store,
        pool,
        node: env.node,
    };
    let mountpoint = env.projects_root.join(&ns).join(&sr.spec.project);
    let quota = projstore_api::units::quantity_bytes(&project.spec.quota.0)
        .ok_or("quota is not a quantity")?;
    // What the pass reads of the dataset, in one call; written only where it differs.
    let read = || {
        zfs.get_props(
            &ds,
            &[
                PROP_EPOCH,
                PROP_ROLE,
                PROP_SNAPSHOT_NOW,
                "readonly",
                "setuid",
                "devices",
                "mountpoint",
                "mounted",
                "refquota",
                "referenced",
                "usedbysnapshots",
            ],
        )
    };
    let fenced = |have: &std::collections::BTreeMap<String, String>| {
        // Fencing: never serve a dataset written under a newer epoch than ours.
        let seen: u64 = have
            .get(PROP_EPOCH)
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        (seen > sr.spec.epoch).then(|| format!(
            "the dataset was written under epoch {seen}, newer than this replica's {}: not serving it",
            sr.spec.epoch
        ))
    };
    if zfs.exists(&ds).await.map_err(|e| e.to_string())? {
        if let Some(e) = fenced(&read().await.map_err(|e| e.to_string())?) {
            let _ = stop_writes(zfs, env.run_dir, &ds).await;
            return Err(e);
        }
    } else if restore_from_trash(zfs, &layout, &store, &key, &ds).await? {
        tracing::info!(project = %key, "restored from the trash");
    } else {
        let chain = stored_plan(&store, &key).await?.chain;
        if chain.is_empty() {
            let new = NewProject {
                key: &key,
                mountpoint: &mountpoint,
                quota_bytes: quota,
                uid: project.spec.owner.uid,
                gid: project.spec.owner.gid,
                epoch: sr.spec.epoch,
            };
            create_project(zfs, &layout, &new)
                .await
                .map_err(|e| e.to_string())?;
        } else {
            // Rebuild from the chain (a restore, or a primary placed where only streams are).
            for id in chain {
                let id = crate::streams::StreamId::parse(&id)?;
                apply_stream(&storage, &key, &id, &ds, &Progress::new())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if let Some(to) = sr.annotations().get(HANDOFF_TO) {
        return Ok((
            hand_off(&storage, env.run_dir, sr, &key, &ds, to).await?,
            None,
        ));
    }
    let have = read().await.map_err(|e| e.to_string())?;
    if let Some(e) = fenced(&have) {
        let _ = stop_writes(zfs, env.run_dir, &ds).await;
        return Err(e);
    }
    let mp = mountpoint.to_str().ok_or("projects root is not UTF-8")?;
    let epoch = sr.spec.epoch.to_string();
    for (prop, want) in [
        (PROP_EPOCH, epoch.as_str()),
        (PROP_ROLE, "primary"),
        ("readonly", "off"),
        ("setuid", "off"),
        ("devices", "off"),
        ("mountpoint", mp),
    ] {
        if have.get(prop).map(String::as_str) != Some(want) {
            zfs.set(&ds, &p(prop)?, want)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if have.get("mounted").map(String::as_str) != Some("yes") {
        zfs.mount(&ds).await.map_err(|e| e.to_string())?;
    }
    let not_exported = secure_root(env, &key, &mountpoint, owner).await?;

    let mut conditions = Vec::new();
    let prev = sr.status.clone().unwrap_or_default();
    if let Some(e) = not_exported {
        tracing::warn!(project = %key, error = %e, "not exported for folder mounts from other hosts");
        conditions.push(cond("Exported", false, "ExportFailed", e, &prev.conditions));
    }
    repair_ownership(zfs, &ds, &project, &mountpoint).await?;
    let mounts = serve_mounts(env, sr, &project, &mountpoint).await;
    if !project.spec.mounts.is_empty() {
        let failed: Vec<String> = mounts
            .iter()
            .filter(|m| m.phase != "Mounted")
            .map(|m| {
                format!(
                    "{}: {}",
                    m.mount_path,
                    m.message.clone().unwrap_or_default()
                )
            })
            .collect();
        conditions.push(cond(
            "Mounted",
            failed.is_empty(),
            if failed.is_empty() {
                "AllMounted"
            } else {
                "MountFailed"
            },
            failed.join("; "),
            &prev.conditions,
        ));
    }
    let num = |k: &str| have.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    if num("refquota") != quota {
        if quota < num("referenced") {
            conditions.push(cond(
                "QuotaApplied",
                false,
                "QuotaBelowUsage",
                format!(
                    "quota {quota} is below the {} bytes in use: not applied",
                    num("referenced")
                ),
                &prev.conditions,
            ));
        } else {
            zfs.set(&ds, &p("refquota")?, &quota.to_string())
                .await
                .map_err(|e| e.to_string())?;
        }
    }

    // Snapshots: schedule, on demand, the space guard.
    let now = Utc::now().timestamp();
    let mut snaps = zfs.snapshots(&ds, &[]).await.map_err(|e| e.to_string())?;
    let policy = &project.spec.snapshots;
    let blocked = snapshots_blocked(num("usedbysnapshots"), quota, policy.max_space_ratio);
    let asked = project
        .annotations()
        .get(projstore_api::SNAPSHOT_NOW_ANNOTATION)
        .cloned();
    let handled = have.get(PROP_SNAPSHOT_NOW).cloned().unwrap_or_default();
    let interval = i64::from(policy.interval_minutes) * 60;
    let quiet = |env: &ReplicaEnv<'_>| {
        env.quiet
            .lock()
            .map(|q| q.get(ds.as_str()).copied())
            .unwrap_or_default()
    };
    // The last scheduled check: the newest managed snapshot, or a check that found nothing
    // written since the newest snapshot.
    let checked = |snaps: &[SnapshotInfo], env: &ReplicaEnv<'_>| {
        snaps
            .iter()
            .filter(|s| is_managed(&s.name))
            .map(|s| s.creation)
            .chain(quiet(env))
            .max()
    };
    let on_demand = asked.as_ref().is_some_and(|a| *a != handled);
    let scheduled = snapshot_due(checked(&snaps, env), now, interval, None);
    let due = on_demand || scheduled;
    conditions.push(cond(
        "SnapshotsBlocked",
        blocked,
        if blocked { "SnapshotSpaceExceeded" } else { "WithinLimit" },
        if blocked {
            format!("snapshots use {} bytes, more than {}x the quota: no new snapshots until old ones expire or the quota grows", num("usedbysnapshots"), policy.max_space_ratio)
        } else {
            String::new()
        },
        &prev.conditions,
    ));
    if due && !blocked && !snaps.iter().any(|s| s.name == managed_name(now)) {
        // On schedule only when something was written since the newest snapshot; on demand
        // always.
        let taken = snapshot_and_stream(&storage, &key, &ds, sr.spec.epoch, on_demand).await?;
        if !taken && let Ok(mut q) = env.quiet.lock() {
            q.insert(ds.as_str().to_owned(), now);
        }
        if let Some(a) = &asked {
            zfs.set(&ds, &p(PROP_SNAPSHOT_NOW)?, a)
                .await
                .map_err(|e| e.to_string())?;
        }
        snaps = zfs.snapshots(&ds, &[]).await.map_err(|e| e.to_string())?;
    }
    // A snapshot whose stream a crash interrupted gets it now.
    stream_newest(&storage, &key, &ds, sr.spec.epoch).await?;
    compact(&storage, &key, &ds, sr.spec.epoch).await?;
    // Retention never destroys the base of the next incremental (the newest, and the chain
    // target), nor user snapshots.
    let stored = store.list(&key).await.map_err(|e| e.to_string())?;
    let edges: Vec<_> = stored
        .iter()
        .filter_map(|s| s.manifest.edge(&s.id).ok())
        .collect();
    let planned = plan(&edges).map_err(|e| e.to_string())?;
    let keep_guid = planned.target.as_ref().map(|t| t.guid);
    let facts: Vec<SnapshotFacts> = snaps
        .iter()
        .map(|s| SnapshotFacts {
            name: s.name.clone(),
            guid: s.guid,
            createtxg: s.createtxg,
            time: s.creation,
            held: Some(s.guid) == keep_guid,
        })
        .collect();
    let k = &policy.keep;
    let rp = RetentionPolicy {
        frequent: k.frequent,
        hourly: k.hourly,
        daily: k.daily,
        weekly: k.weekly,
        monthly: k.monthly,
        frequent_secs: i64::from(policy.interval_minutes) * 60,
    };
    for name in retain(&facts, now, &rp).destroy {
        if let Ok(s) = ds.snapshot(&name) {
            let _ = zfs.destroy_snapshot(&s).await;
        }
    }
    for id in planned.deletable {
        if let Ok(id) = crate::streams::StreamId::parse(&id) {
            let _ = store.delete(&key, &id).await;
        }
    }
    if let Some(c) = forks_condition(zfs, &layout, &key, &prev.conditions).await {
        conditions.push(c);
    }
    let snaps = zfs.snapshots(&ds, &[]).await.map_err(|e| e.to_string())?;
    let bytes: u64 = stored.iter().map(|s| s.manifest.bytes).sum();
    // The next scheduled check; retention ages with it.
    let next = checked(&snaps, env).map_or(0, |t| t + interval - Utc::now().timestamp());
    let due = Some(std::time::Duration::from_secs(
        next.clamp(1, interval).unsigned_abs(),
    ));
    let status = json!({
        "phase": "Ready",
        "appliedSnapshot": snaps.last().map(snapshot_ref),
        "streams": {"count": stored.len(), "bytes": bytes},
        "lagSeconds": 0,
        "usedBytes": num("referenced"),
        "snapshotUsedBytes": num("usedbysnapshots"),
        "quotaBytes": quota,
        "snapshotCount": snaps.len(),
        "mountPath": mp,
        "mounts": mounts,
        "conditions": conditions,
    });
    Ok((status, due))
}

async fn secondary(
    env: &ReplicaEnv<'_>,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<Value, String> {
    let ns = sr.namespace().unwrap_or_default();
    let key = ProjectKey::new(&ns, &sr.spec.project)?;
    let source = sr.spec.source.as_ref().ok_or("no source primary yet")?;
    let endpoint = source
        .stream_endpoint
        .as_deref()
        .ok_or("the primary's stream endpoint is not known yet")?;
    let peer = Peer::new(endpoint, &source.node, env.tls.clone()).map_err(|e| e.to_string())?;
    let zfs = env.zfs;
    let ds: DatasetName = PoolLayout::new(pool.clone())
        .project(&key)
        .map_err(|e| e.to_string())?;
    let store = StreamStore::new(env.streams_root.join(pool.as_str()));
    let storage = Storage {
        zfs,
        store: &store,
        pool,
        node: env.node,
    };
    let remote = peer.list(&key).await.map_err(|e| e.to_string())?;
    let edges: Vec<_> = remote
        .iter()
        .filter_map(|(id, m)| m.edge(id).ok())
        .collect();
    let layout = PoolLayout::new(pool.clone());
    let mut exists = zfs.exists(&ds).await.map_err(|e| e.to_string())?;
    if !exists {
        exists = restore_from_trash(zfs, &layout, &store, &key, &ds).await?;
    }
    if exists {
        stop_serving(zfs, env.run_dir, &ds).await?;
    }
    let held = if exists {
        zfs.snapshots(&ds, &[])
            .await
            .map_err(|e| e.to_string())?
            .last()
            .map(|s| s.guid)
    } else {
        None
    };
    let mut conditions = Vec::new();
    let prev = sr.status.clone().unwrap_or_default();
    let mut todo = plan_for_replica(&edges, held).map_err(|e| e.to_string())?;
    if matches!(todo, ReplicaPlan::Diverged) {
        // This copy holds history the primary lacks (a returning old primary): keep it under
        // forks/ and sync afresh. Nothing is destroyed.
        let fork = fork(zfs, env.run_dir, &layout, &store, &key, &ds, &remote).await?;
        tracing::warn!(project = %key, fork = %fork, "diverged history preserved; re-syncing from the primary");
        exists = false;
        todo = plan_for_replica(&edges, None).map_err(|e| e.to_string())?;
    }
    let received = !matches!(todo, ReplicaPlan::UpToDate);
    match todo {
        ReplicaPlan::UpToDate => {}
        ReplicaPlan::Apply(ids) => {
            // Progress (bytes fetched and applied) shows in status.transfer while it runs.
            let progress = Progress::new();
            let total: u64 = ids
                .iter()
                .filter_map(|id| remote.iter().find(|(i, _)| i.as_str() == id))
                .map(|(_, m)| 2 * m.bytes)
                .sum();
            let _reporter = report_transfer(env.client, sr, progress.clone(), total);
            for id in ids {
                let (sid, manifest) = remote
                    .iter()
                    .find(|(i, _)| i.as_str() == id)
                    .ok_or("the peer's list changed")?;
                let local = store.manifest(&key, sid).await.ok();
                if local.as_ref().map(|m| &m.sha256) != Some(&manifest.sha256) {
                    peer.download(&store, &key, sid, manifest, &progress)
                        .await
                        .map_err(|e| e.to_string())?;
                } else {
                    progress.add(usize::try_from(manifest.bytes).unwrap_or(usize::MAX));
                }
                let mut applied = apply_stream(&storage, &key, sid, &ds, &progress).await;
                if let Err(TransferError::Store(StoreError::Corrupt { reason, .. })) = &applied {
                    // Damaged on this disk since it was fetched: never applied; fetch it again.
                    tracing::warn!(project = %key, stream = %sid, %reason, "stored stream is corrupt: fetching it again");
                    crate::metrics::add(&crate::metrics::METRICS.errors, 1);
                    store.delete(&key, sid).await.map_err(|e| e.to_string())?;
                    peer.download(&store, &key, sid, manifest, &Progress::new())
                        .await
                        .map_err(|e| e.to_string())?;
                    applied = apply_stream(&storage, &key, sid, &ds, &Progress::new()).await;
                }
                let applied = applied.map_err(|e| e.to_string())?;
                tracing::info!(project = %key, stream = %sid, snapshot = %applied.name, "stream applied");
            }
        }
        ReplicaPlan::Diverged => {
            return Err(format!(
                "the primary's chain does not lead to a fresh copy of {key}"
            ));
        }
    }
    let forked = forks_condition(zfs, &layout, &key, &prev.conditions).await;
    let exists = if received {
        zfs.exists(&ds).await.map_err(|e| e.to_string())?
    } else {
        exists
    };
    if exists {
        let have = zfs
            .get_props(&ds, &[PROP_EPOCH, PROP_ROLE])
            .await
            .map_err(|e| e.to_string())?;
        let epoch = sr.spec.epoch.to_string();
        for (prop, want) in [(PROP_EPOCH, epoch.as_str()), (PROP_ROLE, "secondary")] {
            if have.get(prop).map(String::as_str) != Some(want) {
                zfs.set(&ds, &p(prop)?, want)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        if received {
            // A copy just received (or re-synced after a fork) is read-only from the start.
            stop_serving(zfs, env.run_dir, &ds).await?;
        }
    }
    let snaps = if exists {
        zfs.snapshots(&ds, &[]).await.map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let newest_remote = plan(&edges)
        .map_err(|e| e.to_string())?
        .target
        .map(|t| t.time);
    let lag = match (newest_remote, snaps.last()) {
        (Some(r), Some(l)) => (r - l.creation).max(0),
        (Some(_), None) => i64::MAX / 2,
        _ => 0,
    };
    let stored = store.list(&key).await.map_err(|e| e.to_string())?;
    conditions.extend(forked);
    Ok(json!({
        "transfer": null,
        "phase": if lag == 0 { "Ready" } else { "Syncing" },
        "appliedSnapshot": snaps.last().map(snapshot_ref),
        "streams": {"count": stored.len(), "bytes": stored.iter().map(|s| s.manifest.bytes).sum::<u64>()},
        "lagSeconds": lag.min(i64::from(u32::MAX)),
        "snapshotCount": snaps.len(),
        "conditions": conditions,
    }))
}

/// The trash stamp of a replica: its `trashed-at` time as `yyyymmddThhmmssZ`.
fn trash_stamp(sr: &StreamReplica) -> Result<(String, chrono::DateTime<Utc>), String> {
    let at = sr
        .annotations()
        .get("projstore.io/trashed-at")
        .ok_or("no projstore.io/trashed-at annotation")?;
    let t = chrono::DateTime::parse_from_rfc3339(at)
        .map_err(|e| format!("bad trashed-at {at:?}: {e}"))?
        .with_timezone(&Utc);
    Ok((t.format("%Y%m%dT%H%M%SZ").to_string(), t))
}

/// Moves a deleted project's dataset to `trash/<ns>/<name>-<stamp>` (with the time it may be
/// purged as a property) and its streams to the store's trash. Nothing is destroyed here.
async fn trash(env: &ReplicaEnv<'_>, sr: &StreamReplica, pool: &PoolName) -> Result<Value, String> {
    let ns = sr.namespace().unwrap_or_default();
    let key = ProjectKey::new(&ns, &sr.spec.project)?;
    let zfs = env.zfs;
    let layout = PoolLayout::new(pool.clone());
    let ds = layout.project(&key).map_err(|e| e.to_string())?;
    let (stamp, at) = trash_stamp(sr)?;
    let days: i64 = sr
        .annotations()
        .get("projstore.io/retain-days")
        .and_then(|d| d.parse().ok())
        .unwrap_or(7);
    let target = layout.trashed(&key, &stamp).map_err(|e| e.to_string())?;
    if zfs.exists(&ds).await.map_err(|e| e.to_string())? {
        stop_writes(zfs, env.run_dir, &ds).await?;
        zfs.create_parents(&target)
            .await
            .map_err(|e| e.to_string())?;
        zfs.rename(&ds, &target).await.map_err(|e| e.to_string())?;
        let purge =
            (at + chrono::Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        zfs.set(&target, &p(PROP_PURGE_AFTER)?, &purge)
            .await
            .map_err(|e| e.to_string())?;
        zfs.set(&target, &p("mountpoint")?, "none")
            .await
            .map_err(|e| e.to_string())?;
    }
    let store = StreamStore::new(env.streams_root.join(pool.as_str()));
    store
        .move_to_trash(&key, &stamp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({"phase": "Trashed", "conditions": []}))
}

/// User property on a trashed dataset: when it may be purged (RFC 3339).
pub const PROP_PURGE_AFTER: &str = "projstore.io:purge-after";

/// Puts the newest trashed copy of `key` back at `ds` (and its streams back in the store);
/// false when the trash holds none.
async fn restore_from_trash(
    zfs: &Zfs,
    layout: &PoolLayout,
    store: &StreamStore,
    key: &ProjectKey,
    ds: &DatasetName,
) -> Result<bool, String> {
    let Ok(ns_trash) = layout.trash().and_then(|t| t.child(&key.namespace)) else {
        return Ok(false);
    };
    if !zfs.exists(&ns_trash).await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    let prefix = format!("{}/{}-", ns_trash, key.name);
    let mut candidates: Vec<DatasetName> = zfs
        .children(&ns_trash)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| {
            c.as_str()
                .strip_prefix(&prefix)
                .is_some_and(|stamp| stamp.len() == 16 && stamp.ends_with('Z'))
        })
        .collect();
    candidates.sort();
    let Some(newest) = candidates.pop() else {
        return Ok(false);
    };
    zfs.create_parents(ds).await.map_err(|e| e.to_string())?;
    zfs.rename(&newest, ds).await.map_err(|e| e.to_string())?;
    let stamp = newest.as_str().trim_start_matches(&prefix).to_owned();
    let trashed_streams = store
        .root()
        .join(crate::streams::store::TRASH_DIR)
        .join(&key.namespace)
        .join(format!("{}-{stamp}", key.name));
    if trashed_streams.is_dir() {
        store
            .restore_from_trash(key, &trashed_streams)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// Destroys trashed datasets of `pool` whose retention has ended (DESIGN §5.6: agents purge
/// after `retainDays`). Returns what was purged.
pub async fn purge_trash(
    zfs: &Zfs,
    pool: &PoolName,
    store: &StreamStore,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<DatasetName>, String> {
    let layout = PoolLayout::new(pool.clone());
    let trash = layout.trash().map_err(|e| e.to_string())?;
    let listed = match zfs
        .descendants_with(&trash, &[&p(PROP_PURGE_AFTER)?], Some(2))
        .await
    {
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        other => other.map_err(|e| e.to_string())?,
    };
    let mut purged = Vec::new();
    // `trash/<ns>/<name>-<stamp>`: two levels below the trash (the namespaces carry no time).
    let depth = |ds: &DatasetName| ds.as_str().matches('/').count();
    let top = depth(&trash);
    for (ds, after) in listed {
        let after = after.concat();
        let due = depth(&ds) == top + 2
            && chrono::DateTime::parse_from_rfc3339(&after)
                .is_ok_and(|t| t.with_timezone(&Utc) <= now);
        if due {
            zfs.destroy(&ds, true).await.map_err(|e| e.to_string())?;
            // The streams trashed with it (`<store>/.trash/<ns>/<name>-<stamp>`) go too.
            let rel = ds
                .as_str()
                .strip_prefix(trash.as_str())
                .unwrap_or_default()
                .trim_start_matches('/');
            let dir = store
                .root()
                .join(crate::streams::store::TRASH_DIR)
                .join(rel);
            if !rel.is_empty() && !rel.contains("..") && dir.is_dir() {
                tokio::fs::remove_dir_all(&dir)
                    .await
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            purged.push(ds);
        }
    }
    Ok(purged)
}

/// Closes a copy (DESIGN §5.6): a primary takes a final snapshot and stream; every copy then
/// checks that its stored chain rebuilds the newest snapshot (received into a scratch dataset
/// and compared by GUID), and only then destroys its live dataset. The streams stay.
async fn archive(
    env: &ReplicaEnv<'_>,
    sr: &StreamReplica,
    pool: &PoolName,
    role: ReplicaRole,
) -> Result<Value, String> {
    let ns = sr.namespace().unwrap_or_default();
    let key = ProjectKey::new(&ns, &sr.spec.project)?;
    let zfs = env.zfs;
    let layout = PoolLayout::new(pool.clone());
    let ds = layout.project(&key).map_err(|e| e.to_string())?;
    let store = StreamStore::new(env.streams_root.join(pool.as_str()));
    let storage = Storage {
        zfs,
        store: &store,
        pool,
        node: env.node,
    };
    if role == ReplicaRole::Secondary && zfs.exists(&ds).await.map_err(|e| e.to_string())? {
        // Catch up first (the primary's final stream), so what is verified is everything.
        secondary(env, sr, pool).await?;
    }
    if zfs.exists(&ds).await.map_err(|e| e.to_string())? {
        if role == ReplicaRole::Primary {
            stop_writes(zfs, env.run_dir, &ds).await?;
            final_snapshot(&storage, &key, &ds, sr.spec.epoch).await?;
        }
        let newest = zfs
            .snapshots(&ds, &[])
            .await
            .map_err(|e| e.to_string())?
            .last()
            .cloned()
            .ok_or("the dataset has no snapshot to archive")?;
        verify_chain_restores(env, &storage, &key, newest.guid).await?;
        zfs.destroy(&ds, true).await.map_err(|e| e.to_string())?;
    }
    let stored = store.list(&key).await.map_err(|e| e.to_string())?;
    Ok(json!({
        "phase": "Archived",
        "streams": {"count": stored.len(), "bytes": stored.iter().map(|s| s.manifest.bytes).sum::<u64>()},
        "conditions": [],
    }))
}

/// Receives the stored chain into `<pool>/recv/<ns>/<name>-verify` and checks it ends at
/// snapshot `guid`; the scratch dataset is removed either way.
async fn verify_chain_restores(
    env: &ReplicaEnv<'_>,
    storage: &Storage<'_>,
    key: &ProjectKey,
    guid: u64,
) -> Result<(), String> {
    let planned = stored_plan(storage.store, key).await?;
    if planned.target.as_ref().map(|t| t.guid) != Some(guid) {
        return Err(format!(
            "the stored chain does not reach the newest snapshot ({guid}): not archiving yet"
        ));
    }
    let scratch = storage
        .pool
        .dataset(&format!("recv/{}/{}-verify", key.namespace, key.name))
        .map_err(|e| e.to_string())?;
    crate::transfer::clear_staging(env.zfs, &scratch)
        .await
        .map_err(|e| e.to_string())?;
    let mut result = Ok(());
    for id in planned.chain {
        let id = crate::streams::StreamId::parse(&id)?;
        if let Err(e) = apply_stream(storage, key, &id, &scratch, &Progress::new()).await {
            result = Err(format!("the stored chain does not restore: {e}"));
            break;
        }
    }
    if result.is_ok() {
        let last = env
            .zfs
            .snapshots(&scratch, &[])
            .await
            .map_err(|e| e.to_string())?
            .last()
            .map(|s| s.guid);
        if last != Some(guid) {
            result = Err("the restored chain ends at another snapshot".into());
        }
    }
    crate::transfer::clear_staging(env.zfs, &scratch)
        .await
        .map_err(|e| e.to_string())?;
    result
}

/// The planner's view of the streams stored for `key`.
async fn stored_plan(
    store: &StreamStore,
    key: &ProjectKey,
) -> Result<crate::streams::Plan, String> {
    let stored = store.list(key).await.map_err(|e| e.to_string())?;
    let edges: Vec<_> = stored
        .iter()
        .filter_map(|s| s.manifest.edge(&s.id).ok())
        .collect();
    plan(&edges).map_err(|e| e.to_string())
}

/// Writes stopped (`ds` unmounted): makes sure the stored chain ends at everything `ds`
/// holds. Writes since the newest snapshot get a final snapshot; nothing written is left out.
async fn final_snapshot(
    storage: &Storage<'_>,
    key: &ProjectKey,
    ds: &DatasetName,
    epoch: u64,
) -> Result<(), String> {
    let zfs = storage.zfs;
    let snaps = zfs.snapshots(ds, &[]).await.map_err(|e| e.to_string())?;
    let snap = unused_managed_snapshot(ds, &snaps)?;
    let taken = zfs
        .snapshot_unsaved(ds, &snap)
        .await
        .map_err(|e| e.to_string())?;
    if taken.is_none() && snaps.is_empty() {
        zfs.snapshot(&snap, &[]).await.map_err(|e| e.to_string())?;
    }
    stream_newest(storage, key, ds, epoch).await
}

/// Makes the stored chain reach the newest snapshot of `ds`: writes its stream, incremental
/// from the chain's end when `ds` still has that snapshot, else full. Also what finishes the
/// job after a crash between a snapshot and its stream.
async fn stream_newest(
    storage: &Storage<'_>,
    key: &ProjectKey,
    ds: &DatasetName,
    epoch: u64,
) -> Result<(), String> {
    let snaps = storage
        .zfs
        .snapshots(ds, &[])
        .await
        .map_err(|e| e.to_string())?;
    let Some(newest) = snaps.last() else {
        return Ok(());
    };
    let target = stored_plan(storage.store, key).await?.target;
    if target.as_ref().is_some_and(|t| t.guid == newest.guid) {
        return Ok(());
    }
    let from = target
        .as_ref()
        .and_then(|t| snaps.iter().find(|s| s.guid == t.guid))
        .map(|s| ds.snapshot(&s.name))
        .transpose()
        .map_err(|e| e.to_string())?;
    let to = ds.snapshot(&newest.name).map_err(|e| e.to_string())?;
    let written = write_stream(storage, key, &to, from.as_ref(), epoch, &Progress::new())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(project = %key, stream = %written.id, bytes = written.manifest.bytes, "stream written");
    Ok(())
}

/// Takes a managed snapshot of `ds` now and writes its stream; unless `always`, only when
/// something was written since the newest snapshot. Says whether one was taken.
async fn snapshot_and_stream(
    storage: &Storage<'_>,
    key: &ProjectKey,
    ds: &DatasetName,
    epoch: u64,
    always: bool,
) -> Result<bool, String> {
    let snap = ds
        .snapshot(&managed_name(Utc::now().timestamp()))
        .map_err(|e| e.to_string())?;
    let zfs = storage.zfs;
    let taken = if always {
        zfs.snapshot(&snap, &[]).await.map(Some)
    } else {
        zfs.snapshot_unsaved(ds, &snap).await
    }
    .map_err(|e| e.to_string())?
    .is_some();
    if taken {
        crate::metrics::add(&crate::metrics::METRICS.snapshots_taken, 1);
        tracing::info!(project = %key, %snap, "snapshot taken");
        stream_newest(storage, key, ds, epoch).await?;
    }
    Ok(taken)
}

/// A primary being moved away (`projstore.io/handoff-to`): stop writes (unmount), take the
/// final snapshot and its stream, and say so with `HandedOff`; the controller flips the roles
/// once the new pool has applied that snapshot.
async fn hand_off(
    storage: &Storage<'_>,
    run_dir: &Path,
    sr: &StreamReplica,
    key: &ProjectKey,
    ds: &DatasetName,
    to: &str,
) -> Result<Value, String> {
    let zfs = storage.zfs;
    stop_writes(zfs, run_dir, ds).await?;
    final_snapshot(storage, key, ds, sr.spec.epoch).await?;
    let snaps = zfs.snapshots(ds, &[]).await.map_err(|e| e.to_string())?;
    let stored = storage.store.list(key).await.map_err(|e| e.to_string())?;
    let prev = sr.status.clone().unwrap_or_default();
    let newest = snaps.last().map(|s| s.name.clone()).unwrap_or_default();
    Ok(json!({
        "phase": "Ready",
        "appliedSnapshot": snaps.last().map(snapshot_ref),
        "streams": {"count": stored.len(), "bytes": stored.iter().map(|s| s.manifest.bytes).sum::<u64>()},
        "lagSeconds": 0,
        "snapshotCount": snaps.len(),
        "conditions": [cond("HandedOff", true, "WritesStopped", format!("unmounted; final snapshot {newest} is ready for {to}"), &prev.conditions)],
    }))
}

/// A copy that is not the primary: never mounted, read-only. A demoted primary first keeps
/// whatever was written after its newest snapshot in a snapshot of its own (so divergence is
/// seen and preserved, never rolled back).
async fn stop_serving(zfs: &Zfs, run_dir: &Path, ds: &DatasetName) -> Result<(), String> {
    stop_writes(zfs, run_dir, ds).await?;
    if zfs
        .property(ds, &p(PROP_ROLE)?)
        .await
        .map_err(|e| e.to_string())?
        == "primary"
    {
        let snaps = zfs.snapshots(ds, &[]).await.map_err(|e| e.to_string())?;
        let snap = unused_managed_snapshot(ds, &snaps)?;
        if let Some(kept) = zfs
            .snapshot_unsaved(ds, &snap)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::warn!(dataset = %ds, snapshot = %kept.name, "writes made after the last replicated snapshot kept in a snapshot");
        }
        zfs.set(ds, &p(PROP_ROLE)?, "secondary")
            .await
            .map_err(|e| e.to_string())?;
    }
    if zfs
        .property(ds, &p("readonly")?)
        .await
        .map_err(|e| e.to_string())?
        != "on"
    {
        zfs.set(ds, &p("readonly")?, "on")
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Renames `ds` to `forks/<ns>/<name>-e<epoch>` (`-2`, `-3`… when taken), unmounted and
/// read-only, and sets aside the local streams the primary does not serve. Returns the fork.
async fn fork(
    zfs: &Zfs,
    run_dir: &Path,
    layout: &PoolLayout,
    store: &StreamStore,
    key: &ProjectKey,
    ds: &DatasetName,
    remote: &[(crate::streams::StreamId, crate::streams::Manifest)],
) -> Result<DatasetName, String> {
    let epoch: u64 = zfs
        .property(ds, &p(PROP_EPOCH)?)
        .await
        .map_err(|e| e.to_string())?
        .parse()
        .unwrap_or(0);
    let base = layout.fork(key, epoch).map_err(|e| e.to_string())?;
    let mut target = base.clone();
    let mut n = 1;
    while zfs.exists(&target).await.map_err(|e| e.to_string())? {
        n += 1;
        target = DatasetName::parse(&format!("{base}-{n}")).map_err(|e| e.to_string())?;
    }
    stop_writes(zfs, run_dir, ds).await?;
    zfs.create_parents(&target)
        .await
        .map_err(|e| e.to_string())?;
    zfs.rename(ds, &target).await.map_err(|e| e.to_string())?;
    for (prop, value) in [
        ("mountpoint", "none"),
        ("readonly", "on"),
        (PROP_ROLE, "fork"),
    ] {
        zfs.set(&target, &p(prop)?, value)
            .await
            .map_err(|e| e.to_string())?;
    }
    let label = target.as_str().rsplit('/').next().unwrap_or_default();
    for s in store.list(key).await.map_err(|e| e.to_string())? {
        let served = remote
            .iter()
            .any(|(id, m)| *id == s.id && m.sha256 == s.manifest.sha256);
        if !served {
            store
                .set_aside(key, &s.id, label)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(target)
}

/// `Diverged` naming the forks kept for `key` on this pool, if any.
async fn forks_condition(
    zfs: &Zfs,
    layout: &PoolLayout,
    key: &ProjectKey,
    prev: &[Condition],
) -> Option<Condition> {
    let ns = layout.forks().and_then(|f| f.child(&key.namespace)).ok()?;
    let prefix = format!("{ns}/{}-e", key.name);
    let forks: Vec<String> = zfs
        .children(&ns)
        .await
        .ok()?
        .into_iter()
        .map(|d| d.to_string())
        .filter(|d| {
            d.strip_prefix(&prefix).is_some_and(|rest| {
                rest.split('-')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect();
    if forks.is_empty() {
        return None;
    }
    Some(cond(
        "Diverged",
        true,
        "ForkPreserved",
        format!(
            "writes the primary lacked are preserved at {}",
            forks.join(", ")
        ),
        prev,
    ))
}

/// Unmounts every primary dataset of this node (the agent lost its Lease). The datasets keep
/// their role; the next pass with a renewed Lease mounts them again if they are still primary.
pub async fn fence_all(
    zfs: &Zfs,
    replicas: &[std::sync::Arc<StreamReplica>],
    pools: &[std::sync::Arc<projstore_api::StoragePool>],
    cfg: &super::Config,
) {
    for sr in replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
    {
        let Some(pool) = pools
            .iter()
            .find(|p| p.spec.node_name == cfg.node_name && p.name_any() == sr.spec.pool)
            .and_then(|p| PoolName::parse(&p.spec.pool_name).ok())
        else {
            continue;
        };
        let Ok(key) = ProjectKey::new(&sr.namespace().unwrap_or_default(), &sr.spec.project) else {
            continue;
        };
        if let Ok(ds) = PoolLayout::new(pool).project(&key)
            && zfs.is_mounted(&ds).await.unwrap_or(false)
        {
            match stop_writes(zfs, &cfg.run_dir, &ds).await {
                Ok(()) => tracing::warn!(dataset = %ds, "Lease not renewed: stopped serving"),
                Err(e) => {
                    tracing::error!(dataset = %ds, error = %e, "Lease not renewed and cannot unmount")
                }
            }
        }
    }
}

/// The project's root as a tenant must find it (`layout::secure_root`) and its export for
/// folder mounts from other hosts (`mounts::export`), off the async threads. An export that
/// fails is returned as a problem to report, not an error: the project is served all the same.
async fn secure_root(
    env: &ReplicaEnv<'_>,
    key: &ProjectKey,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<Option<String>, String> {
    let (mp, dirs) = (
        mountpoint.to_path_buf(),
        crate::mounts::MountDirs::new(env.run_dir),
    );
    let project = Path::new(&key.namespace).join(&key.name);
    tokio::task::spawn_blocking(move || {
        crate::layout::secure_root(&mp, owner)?;
        Ok(crate::mounts::export(&dirs, &project, &mp).err())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Stops all writes to `ds`: the folder mounts inside it go first, then the dataset is
/// unmounted (forced when open files, e.g. a peer's sftp session, keep it busy).
async fn stop_writes(zfs: &Zfs, run_dir: &Path, ds: &DatasetName) -> Result<(), String> {
    if !zfs.is_mounted(ds).await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let mp = zfs
        .property(ds, &p("mountpoint")?)
        .await
        .map_err(|e| e.to_string())?;
    if mp.starts_with('/') {
        let dirs = crate::mounts::MountDirs::new(run_dir);
        crate::mounts::release_under(Path::new(&mp), &dirs).await;
        let mp = std::path::PathBuf::from(mp);
        let _ = tokio::task::spawn_blocking(move || {
            crate::mounts::unexport(&dirs, &mp);
            // A tenant's own mounts inside would keep the filesystem busy.
            crate::mounts::detach_foreign_under(&mp)
        })
        .await;
    }
    match zfs.unmount(ds).await {
        Err(e) if e.is_busy() => zfs.unmount_force(ds).await.map_err(|e| e.to_string()),
        other => other.map_err(|e| e.to_string()),
    }
}

/// Annotation on the primary's replica: where each mounted source project is served.
pub const MOUNT_SOURCES: &str = projstore_api::MOUNT_SOURCES_ANNOTATION;

/// Makes the project's folder mounts match its spec (DESIGN §5.7) and says how each went.
/// Mounts inside the project that the spec no longer names are taken down.
async fn serve_mounts(
    env: &ReplicaEnv<'_>,
    sr: &StreamReplica,
    project: &Project,
    mountpoint: &Path,
) -> Vec<projstore_api::MountStatus> {
    let sources: std::collections::BTreeMap<String, projstore_api::MountSource> = sr
        .annotations()
        .get(MOUNT_SOURCES)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let ns = sr.namespace().unwrap_or_default();
    let dirs = crate::mounts::MountDirs::new(env.run_dir);
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for m in &project.spec.mounts {
        let status = |phase: &str, message: String| projstore_api::MountStatus {
            mount_path: m.mount_path.clone(),
            phase: phase.into(),
            message: Some(message),
        };
        let wanted = async {
            let rel = crate::mounts::safe_relative(&m.mount_path)?;
            let path = crate::mounts::safe_relative(&m.path)?;
            if m.path.contains(',') {
                // It would reach sshfs's mount options and its name in the mount table.
                return Err(format!(
                    "path {:?}: a comma is not supported in a mount's path",
                    m.path
                ));
            }
            let key = ProjectKey::new(&ns, &m.project)?;
            let src = sources
                .get(&m.project)
                .ok_or_else(|| format!("project {} is not served yet", m.project))?;
            let remote_host_key = src.host_key.clone();
            let remote = if src.node == env.node {
                None
            } else {
                // The controller copies the source pool's sftp endpoint into the annotation:
                // this agent watches only its own pools.
                let ep = src
                    .sftp
                    .as_deref()
                    .ok_or_else(|| format!("the agent of {} serves no sftp", src.pool))?;
                crate::sftp::check_endpoint(ep)?;
                Some(ep.to_owned())
            };
            let source_project = Api::<Project>::namespaced(env.client.clone(), &ns)
                .get_opt(&m.project)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("project {} does not exist", m.project))?;
            Ok::<_, String>(crate::mounts::Wanted {
                consumer_root: mountpoint.to_path_buf(),
                mount_path: rel,
                source_project: Path::new(&key.namespace).join(&key.name),
                source_root: env.projects_root.join(&key.namespace).join(&key.name),
                path,
                remote_host_key: remote.as_ref().and(remote_host_key),
                bind_address: remote.as_ref().and(env.sftp_address),
                remote,
                read_only: m.read_only,
                source_owner: (source_project.spec.owner.uid, source_project.spec.owner.gid),
                owner: (project.spec.owner.uid, project.spec.owner.gid),
            })
        };
        match wanted.await {
            Err(e) => out.push(status("Failed", e)),
            Ok(w) => {
                targets.push(w.target());
                if w.remote.is_some() && env.keys.is_none() {
                    out.push(status(
                        "Failed",
                        "this agent serves no sftp (--sftp-listen): it cannot mount from other hosts".into(),
                    ));
                    continue;
                }
                let keys = env.keys.clone().unwrap_or(crate::sftp::SshKeys {
                    dir: Default::default(),
                });
                match crate::mounts::ensure(&w, &keys, &dirs).await {
                    Ok(()) => out.push(status(
                        "Mounted",
                        format!(
                            "{}:{} from {}",
                            m.project,
                            m.path,
                            w.remote.as_deref().unwrap_or("this host")
                        ),
                    )),
                    Err(e) => out.push(status("Failed", e)),
                }
            }
        }
    }
    // Mounts no longer asked for: each released beneath the project's root, by mount ID.
    for old in crate::mounts::mount_table() {
        if let Ok(rel) = old.target.strip_prefix(mountpoint)
            && old.is_root_fuse()
            && old.target != mountpoint
            && !targets.contains(&old.target)
        {
            crate::mounts::release(mountpoint, rel, &dirs).await;
        }
    }
    out
}

/// User property on a primary's dataset: the last `projstore.io/repair-ownership` value acted on.
const PROP_REPAIR_OWNERSHIP: &str = "projstore.io:repair-ownership";

/// On a new `projstore.io/repair-ownership` value: gives every file of the project to its
/// owner (DESIGN §1), skipping `.zfs` and never following symlinks or crossing into mounts.
async fn repair_ownership(
    zfs: &Zfs,
    ds: &DatasetName,
    project: &Project,
    root: &Path,
) -> Result<(), String> {
    let Some(asked) = project
        .annotations()
        .get(projstore_api::REPAIR_OWNERSHIP_ANNOTATION)
        .cloned()
    else {
        return Ok(());
    };
    let prop = p(PROP_REPAIR_OWNERSHIP)?;
    if zfs.property(ds, &prop).await.map_err(|e| e.to_string())? == asked {
        return Ok(());
    }
    let (uid, gid) = (project.spec.owner.uid, project.spec.owner.gid);
    let top = root.to_path_buf();
    let done = tokio::task::spawn_blocking(move || crate::ownership::chown_tree(&top, uid, gid))
        .await
        .map_err(|e| e.to_string())??;
    tracing::info!(dataset = %ds, files = done.changed, uid, gid, "ownership repaired");
    if !done.failed.is_empty() {
        // Entries that changed under the walk (a tenant renaming them) are left, not chased.
        tracing::warn!(dataset = %ds, failed = done.failed.len(), first = %done.failed[0], "some entries kept their owner");
    }
    zfs.set(ds, &prop, &asked).await.map_err(|e| e.to_string())
}

/// Compaction (DESIGN §5.3): when the stored chain grew long or ends in many tiny
/// increments, writes one full or one larger incremental stream to the newest snapshot, so
/// the planner's chain gets shorter and the superseded streams are collected.
async fn compact(
    storage: &Storage<'_>,
    key: &ProjectKey,
    ds: &DatasetName,
    epoch: u64,
) -> Result<(), String> {
    use crate::streams::compaction::{Compaction, CompactionPolicy, decide};
    let stored = storage.store.list(key).await.map_err(|e| e.to_string())?;
    let edges: Vec<crate::streams::Edge> = stored
        .iter()
        .filter_map(|s| s.manifest.edge(&s.id).ok())
        .collect();
    let planned = plan(&edges).map_err(|e| e.to_string())?;
    let chain: Vec<crate::streams::Edge> = planned
        .chain
        .iter()
        .filter_map(|id| edges.iter().find(|e| &e.id == id).cloned())
        .collect();
    let snaps = storage
        .zfs
        .snapshots(ds, &[])
        .await
        .map_err(|e| e.to_string())?;
    let Some(newest) = snaps.last() else {
        return Ok(());
    };
    if planned.target.as_ref().map(|t| t.guid) != Some(newest.guid) {
        return Ok(());
    }
    let from = match decide(
        &chain,
        |g| snaps.iter().any(|s| s.guid == g),
        &CompactionPolicy::default(),
    ) {
        Compaction::Nothing => return Ok(()),
        Compaction::Full { reason } => {
            tracing::info!(project = %key, %reason, "compacting: a fresh full stream");
            None
        }
        Compaction::Incremental { from_guid, reason } => {
            tracing::info!(project = %key, %reason, "compacting: one larger incremental");
            snaps.iter().find(|s| s.guid == from_guid)
        }
    };
    let from = from
        .map(|s| ds.snapshot(&s.name))
        .transpose()
        .map_err(|e| e.to_string())?;
    let to = ds.snapshot(&newest.name).map_err(|e| e.to_string())?;
    match write_stream(storage, key, &to, from.as_ref(), epoch, &Progress::new()).await {
        Ok(_) => Ok(()),
        // Already written by an earlier pass: the planner uses it.
        Err(TransferError::Store(StoreError::AlreadyExists { .. })) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Patches `status.transfer` of `sr` every second from `progress` until dropped.
fn report_transfer(
    client: &Client,
    sr: &StreamReplica,
    progress: Progress,
    total: u64,
) -> AbortOnDrop {
    let api: Api<StreamReplica> =
        Api::namespaced(client.clone(), &sr.namespace().unwrap_or_default());
    let name = sr.name_any();
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = progress.bytes().min(total);
            let patch = json!({"status": {"transfer": {"bytesDone": done, "bytesTotal": total}}});
            let _ = api
                .patch_status(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
        }
    }))
}

/// A task that stops when this handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A managed snapshot of `ds` named for now, or the next free second when that name is taken.
fn unused_managed_snapshot(
    ds: &DatasetName,
    snaps: &[SnapshotInfo],
) -> Result<crate::zfs::SnapshotName, String> {
    let mut t = Utc::now().timestamp();
    while snaps.iter().any(|s| s.name == managed_name(t)) {
        t += 1;
    }
    ds.snapshot(&managed_name(t)).map_err(|e| e.to_string())
}

//! A live primary: the dataset made or rebuilt, fenced by epoch, set up and mounted, its
//! folder mounts served, snapshots taken on schedule and on demand, retention; and handing
//! off to another pool during a move.

use super::*;
use projstore_api::contract;

pub(super) async fn primary(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<(StreamReplicaStatus, Due), ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let storage = c.storage();
    let (zfs, ns, key, layout, ds, store) = (c.zfs, &c.ns, &c.key, &c.layout, &c.ds, &c.store);
    let project = Api::<Project>::namespaced(cx.client.clone(), ns)
        .get_opt(&sr.spec.project)
        .await?
        .ok_or_else(|| format!("project {key} does not exist"))?;
    let owner = (project.spec.owner.uid, project.spec.owner.gid);
    if owner.0 == 0 || owner.1 == 0 {
        // The schema refuses it too; root must never own a tenant's files (defence in depth).
        return Err(format!(
            "owner {}:{} is refused: a project cannot be owned by uid or gid 0",
            owner.0, owner.1
        )
        .into());
    }
    let mountpoint = cx.cfg.projects_root.join(ns).join(&sr.spec.project);
    let quota = projstore_api::units::quantity_bytes(&project.spec.quota.0)
        .ok_or("quota is not a quantity")?;
    // What the pass reads of the dataset, in one call; written only where it differs.
    let read = || zfs.get_props(ds, plans::PRIMARY_PROPS);
    let mut restored_from = None;
    // The properties as read before anything below changes them, if the dataset was there.
    let mut as_found = None;
    if zfs.exists(ds).await? {
        let props = read().await?;
        if let Some(e) = plans::fenced(&props, sr.spec.epoch) {
            let _ = stop_writes(zfs, &cx.cfg.run_dir, ds).await;
            return Err(e);
        }
        if props.get(PROP_ROLE).map(String::as_str) != Some("primary") {
            // A copy just promoted, perhaps while a resumable receive into it was cut off:
            // the partial state goes (it would keep its base from being pruned).
            secondary::drop_resumable_state(zfs, ds).await?;
        }
        as_found = Some(props);
    } else if restore_from_trash(zfs, layout, store, key, ds).await? {
        tracing::info!(project = %key, "restored from the trash");
    } else {
        let chain = stored_plan(store, key).await?.chain;
        let restored_before = project
            .status
            .as_ref()
            .and_then(|s| s.restored_from.as_ref());
        if let (true, Some(from)) = (chain.is_empty(), &project.spec.restore_from) {
            // Built from a backup, once, never created empty: until the bucket gives the
            // chain, the pass fails and is retried. A project restored before whose data is
            // gone from here is not restored again from the source (nor made empty).
            if let Some(before) = restored_before {
                return Err(format!(
                    "{ds} is missing and the project was restored from {before} already: \
                     not restoring it again, not creating it empty"
                )
                .into());
            }
            let described = backup::restore_from_backup(cx, sr, &c, from, quota).await?;
            tracing::info!(project = %key, from = %described, "restored from a backup");
            restored_from = Some(described);
        } else if chain.is_empty() {
            let new = NewProject {
                key,
                mountpoint: &mountpoint,
                quota_bytes: quota,
                uid: project.spec.owner.uid,
                gid: project.spec.owner.gid,
                epoch: sr.spec.epoch,
            };
            create_project(zfs, layout, &new).await?;
        } else {
            // Rebuild from the chain (a restore, or a primary placed where only streams are).
            for id in chain {
                let id = crate::streams::StreamId::parse(&id)?;
                apply_stream(&storage, key, &id, ds, &Progress::new()).await?;
            }
        }
    }
    if let Some(to) = contract::handoff_to(sr.annotations()) {
        return Ok((
            hand_off(&storage, &cx.cfg.run_dir, sr, key, ds, to).await?,
            None,
        ));
    }
    let have = match as_found {
        Some(props) => props,
        None => read().await?,
    };
    let mp = mountpoint.to_str().ok_or("projects root is not UTF-8")?;
    let todo = plans::plan_primary(&PrimaryFacts {
        epoch: sr.spec.epoch,
        props: &have,
        mountpoint: mp,
        quota,
    });
    if let Some(e) = todo.fenced {
        let _ = stop_writes(zfs, &cx.cfg.run_dir, ds).await;
        return Err(e);
    }
    for (prop, want) in &todo.set {
        zfs.set(ds, &p(prop)?, want).await?;
    }
    if todo.mount {
        zfs.mount(ds).await?;
    }
    let not_exported = secure_root(cx, key, &mountpoint, owner).await?;

    let mut verdicts = Vec::new();
    if let Some(e) = not_exported {
        tracing::warn!(project = %key, error = %e, "not exported for folder mounts from other hosts");
        verdicts.push(Verdict::new("Exported", false, "ExportFailed", e));
    }
    repair_ownership(zfs, ds, &project, &mountpoint).await?;
    let mounts = serve_mounts(cx, sr, &project, &mountpoint).await;
    if !project.spec.mounts.is_empty() {
        verdicts.push(plans::mounts_verdict(&mounts));
    }
    if let Some(q) = todo.quota {
        zfs.set(ds, &p("refquota")?, &q.to_string()).await?;
    }
    verdicts.extend(todo.quota_refused);

    // Snapshots: schedule, on demand, the space guard.
    let policy = &project.spec.snapshots;
    let quiet = || {
        cx.quiet
            .lock()
            .map(|q| q.get(ds.as_str()).copied())
            .unwrap_or_default()
    };
    let now = Utc::now().timestamp();
    let snaps = zfs.snapshots(ds, &[]).await?;
    let snapshot = plans::plan_snapshot(&SnapshotFacts {
        props: &have,
        quota,
        policy,
        snapshots: &snaps,
        quiet_since: quiet(),
        snapshot_now: project
            .annotations()
            .get(projstore_api::SNAPSHOT_NOW_ANNOTATION)
            .map(String::as_str),
        now,
    });
    verdicts.push(snapshot.blocked);
    let again_soon = snapshot.again_soon;
    if let Some(step) = snapshot.take {
        // On schedule only when something was written since the newest snapshot; on demand
        // always. No stream is written: copies receive it live (DESIGN §5.4).
        if let Some(taken) = take_snapshot(zfs, key, ds, step.always).await? {
            // Copies start on it now, not when the pass (retention, holds) is done.
            announce_newest(cx, sr, &taken).await;
        } else if let Ok(mut q) = cx.quiet.lock() {
            q.insert(ds.as_str().to_owned(), now);
        }
        if let Some(mark) = &step.mark {
            zfs.set(ds, &p(plans::PROP_SNAPSHOT_NOW)?, mark).await?;
        }
    }
    // Retention never takes a snapshot a copy stands on or still has to receive: each copy's
    // base is held, every snapshot from the oldest base on is kept; nor a user's snapshot.
    let bases = copy_bases(cx, sr);
    let seen = cx
        .copies_of(ns, &sr.spec.project)
        .iter()
        .filter(|c| c.spec.state == ReplicaState::Live && c.spec.pool != sr.spec.pool)
        .count();
    // Every copy the project asks for must be known, with what it holds, before anything is
    // pruned or released: a copy not yet seen may stand on any snapshot.
    let all_known = seen + 1 >= usize::from(project.spec.copies) && bases.len() == seen;
    let snaps = if all_known {
        keep_bases(zfs, ds, &bases).await?
    } else {
        zfs.snapshots(ds, &[]).await?
    };
    let base_guids: Vec<u64> = bases.iter().map(|(_, g)| *g).collect();
    let mut keep = plans::kept_for_copies(&snaps, &base_guids);
    // The snapshot the offsite backup's chain ends at stays too: the next backup is an
    // increment from it (pruned, the next would be a full stream).
    let backed_up = project
        .spec
        .backup
        .as_ref()
        .and(project.status.as_ref())
        .and_then(|st| st.backup.as_ref())
        .and_then(|b| b.last_snapshot.as_deref());
    keep.extend(
        snaps
            .iter()
            .filter(|s| Some(s.name.as_str()) == backed_up)
            .map(|s| s.guid),
    );
    // Nor under a backup upload of this copy (its snapshots must stay until it ends).
    let prunable = if all_known && !backup::upload_running(cx, sr) {
        snaps.as_slice()
    } else {
        &[]
    };
    for name in plans::to_prune(prunable, &keep, policy, now) {
        if let Ok(s) = ds.snapshot(&name) {
            match zfs.destroy_snapshot(&s).await {
                Ok(_) => tracing::info!(project = %key, snapshot = %name, "pruned by retention"),
                Err(e) => {
                    tracing::warn!(project = %key, snapshot = %name, error = %e, "not pruned")
                }
            }
        }
    }
    let snaps = zfs.snapshots(ds, &[]).await?;
    drop_superseded_streams(cx, sr, store, key, &snaps).await;
    let stored = store.list(key).await?;
    let prev = sr.status.clone().unwrap_or_default();
    if let Some(v) = forks_verdict(zfs, layout, key).await {
        verdicts.push(v);
    }
    let interval = plans::interval_secs(policy);
    let due = plans::next_due(
        plans::last_check(&snaps, quiet()),
        interval,
        Utc::now().timestamp(),
    );
    // A snapshot asked for in the second another was taken: taken in the next second.
    let due = if again_soon {
        due.min(std::time::Duration::from_secs(1))
    } else {
        due
    };
    let mut status = plans::primary_status(
        &prev,
        PrimaryReport {
            snapshots: &snaps,
            streams: plans::streams_summary(stored.iter().map(|s| s.manifest.bytes)),
            props: &have,
            quota,
            mountpoint: mp,
            mounts,
            conditions: plans::conditions(&verdicts, &prev.conditions, Timestamp::now()),
        },
    );
    if restored_from.is_some() {
        status.restored_from = restored_from;
    }
    Ok((status, Some(due)))
}

/// Writes `newest`, the snapshot just taken, into the replica's `status.appliedSnapshot` at once
/// (the controller hands it to the copies); the pass's own status follows when it ends. Best effort:
/// that status says it too.
async fn announce_newest(cx: &AgentContext, sr: &StreamReplica, newest: &SnapshotInfo) {
    let api: Api<StreamReplica> =
        Api::namespaced(cx.client.clone(), &sr.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": { "appliedSnapshot": plans::snapshot_ref(newest) } });
    if let Err(e) = api
        .patch_status(
            &sr.name_any(),
            &kube::api::PatchParams::apply(crate::runtime::MANAGER),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(error = %e, "cannot announce the new snapshot early");
    }
}

/// The other live copies of the project and the snapshot each stands on: its hold tag and the
/// GUID of its newest applied snapshot, as its status says.
fn copy_bases(cx: &AgentContext, sr: &StreamReplica) -> Vec<(String, u64)> {
    cx.copies_of(&sr.namespace().unwrap_or_default(), &sr.spec.project)
        .iter()
        .filter(|c| c.spec.state == ReplicaState::Live && c.spec.pool != sr.spec.pool)
        .filter_map(|c| {
            let applied = c.status.as_ref()?.applied_snapshot.as_ref()?;
            Some((plans::hold_tag(&c.spec.pool), applied.guid.parse().ok()?))
        })
        .collect()
}

/// Holds each copy's base on `ds` with the copy's tag, and releases the holds of copies that
/// moved on or are gone (DESIGN §5.2); the tags are recorded on the snapshot first, so none is
/// forgotten. Returns the snapshots as they are now.
async fn keep_bases(
    zfs: &Zfs,
    ds: &DatasetName,
    bases: &[(String, u64)],
) -> Result<Vec<SnapshotInfo>, ReplicaError> {
    let holds = p(plans::PROP_HOLDS)?;
    let extra = [&holds];
    let read = || zfs.snapshots(ds, &extra);
    let snaps = read().await?;
    let todo = plans::plan_holds(&snaps, bases);
    if todo == plans::HoldPlan::default() {
        return Ok(snaps);
    }
    let recorded = |name: &str, snaps: &[SnapshotInfo]| {
        snaps
            .iter()
            .find(|s| s.name == name)
            .map(plans::recorded_holds)
            .unwrap_or_default()
    };
    for (name, tag) in &todo.hold {
        let snap = ds.snapshot(name)?;
        let mut tags = recorded(name, &read().await?);
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
        zfs.set_on_snapshot(&snap, &holds, &plans::holds_value(&tags))
            .await?;
        zfs.hold(&snap, &crate::zfs::HoldTag::parse(tag)?).await?;
    }
    for (name, tag) in &todo.release {
        let snap = ds.snapshot(name)?;
        if let Ok(t) = crate::zfs::HoldTag::parse(tag) {
            zfs.release(&snap, &t).await?;
        }
        let tags: Vec<String> = recorded(name, &read().await?)
            .into_iter()
            .filter(|t| t != tag)
            .collect();
        zfs.set_on_snapshot(&snap, &holds, &plans::holds_value(&tags))
            .await?;
    }
    Ok(read().await?)
}

/// Releases every hold recorded on the snapshots of `ds` (a dataset about to be destroyed,
/// trashed or forked, or a primary demoted to a copy: only a live primary holds snapshots for
/// its copies). Says how many it released.
pub(super) async fn release_all_holds(zfs: &Zfs, ds: &DatasetName) -> Result<usize, ReplicaError> {
    let holds = p(plans::PROP_HOLDS)?;
    let snaps = zfs.snapshots(ds, &[&holds]).await?;
    let mut released = 0;
    for s in &snaps {
        let tags = plans::recorded_holds(s);
        if tags.is_empty() {
            continue;
        }
        let snap = ds.snapshot(&s.name)?;
        for tag in &tags {
            if let Ok(t) = crate::zfs::HoldTag::parse(tag) {
                zfs.release(&snap, &t).await?;
                released += 1;
            }
        }
        zfs.set_on_snapshot(&snap, &holds, &plans::holds_value(&[]))
            .await?;
    }
    Ok(released)
}

/// A primary being moved away (`projstore.io/handoff-to`): stop writes (unmount), take the
/// final snapshot, and say so with `HandedOff`; the controller flips the roles once the new
/// pool has received that snapshot live.
pub(super) async fn hand_off(
    storage: &Storage<'_>,
    run_dir: &Path,
    sr: &StreamReplica,
    key: &ProjectKey,
    ds: &DatasetName,
    to: &str,
) -> Result<StreamReplicaStatus, ReplicaError> {
    let zfs = storage.zfs;
    stop_writes(zfs, run_dir, ds).await?;
    final_snapshot(zfs, ds).await?;
    let snaps = zfs.snapshots(ds, &[]).await?;
    let stored = storage.store.list(key).await?;
    Ok(plans::handed_off_status(
        &sr.status.clone().unwrap_or_default(),
        &snaps,
        plans::streams_summary(stored.iter().map(|s| s.manifest.bytes)),
        to,
        Timestamp::now(),
    ))
}

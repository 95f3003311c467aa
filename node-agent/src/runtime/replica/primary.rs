//! A live primary: the dataset made or rebuilt, fenced by epoch, set up and mounted, its
//! folder mounts served, snapshots taken on schedule and on demand, retention; and handing
//! off to another pool during a move.

use super::*;
use projstore_api::contract;

/// User property on a primary's dataset: the last `projstore.io/snapshot-now` value acted on.
pub(super) const PROP_SNAPSHOT_NOW: &str = "projstore.io:snapshot-now";

pub(super) async fn primary(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<(Value, Due), ReplicaError> {
    let ns = sr.namespace().unwrap_or_default();
    let key = ProjectKey::new(&ns, &sr.spec.project)?;
    let project = Api::<Project>::namespaced(cx.client.clone(), &ns)
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
    let zfs = cx.zfs()?;
    let layout = PoolLayout::new(pool.clone());
    let ds = layout.project(&key)?;
    let store = StreamStore::new(cx.cfg.streams_root.join(pool.as_str()));
    let storage = Storage {
        zfs,
        store: &store,
        pool,
        node: cx.node(),
    };
    let mountpoint = cx.cfg.projects_root.join(&ns).join(&sr.spec.project);
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
        (seen > sr.spec.epoch).then_some(ReplicaError::Fenced {
            seen,
            ours: sr.spec.epoch,
        })
    };
    if zfs.exists(&ds).await? {
        if let Some(e) = fenced(&read().await?) {
            let _ = stop_writes(zfs, &cx.cfg.run_dir, &ds).await;
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
            create_project(zfs, &layout, &new).await?;
        } else {
            // Rebuild from the chain (a restore, or a primary placed where only streams are).
            for id in chain {
                let id = crate::streams::StreamId::parse(&id)?;
                apply_stream(&storage, &key, &id, &ds, &Progress::new()).await?;
            }
        }
    }
    if let Some(to) = contract::handoff_to(sr.annotations()) {
        return Ok((
            hand_off(&storage, &cx.cfg.run_dir, sr, &key, &ds, to).await?,
            None,
        ));
    }
    let have = read().await?;
    if let Some(e) = fenced(&have) {
        let _ = stop_writes(zfs, &cx.cfg.run_dir, &ds).await;
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
            zfs.set(&ds, &p(prop)?, want).await?;
        }
    }
    if have.get("mounted").map(String::as_str) != Some("yes") {
        zfs.mount(&ds).await?;
    }
    let not_exported = secure_root(cx, &key, &mountpoint, owner).await?;

    let mut conditions = Vec::new();
    let prev = sr.status.clone().unwrap_or_default();
    if let Some(e) = not_exported {
        tracing::warn!(project = %key, error = %e, "not exported for folder mounts from other hosts");
        conditions.push(cond("Exported", false, "ExportFailed", e, &prev.conditions));
    }
    repair_ownership(zfs, &ds, &project, &mountpoint).await?;
    let mounts = serve_mounts(cx, sr, &project, &mountpoint).await;
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
            zfs.set(&ds, &p("refquota")?, &quota.to_string()).await?;
        }
    }

    // Snapshots: schedule, on demand, the space guard.
    let now = Utc::now().timestamp();
    let mut snaps = zfs.snapshots(&ds, &[]).await?;
    let policy = &project.spec.snapshots;
    let blocked = snapshots_blocked(num("usedbysnapshots"), quota, policy.max_space_ratio);
    let asked = project
        .annotations()
        .get(projstore_api::SNAPSHOT_NOW_ANNOTATION)
        .cloned();
    let handled = have.get(PROP_SNAPSHOT_NOW).cloned().unwrap_or_default();
    let interval = i64::from(policy.interval_minutes) * 60;
    let quiet = |cx: &AgentContext| {
        cx.quiet
            .lock()
            .map(|q| q.get(ds.as_str()).copied())
            .unwrap_or_default()
    };
    // The last scheduled check: the newest managed snapshot, or a check that found nothing
    // written since the newest snapshot.
    let checked = |snaps: &[SnapshotInfo], cx: &AgentContext| {
        snaps
            .iter()
            .filter(|s| is_managed(&s.name))
            .map(|s| s.creation)
            .chain(quiet(cx))
            .max()
    };
    let on_demand = asked.as_ref().is_some_and(|a| *a != handled);
    let scheduled = snapshot_due(checked(&snaps, cx), now, interval, None);
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
        if !taken && let Ok(mut q) = cx.quiet.lock() {
            q.insert(ds.as_str().to_owned(), now);
        }
        if let Some(a) = &asked {
            zfs.set(&ds, &p(PROP_SNAPSHOT_NOW)?, a).await?;
        }
        snaps = zfs.snapshots(&ds, &[]).await?;
    }
    // A snapshot whose stream a crash interrupted gets it now.
    stream_newest(&storage, &key, &ds, sr.spec.epoch).await?;
    compact(&storage, &key, &ds, sr.spec.epoch).await?;
    // Retention never destroys the base of the next incremental (the newest, and the chain
    // target), nor user snapshots.
    let stored = store.list(&key).await?;
    let edges: Vec<_> = stored
        .iter()
        .filter_map(|s| s.manifest.edge(&s.id).ok())
        .collect();
    let planned = plan(&edges)?;
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
    let snaps = zfs.snapshots(&ds, &[]).await?;
    let bytes: u64 = stored.iter().map(|s| s.manifest.bytes).sum();
    // The next scheduled check; retention ages with it.
    let next = checked(&snaps, cx).map_or(0, |t| t + interval - Utc::now().timestamp());
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

/// A primary being moved away (`projstore.io/handoff-to`): stop writes (unmount), take the
/// final snapshot and its stream, and say so with `HandedOff`; the controller flips the roles
/// once the new pool has applied that snapshot.
pub(super) async fn hand_off(
    storage: &Storage<'_>,
    run_dir: &Path,
    sr: &StreamReplica,
    key: &ProjectKey,
    ds: &DatasetName,
    to: &str,
) -> Result<Value, ReplicaError> {
    let zfs = storage.zfs;
    stop_writes(zfs, run_dir, ds).await?;
    final_snapshot(storage, key, ds, sr.spec.epoch).await?;
    let snaps = zfs.snapshots(ds, &[]).await?;
    let stored = storage.store.list(key).await?;
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

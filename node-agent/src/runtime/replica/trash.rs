//! The trash (DESIGN §5.6): a deleted project's dataset and streams set aside with a purge
//! time, put back when the project returns, purged when its retention ends.

use super::*;

/// Moves a deleted project's dataset to `trash/<ns>/<name>-<stamp>` (with the time it may be
/// purged as a property) and its streams to the store's trash. Nothing is destroyed here.
pub(super) async fn trash(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<StreamReplicaStatus, ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let (zfs, key, layout, ds) = (c.zfs, &c.key, &c.layout, &c.ds);
    let TrashPlan { stamp, purge_after } = plans::plan_trash(sr.annotations())?;
    let target = layout.trashed(key, &stamp)?;
    if zfs.exists(ds).await? {
        stop_writes(zfs, &cx.cfg.run_dir, ds).await?;
        // Holds for copies would keep the purge from destroying it.
        release_all_holds(zfs, ds).await?;
        zfs.create_parents(&target).await?;
        zfs.rename(ds, &target).await?;
        zfs.set(&target, &p(PROP_PURGE_AFTER)?, &purge_after)
            .await?;
        zfs.set(&target, &p("mountpoint")?, "none").await?;
    }
    secondary::drop_staged_receive(zfs, pool, key).await?;
    let store = &c.store;
    store.move_to_trash(key, &stamp).await?;
    Ok(plans::trashed_status(
        &sr.status.clone().unwrap_or_default(),
    ))
}

/// User property on a trashed dataset: when it may be purged (RFC 3339).
pub const PROP_PURGE_AFTER: &str = "projstore.io:purge-after";

/// Puts the newest trashed copy of `key` back at `ds` (and its streams back in the store);
/// false when the trash holds none.
pub(super) async fn restore_from_trash(
    zfs: &Zfs,
    layout: &PoolLayout,
    store: &StreamStore,
    key: &ProjectKey,
    ds: &DatasetName,
) -> Result<bool, ReplicaError> {
    let Ok(ns_trash) = layout.trash().and_then(|t| t.child(&key.namespace)) else {
        return Ok(false);
    };
    if !zfs.exists(&ns_trash).await? {
        return Ok(false);
    }
    let prefix = format!("{}/{}-", ns_trash, key.name);
    let mut candidates: Vec<DatasetName> = zfs
        .children(&ns_trash)
        .await?
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
    zfs.create_parents(ds).await?;
    zfs.rename(&newest, ds).await?;
    let stamp = newest.as_str().trim_start_matches(&prefix).to_owned();
    let trashed_streams = store
        .root()
        .join(crate::streams::store::TRASH_DIR)
        .join(&key.namespace)
        .join(format!("{}-{stamp}", key.name));
    if trashed_streams.is_dir() {
        store.restore_from_trash(key, &trashed_streams).await?;
    }
    Ok(true)
}

/// Destroys trashed datasets of `pool` whose retention has ended (DESIGN §5.6: agents purge
/// after `retainDays`). Returns what was purged.
#[tracing::instrument(skip_all, fields(pool = %pool))]
pub async fn purge_trash(
    zfs: &Zfs,
    pool: &PoolName,
    store: &StreamStore,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<DatasetName>, ReplicaError> {
    let layout = PoolLayout::new(pool.clone());
    let trash = layout.trash()?;
    let listed = match zfs
        .descendants_with(&trash, &[&p(PROP_PURGE_AFTER)?], Some(2))
        .await
    {
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        other => other?,
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
            // One that cannot go now (busy, held) stays for the next sweep; the others go.
            if let Err(e) = zfs.destroy(&ds, true).await {
                tracing::warn!(dataset = %ds, error = %e, "cannot purge it yet");
                continue;
            }
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

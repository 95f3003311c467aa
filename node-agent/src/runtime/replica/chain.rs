//! Snapshots a primary takes, and the stored stream chain of a project: written when it
//! closes (DESIGN §4: an open project keeps no stream files).

use super::*;

/// The planner's view of the streams stored for `key`.
pub(super) async fn stored_plan(
    store: &StreamStore,
    key: &ProjectKey,
) -> Result<crate::streams::Plan, ReplicaError> {
    let stored = store.list(key).await?;
    let edges: Vec<_> = stored
        .iter()
        .filter_map(|s| s.manifest.edge(&s.id).ok())
        .collect();
    plan(&edges).map_err(ReplicaError::from)
}

/// Writes stopped (`ds` unmounted): makes sure the newest snapshot holds everything written.
/// Writes since the newest snapshot get a final snapshot; nothing written is left out.
pub(super) async fn final_snapshot(zfs: &Zfs, ds: &DatasetName) -> Result<(), ReplicaError> {
    let snaps = zfs.snapshots(ds, &[]).await?;
    let snap = unused_managed_snapshot(ds, &snaps)?;
    let taken = zfs.snapshot_unsaved(ds, &snap).await?;
    if taken.is_none() && snaps.is_empty() {
        zfs.snapshot(&snap, &[]).await?;
    }
    Ok(())
}

/// Makes the stored chain reach the newest snapshot of `ds`: writes its stream, incremental
/// from the chain's end when `ds` still has that snapshot, else full. Also what finishes the
/// job after a crash between a snapshot and its stream.
pub(super) async fn stream_newest(
    storage: &Storage<'_>,
    key: &ProjectKey,
    ds: &DatasetName,
    epoch: u64,
) -> Result<(), ReplicaError> {
    let snaps = storage.zfs.snapshots(ds, &[]).await?;
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
        .transpose()?;
    let to = ds.snapshot(&newest.name)?;
    let written = write_stream(storage, key, &to, from.as_ref(), epoch, &Progress::new()).await?;
    tracing::info!(project = %key, stream = %written.id, bytes = written.manifest.bytes, "stream written");
    Ok(())
}

/// Takes a managed snapshot of `ds` now; unless `always`, only when something was written
/// since the newest snapshot. The snapshot taken, if one was.
pub(super) async fn take_snapshot(
    zfs: &Zfs,
    key: &ProjectKey,
    ds: &DatasetName,
    always: bool,
) -> Result<Option<SnapshotInfo>, ReplicaError> {
    let snap = ds.snapshot(&managed_name(Utc::now().timestamp()))?;
    let taken = if always {
        zfs.snapshot(&snap, &[]).await.map(Some)
    } else {
        zfs.snapshot_unsaved(ds, &snap).await
    }?;
    if taken.is_some() {
        crate::metrics::add(&crate::metrics::METRICS.snapshots_taken, 1);
        tracing::info!(project = %key, %snap, "snapshot taken");
    }
    Ok(taken)
}

/// A managed snapshot of `ds` named for now, or the next free second when that name is taken.
pub(super) fn unused_managed_snapshot(
    ds: &DatasetName,
    snaps: &[SnapshotInfo],
) -> Result<crate::zfs::SnapshotName, ReplicaError> {
    let mut t = Utc::now().timestamp();
    while snaps.iter().any(|s| s.name == managed_name(t)) {
        t += 1;
    }
    ds.snapshot(&managed_name(t)).map_err(ReplicaError::from)
}

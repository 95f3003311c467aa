//! Closing a copy: its stored chain verified to rebuild the newest snapshot, then the live
//! dataset dropped; the streams stay.

use super::*;

/// Closes a copy (DESIGN §5.6): a primary takes a final snapshot and stream; every copy then
/// checks that its stored chain rebuilds the newest snapshot (received into a scratch dataset
/// and compared by GUID), and only then destroys its live dataset. The streams stay.
pub(super) async fn archive(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
    role: ReplicaRole,
) -> Result<StreamReplicaStatus, ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let storage = c.storage();
    let (zfs, key, ds, store) = (c.zfs, &c.key, &c.ds, &c.store);
    if role == ReplicaRole::Secondary && zfs.exists(ds).await? {
        // Catch up first (the primary's final stream), so what is verified is everything.
        secondary(cx, sr, pool).await?;
    }
    if zfs.exists(ds).await? {
        if role == ReplicaRole::Primary {
            stop_writes(zfs, &cx.cfg.run_dir, ds).await?;
            final_snapshot(&storage, key, ds, sr.spec.epoch).await?;
        }
        let newest = zfs
            .snapshots(ds, &[])
            .await?
            .last()
            .cloned()
            .ok_or("the dataset has no snapshot to archive")?;
        verify_chain_restores(cx, &storage, key, newest.guid).await?;
        zfs.destroy(ds, true).await?;
    }
    let stored = store.list(key).await?;
    Ok(plans::archived_status(
        &sr.status.clone().unwrap_or_default(),
        plans::streams_summary(stored.iter().map(|s| s.manifest.bytes)),
    ))
}

/// Receives the stored chain into `<pool>/recv/<ns>/<name>-verify` and checks it ends at
/// snapshot `guid`; the scratch dataset is removed either way.
pub(super) async fn verify_chain_restores(
    cx: &AgentContext,
    storage: &Storage<'_>,
    key: &ProjectKey,
    guid: u64,
) -> Result<(), ReplicaError> {
    let planned = stored_plan(storage.store, key).await?;
    if planned.target.as_ref().map(|t| t.guid) != Some(guid) {
        return Err(format!(
            "the stored chain does not reach the newest snapshot ({guid}): not archiving yet"
        )
        .into());
    }
    let scratch = storage
        .pool
        .dataset(&format!("recv/{}/{}-verify", key.namespace, key.name))?;
    crate::transfer::clear_staging(cx.zfs()?, &scratch).await?;
    let mut result = Ok(());
    for id in planned.chain {
        let id = crate::streams::StreamId::parse(&id)?;
        if let Err(e) = apply_stream(storage, key, &id, &scratch, &Progress::new()).await {
            result = Err(format!("the stored chain does not restore: {e}").into());
            break;
        }
    }
    if result.is_ok() {
        let last = cx
            .zfs()?
            .snapshots(&scratch, &[])
            .await?
            .last()
            .map(|s| s.guid);
        if last != Some(guid) {
            result = Err("the restored chain ends at another snapshot".into());
        }
    }
    crate::transfer::clear_staging(cx.zfs()?, &scratch).await?;
    result
}

//! Closing a copy: its stored chain verified to rebuild the newest snapshot, then the live
//! dataset dropped; the streams stay.

use super::*;

/// Closes a copy (DESIGN §5.6). A primary stops writes, takes a final snapshot and writes the
/// project's stream (full, or from what is still stored), and keeps its dataset until every
/// other copy has closed: they catch up live from it and fetch its stream. Every copy then
/// checks that its stored chain rebuilds its newest snapshot (received into a scratch dataset
/// and compared by GUID), and only then destroys its live dataset. The streams stay.
pub(super) async fn archive(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
    role: ReplicaRole,
) -> Result<(StreamReplicaStatus, Due), ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let storage = c.storage();
    let (zfs, key, ds, store) = (c.zfs, &c.key, &c.ds, &c.store);
    let prev = sr.status.clone().unwrap_or_default();
    let exists = zfs.exists(ds).await?;
    if role == ReplicaRole::Secondary {
        // What the copy must hold before it drops anything: the primary's final snapshot, as
        // the primary's status names it once its stream is written.
        let Some(last) = final_of_primary(cx, sr) else {
            let verdict = Verdict::new(
                "Closed",
                false,
                "WaitingForPrimary",
                "waiting for the primary's final snapshot and stream",
            );
            let status = StreamReplicaStatus {
                phase: Some(projstore_api::ReplicaPhase::Syncing),
                conditions: plans::conditions(&[verdict], &prev.conditions, Timestamp::now()),
                ..prev
            };
            return Ok((status, Some(std::time::Duration::from_secs(2))));
        };
        let stored = stored_plan(store, key).await?.target.map(|t| t.guid);
        if exists || stored != Some(last) {
            if exists {
                // Catch up first (the primary keeps its dataset until every copy closed).
                secondary(cx, sr, pool).await?;
            }
            fetch_chain(cx, sr, &c).await?;
        }
        if exists {
            let newest = zfs.snapshots(ds, &[]).await?.last().map(|s| s.guid);
            if newest != Some(last) {
                return Err(format!(
                    "not closing yet: this copy's newest snapshot is not the primary's final {last}"
                )
                .into());
            }
        }
        verify_chain_restores(cx, &storage, key, last).await?;
        if exists {
            release_all_holds(zfs, ds).await?;
            zfs.destroy(ds, true).await?;
        }
    } else if exists {
        stop_writes(zfs, &cx.cfg.run_dir, ds).await?;
        final_snapshot(zfs, ds).await?;
        stream_newest(&storage, key, ds, sr.spec.epoch).await?;
        let newest = zfs
            .snapshots(ds, &[])
            .await?
            .last()
            .cloned()
            .ok_or("the dataset has no snapshot to archive")?;
        let waiting = copies_closing(cx, sr);
        if !waiting.is_empty() {
            let why = format!(
                "keeping the dataset until the other copies have closed: {}",
                waiting.join(", ")
            );
            let verdict = Verdict::new("Closed", false, "WaitingForCopies", why);
            let status = StreamReplicaStatus {
                phase: Some(projstore_api::ReplicaPhase::Syncing),
                // The copies close on this snapshot (its stream is written).
                applied_snapshot: Some(plans::snapshot_ref(&newest)),
                conditions: plans::conditions(&[verdict], &prev.conditions, Timestamp::now()),
                ..prev
            };
            return Ok((status, Some(std::time::Duration::from_secs(2))));
        }
        verify_chain_restores(cx, &storage, key, newest.guid).await?;
        release_all_holds(zfs, ds).await?;
        zfs.destroy(ds, true).await?;
    }
    secondary::drop_staged_receive(zfs, pool, key).await?;
    let stored = store.list(key).await?;
    Ok((
        plans::archived_status(
            &prev,
            plans::streams_summary(stored.iter().map(|s| s.manifest.bytes)),
        ),
        None,
    ))
}

/// The other copies of the project not yet closed: every replica of it on another pool that
/// is not in the trash and does not say Archived (a replica the controller has not yet told to
/// close counts too), by name.
fn copies_closing(cx: &AgentContext, sr: &StreamReplica) -> Vec<String> {
    cx.copies_of(&sr.namespace().unwrap_or_default(), &sr.spec.project)
        .iter()
        .filter(|c| c.spec.pool != sr.spec.pool && c.spec.state != ReplicaState::Trashed)
        .filter(|c| {
            c.status.as_ref().and_then(|s| s.phase) != Some(projstore_api::ReplicaPhase::Archived)
        })
        .map(|c| c.name_any())
        .collect()
}

/// The final snapshot of a closing project: what its primary's status names while it waits for
/// the copies (Syncing, its stream written) or once it closed (Archived).
fn final_of_primary(cx: &AgentContext, sr: &StreamReplica) -> Option<u64> {
    cx.copies_of(&sr.namespace().unwrap_or_default(), &sr.spec.project)
        .iter()
        .find(|c| c.spec.role == ReplicaRole::Primary && c.spec.state == ReplicaState::Archived)
        .and_then(|c| c.status.as_ref())
        .filter(|s| {
            s.phase == Some(projstore_api::ReplicaPhase::Archived)
                || s.conditions
                    .iter()
                    .any(|c| c.type_ == "Closed" && c.reason == "WaitingForCopies")
        })
        .and_then(|s| s.applied_snapshot.as_ref())
        .and_then(|a| a.guid.parse().ok())
}

/// Fetches the primary's stored chain into this pool's store (each stream checked against its
/// manifest's digest as it is stored).
async fn fetch_chain(
    cx: &AgentContext,
    sr: &StreamReplica,
    c: &Copy<'_>,
) -> Result<(), ReplicaError> {
    let (key, store) = (&c.key, &c.store);
    let peer = source_peer(cx, sr)?;
    let remote = peer.list(key).await?;
    let edges: Vec<_> = remote
        .iter()
        .filter_map(|(id, m)| m.edge(id).ok())
        .collect();
    let planned = plan(&edges)?;
    if planned.chain.is_empty() {
        return Err(format!("the primary has not written the stream of {key} yet").into());
    }
    for id in planned.chain {
        let (sid, manifest) = remote
            .iter()
            .find(|(i, _)| i.as_str() == id)
            .ok_or("the peer's list changed")?;
        let local = store.manifest(key, sid).await.ok();
        if local.as_ref().map(|m| &m.sha256) != Some(&manifest.sha256) {
            peer.download(store, key, sid, manifest, &Progress::new())
                .await?;
            tracing::info!(project = %key, stream = %sid, "stream fetched from the primary");
        }
    }
    Ok(())
}

/// Receives the stored chain into `<pool>/recv/verify.<ns>/<name>` and checks it ends at
/// snapshot `guid`; the scratch dataset is removed either way. (A namespace has no `.`: the
/// scratch dataset can be no project's staging `recv/<ns>/<name>`.)
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
        .dataset(&format!("recv/verify.{}/{}", key.namespace, key.name))?;
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

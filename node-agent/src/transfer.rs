//! Moving data between ZFS and the stream store: `zfs send` into a new stream file, and a
//! stored stream into `zfs recv` — only after its checksum verified, and for full streams
//! through a staging dataset so a receive cut off half-way is never visible as the project.

use std::time::Duration;

use crate::streams::{
    Manifest, ProjectKey, SnapshotJson, StoreError, StoredStream, StreamId, StreamMeta,
    StreamStore, StreamWriter,
};
use crate::zfs::{
    DatasetName, NameError, PoolName, Progress, RecvOptions, SnapshotInfo, SnapshotName, Zfs,
    ZfsError,
};

/// Staging filesystem for full receives: `<pool>/recv/<ns>/<name>`.
pub const RECV_STAGING: &str = "recv";

/// What went wrong moving a stream.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("stream {id} does not apply to {target}: {reason}")]
    DoesNotApply {
        id: String,
        target: String,
        reason: String,
    },
}

fn snapshot_json(s: &SnapshotInfo) -> SnapshotJson {
    SnapshotJson {
        name: s.name.clone(),
        guid: s.guid.to_string(),
        createtxg: s.createtxg,
        time: s.creation,
    }
}

/// One pool of this host: its ZFS, its stream store, and the node name written into manifests.
#[derive(Debug, Clone, Copy)]
pub struct Storage<'a> {
    pub zfs: &'a Zfs,
    pub store: &'a StreamStore,
    pub pool: &'a PoolName,
    pub node: &'a str,
}

/// Sends `snap` (incremental from `from` when given) into a new stream of `project` in the
/// store. The stream becomes visible only once complete (manifest written last).
pub async fn write_stream(
    storage: &Storage<'_>,
    project: &ProjectKey,
    snap: &SnapshotName,
    from: Option<&SnapshotName>,
    epoch: u64,
    progress: &Progress,
) -> Result<StoredStream, TransferError> {
    let Storage {
        zfs, store, node, ..
    } = *storage;
    let to_info = zfs.snapshot_info(snap).await?;
    let from_info = match from {
        Some(f) => Some(zfs.snapshot_info(f).await?),
        None => None,
    };
    let id =
        StreamId::for_snapshots(from.map(SnapshotName::short), snap.short()).map_err(|reason| {
            TransferError::DoesNotApply {
                id: "(none)".into(),
                target: snap.to_string(),
                reason,
            }
        })?;
    let mut writer = store.begin(project, &id).await?;
    // ZFS writes into the stream file itself; the writer hashes the bytes as they land.
    let file = writer.direct_file().await?;
    let (_, writer) = zfs
        .send_to_file(snap, from, &file, progress, writer, StreamWriter::note)
        .await?;
    let manifest = writer
        .commit(StreamMeta {
            from: from_info.as_ref().map(snapshot_json),
            to: snapshot_json(&to_info),
            epoch,
            node: node.to_owned(),
        })
        .await?;
    crate::metrics::add(&crate::metrics::METRICS.streams_written, 1);
    Ok(StoredStream { id, manifest })
}

/// Applies stored stream `id` of `project` to `target` (a dataset of `pool`):
/// 1. verifies size and SHA-256 against the manifest (a corrupt stream never reaches ZFS);
/// 2. an incremental must start at the target's newest snapshot (checked by GUID);
/// 3. a full stream is received into `<pool>/recv/<ns>/<name>`, checked, then renamed into
///    place; an incremental is received into the (unmounted) target directly, which ZFS
///    commits atomically.
///
/// Returns the snapshot now held by the target.
pub async fn apply_stream(
    storage: &Storage<'_>,
    project: &ProjectKey,
    id: &StreamId,
    target: &DatasetName,
    progress: &Progress,
) -> Result<SnapshotInfo, TransferError> {
    let Storage {
        zfs, store, pool, ..
    } = *storage;
    let (manifest, file) = store.open_verified(project, id).await?;
    let file = file.into_std().await;
    let not_applicable = |reason: String| TransferError::DoesNotApply {
        id: id.to_string(),
        target: target.to_string(),
        reason,
    };
    let want_guid: u64 = manifest
        .to
        .guid
        .parse()
        .map_err(|_| not_applicable("manifest guid is not a number".into()))?;
    match &manifest.from {
        None => {
            if zfs.exists(target).await? {
                return Err(not_applicable(
                    "a full stream needs an empty target, and the target exists".into(),
                ));
            }
            let staging = staging_dataset(pool, project)?;
            clear_staging(zfs, &staging).await?;
            zfs.create_parents(&staging).await?;
            receive(zfs, &staging, &file, progress).await?;
            check_received(zfs, &staging, &manifest, want_guid)
                .await
                .map_err(not_applicable)?;
            zfs.create_parents(target).await?;
            zfs.rename(&staging, target).await?;
        }
        Some(from) => {
            let newest = zfs.snapshots(target, &[]).await?.pop();
            if newest.as_ref().map(|s| s.guid.to_string()) != Some(from.guid.clone()) {
                return Err(not_applicable(format!(
                    "it starts at {}@{} but the target's newest snapshot is {}",
                    from.name,
                    from.guid,
                    newest
                        .map(|s| format!("{}@{}", s.name, s.guid))
                        .unwrap_or_else(|| "none".into())
                )));
            }
            receive(zfs, target, &file, progress).await?;
        }
    }
    let held = check_received(zfs, target, &manifest, want_guid)
        .await
        .map_err(not_applicable)?;
    crate::metrics::add(&crate::metrics::METRICS.streams_applied, 1);
    Ok(held)
}

async fn receive(
    zfs: &Zfs,
    target: &DatasetName,
    file: &std::fs::File,
    progress: &Progress,
) -> Result<(), TransferError> {
    zfs.recv_from_file(
        target,
        RecvOptions {
            unmounted: true,
            resumable: false,
        },
        file,
        progress,
    )
    .await?;
    Ok(())
}

/// The received snapshot must be there, with the manifest's GUID.
async fn check_received(
    zfs: &Zfs,
    ds: &DatasetName,
    m: &Manifest,
    guid: u64,
) -> Result<SnapshotInfo, String> {
    let snap = ds.snapshot(&m.to.name).map_err(|e| e.to_string())?;
    let info = zfs
        .snapshot_info(&snap)
        .await
        .map_err(|e| format!("received snapshot missing: {e}"))?;
    if info.guid != guid {
        return Err(format!(
            "received snapshot has guid {}, manifest says {guid}",
            info.guid
        ));
    }
    Ok(info)
}

/// `<pool>/recv/<ns>/<name>`.
pub fn staging_dataset(pool: &PoolName, project: &ProjectKey) -> Result<DatasetName, NameError> {
    pool.dataset(&format!(
        "{RECV_STAGING}/{}/{}",
        project.namespace, project.name
    ))
}

/// Removes a staging dataset left by an interrupted receive. It only ever holds a copy of a
/// stream that is still in the store, or part of a live send that its source still has, so
/// removing it loses nothing. ZFS may still be tearing down the interrupted receive for a
/// moment: retry while it says busy.
pub async fn clear_staging(zfs: &Zfs, staging: &DatasetName) -> Result<(), TransferError> {
    let mut tries = 0;
    loop {
        match zfs.destroy(staging, true).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_busy() && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes every leftover under `<pool>/recv` (crash recovery at start-up), except the
/// partial state of a resumable receive of a project that `receives_here(namespace, name)`
/// (a live copy on this pool, which resumes or drops it on its next pass).
pub async fn recover_staging(
    zfs: &Zfs,
    pool: &PoolName,
    receives_here: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Vec<DatasetName>, TransferError> {
    let root = pool.dataset(RECV_STAGING)?;
    if !zfs.exists(&root).await? {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for ns in zfs.children(&root).await? {
        for leftover in zfs.children(&ns).await? {
            // A resumable receive that was cut off stays for its send to go on (OpenZFS);
            // the next replica pass resumes it or drops it.
            let name = leftover.as_str().rsplit('/').next().unwrap_or_default();
            let namespace = ns.as_str().rsplit('/').next().unwrap_or_default();
            if receives_here(namespace, name) && zfs.resume_token(&leftover).await?.is_some() {
                continue;
            }
            clear_staging(zfs, &leftover).await?;
            removed.push(leftover);
        }
    }
    Ok(removed)
}

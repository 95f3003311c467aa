//! Stopping writes: a copy that must not be written is unmounted (its folder mounts and
//! exports first) and made read-only; the whole node fences when its Lease is lost.

use super::*;

/// A copy that is not the primary: never mounted, read-only. A demoted primary first keeps
/// whatever was written after its newest snapshot in a snapshot of its own (so divergence is
/// seen and preserved, never rolled back).
pub(super) async fn stop_serving(
    zfs: &Zfs,
    run_dir: &Path,
    ds: &DatasetName,
) -> Result<(), ReplicaError> {
    // One read for the three, on every pass of a copy: unmounting changes neither of the
    // other two.
    let (role, readonly) = (p(PROP_ROLE)?, p("readonly")?);
    let [mounted, role_now, readonly_now] = zfs
        .property_values(ds, [&p("mounted")?, &role, &readonly])
        .await?;
    if mounted == "yes" {
        unmount_for_good(zfs, run_dir, ds).await?;
    }
    if role_now == "primary" {
        let snaps = zfs.snapshots(ds, &[]).await?;
        let snap = unused_managed_snapshot(ds, &snaps)?;
        if let Some(kept) = zfs.snapshot_unsaved(ds, &snap).await? {
            tracing::warn!(dataset = %ds, snapshot = %kept.name, "writes made after the last replicated snapshot kept in a snapshot");
        }
        zfs.set(ds, &role, "secondary").await?;
    }
    if readonly_now != "on" {
        zfs.set(ds, &readonly, "on").await?;
    }
    Ok(())
}

/// Unmounts every primary dataset of this node (the agent lost its Lease). The datasets keep
/// their role; the next pass with a renewed Lease mounts them again if they are still primary.
pub async fn fence_all(cx: &AgentContext, replicas: &[std::sync::Arc<StreamReplica>]) {
    let Some(zfs) = &cx.zfs else {
        return;
    };
    for sr in replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
    {
        let Some(pool) = cx.own_pool(&sr.spec.pool) else {
            continue;
        };
        let Ok(key) = ProjectKey::new(&sr.namespace().unwrap_or_default(), &sr.spec.project) else {
            continue;
        };
        if let Ok(ds) = PoolLayout::new(pool).project(&key)
            && zfs.is_mounted(&ds).await.unwrap_or(false)
        {
            match stop_writes(zfs, &cx.cfg.run_dir, &ds).await {
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
pub(super) async fn secure_root(
    cx: &AgentContext,
    key: &ProjectKey,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<Option<String>, ReplicaError> {
    let (mp, dirs) = (
        mountpoint.to_path_buf(),
        crate::mounts::MountDirs::new(&cx.cfg.run_dir),
    );
    let project = Path::new(&key.namespace).join(&key.name);
    tokio::task::spawn_blocking(move || {
        crate::layout::secure_root(&mp, owner)?;
        Ok(crate::mounts::export(&dirs, &project, &mp).err())
    })
    .await?
}

/// Stops all writes to `ds`: the folder mounts inside it go first, then the dataset is
/// unmounted (forced when open files, e.g. a peer's sftp session, keep it busy).
pub(super) async fn stop_writes(
    zfs: &Zfs,
    run_dir: &Path,
    ds: &DatasetName,
) -> Result<(), ReplicaError> {
    if !zfs.is_mounted(ds).await? {
        return Ok(());
    }
    unmount_for_good(zfs, run_dir, ds).await
}

/// Unmounts `ds`, mounted: the folder mounts and exports in it first, then the dataset
/// (forced when busy).
async fn unmount_for_good(zfs: &Zfs, run_dir: &Path, ds: &DatasetName) -> Result<(), ReplicaError> {
    let mp = zfs.property(ds, &p("mountpoint")?).await?;
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
        Err(e) if e.is_busy() => zfs.unmount_force(ds).await.map_err(ReplicaError::from),
        other => other.map_err(ReplicaError::from),
    }
}

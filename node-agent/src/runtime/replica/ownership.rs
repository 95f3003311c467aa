//! Repairing ownership of a project's files on request.

use super::*;

/// User property on a primary's dataset: the last `projstore.io/repair-ownership` value acted on.
pub(super) const PROP_REPAIR_OWNERSHIP: &str = "projstore.io:repair-ownership";

/// On a new `projstore.io/repair-ownership` value: gives every file of the project to its
/// owner (DESIGN §1), skipping `.zfs` and never following symlinks or crossing into mounts.
pub(super) async fn repair_ownership(
    zfs: &Zfs,
    ds: &DatasetName,
    project: &Project,
    root: &Path,
) -> Result<(), ReplicaError> {
    let Some(asked) = project
        .annotations()
        .get(projstore_api::REPAIR_OWNERSHIP_ANNOTATION)
        .cloned()
    else {
        return Ok(());
    };
    let prop = p(PROP_REPAIR_OWNERSHIP)?;
    if zfs.property(ds, &prop).await? == asked {
        return Ok(());
    }
    let (uid, gid) = (project.spec.owner.uid, project.spec.owner.gid);
    let top = root.to_path_buf();
    let done =
        tokio::task::spawn_blocking(move || crate::ownership::chown_tree(&top, uid, gid)).await??;
    tracing::info!(dataset = %ds, files = done.changed, uid, gid, "ownership repaired");
    if !done.failed.is_empty() {
        // Entries that changed under the walk (a tenant renaming them) are left, not chased.
        tracing::warn!(dataset = %ds, failed = done.failed.len(), first = %done.failed[0], "some entries kept their owner");
    }
    zfs.set(ds, &prop, &asked).await.map_err(ReplicaError::from)
}

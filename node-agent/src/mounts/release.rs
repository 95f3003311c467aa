//! Taking mounts down: one wanted mount, a tenant's own mounts, everything below a directory.

use super::*;

/// Unmounts the mount at `mount_path` inside the consumer (resolved beneath its root, by
/// mount ID) and the staging mounts behind it.
pub async fn release(consumer_root: &Path, mount_path: &Path, dirs: &MountDirs) {
    let (root, rel, d) = (
        consumer_root.to_path_buf(),
        mount_path.to_path_buf(),
        dirs.clone(),
    );
    let target = consumer_root.join(mount_path);
    let r = blocking(target.display().to_string(), move || {
        let root = crate::beneath::open_root(&root).map_err(|e| e.to_string())?;
        let (parent, fd) =
            crate::beneath::open_mount_point(root.as_fd(), &rel).map_err(|e| e.to_string())?;
        let id = crate::beneath::mount_id(fd.as_fd()).map_err(|e| e.to_string())?;
        let table = mount_table();
        let ours = table.iter().find(|m| m.id == id && m.is_root_fuse());
        if let Some(m) = ours
            && id != crate::beneath::mount_id(parent.as_fd()).map_err(|e| e.to_string())?
        {
            unmount_fd(fd.as_fd()).map_err(|e| e.to_string())?;
            if let Some(staging) = d.staging_of(m) {
                d.release_staging(&staging);
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(mount = %target.display(), error = %e, "cannot release a mount");
    }
    // Ours at that path but out of reach (a tenant mounted something over it, or renamed a
    // parent): its connection is aborted all the same, and what it staged released.
    let d = dirs.clone();
    let _ = blocking(target.display().to_string(), move || {
        d.abort_covered(&target);
        Ok(())
    })
    .await;
}

/// Detaches (lazily, no connection aborted: they are not the agent's) the mounts below `dir`
/// that the agent did not make — a tenant's own FUSE mount inside its project, say — so the
/// project's filesystem can be unmounted when it stops serving. Shallowest first: a detached
/// mount takes what is mounted below it along. Returns what was detached.
pub fn detach_foreign_under(dir: &Path) -> Vec<PathBuf> {
    let mut foreign: Vec<Mounted> = mount_table()
        .into_iter()
        .filter(|m| m.target.starts_with(dir) && m.target != dir && !m.is_root_fuse())
        .collect();
    foreign.sort_by_key(|m| m.target.as_os_str().len());
    let mut done = Vec::new();
    for m in foreign {
        if done.iter().any(|d: &PathBuf| m.target.starts_with(d)) {
            continue;
        }
        match unmount_exact(&m) {
            Ok(()) => done.push(m.target.clone()),
            Err(e) => {
                tracing::warn!(mount = %m.target.display(), error = %e, "cannot detach a mount inside a project")
            }
        }
    }
    done
}

/// Unmounts every FUSE mount of the agent's kinds below `dir` (deepest first; never a project
/// dataset under zfs-fuse, nor a tenant's own FUSE mount), each by its mount ID, and the
/// staging mounts behind them. Returns what was unmounted.
pub async fn release_under(dir: &Path, dirs: &MountDirs) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let mut inside: Vec<Mounted> = mount_table()
        .into_iter()
        .filter(|m| m.is_root_fuse() && m.target.starts_with(dir) && m.target != dir)
        .collect();
    inside.sort_by_key(|m| std::cmp::Reverse(m.target.as_os_str().len()));
    for m in inside {
        let target = m.target.clone();
        let staging = dirs.staging_of(&m);
        let r = blocking(target.display().to_string(), move || unmount_exact(&m)).await;
        match r {
            Ok(()) => done.push(target.clone()),
            Err(e) => {
                tracing::warn!(mount = %target.display(), error = %e, "cannot release a mount")
            }
        }
        if let Some(staging) = staging {
            dirs.release_staging(&staging);
        }
    }
    done
}

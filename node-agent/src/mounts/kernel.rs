//! Mount operations by file descriptor: detaching exactly one mount, aborting a FUSE
//! connection, cloning a mount privately. Never by a path a tenant could redirect.

use super::*;

/// Unmounts exactly mount `m`: its path is resolved component by component following no
/// symlink (however long a tenant made it), and unmounted only when it still leads to the
/// mount with `m`'s ID (a tenant who renamed or swapped a directory on the way cannot
/// redirect the unmount).
pub fn unmount_exact(m: &Mounted) -> Result<(), String> {
    unmount_exact_with(m, rustix::mount::UnmountFlags::DETACH)
}

pub(super) fn unmount_exact_with(
    m: &Mounted,
    flags: rustix::mount::UnmountFlags,
) -> Result<(), String> {
    if m.is_root_fuse() {
        // Whatever happens to its path: every file opened through it fails from now on, so
        // no process holding one keeps reading or writing after it is detached. Only while
        // the table still shows this very mount (a device number is reused once it is gone).
        let table = mount_table();
        let still = table
            .iter()
            .find(|x| x.id == m.id && x.dev == m.dev && x.is_root_fuse());
        if let Some(m) = still
            && let Err(e) = abort_fuse(m)
        {
            tracing::warn!(mount = %m.target.display(), error = %e, "cannot abort a FUSE connection");
        }
    }
    let fd = open_mount_path(&m.target)?;
    let id = crate::beneath::mount_id(fd.as_fd()).map_err(|e| e.to_string())?;
    if id != m.id {
        return Err(format!(
            "{} no longer leads to mount {} (it was moved): left for the next pass",
            m.target.display(),
            m.id
        ));
    }
    rustix::mount::unmount(crate::beneath::fd_path(fd.as_fd()), flags)
        .map_err(|e| format!("unmount {}: {e}", m.target.display()))
}

/// Opens the directory a mount-table path names, walking no symlink and looking up nothing
/// on a FUSE filesystem other than zfs-fuse (a tenant's FUSE mount, or a stalled sshfs, can
/// leave a lookup unanswered for ever): such a path is refused, not waited on.
pub(super) fn open_mount_path(target: &Path) -> Result<OwnedFd, String> {
    let table = mount_table();
    crate::beneath::open_absolute_checked(target, |fd| {
        let id = crate::beneath::mount_id(fd).map_err(|_| "has no readable mount ID")?;
        match table.iter().find(|m| m.id == id) {
            Some(m) if m.fstype == "fuse" || m.fstype.starts_with("fuse.") => {
                if matches!(m.fstype.as_str(), "fuse.zfs" | "fuse.zfs-fuse") {
                    Ok(())
                } else {
                    Err("is on a FUSE mount: not looked in (its daemon may never answer)")
                }
            }
            _ => Ok(()),
        }
    })
    .map_err(|e| e.to_string())
}

/// Unmounts (lazily, so a dead sshfs cannot block it) the mount whose root `fd` holds; one
/// of the agent's FUSE mounts has its connection aborted first (see `abort_fuse`).
pub(super) fn unmount_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
    if let Ok(id) = crate::beneath::mount_id(fd)
        && let Some(m) = mount_table()
            .iter()
            .find(|m| m.id == id && m.is_root_fuse())
        && let Err(e) = abort_fuse(m)
    {
        tracing::warn!(mount = %m.target.display(), error = %e, "cannot abort a FUSE connection");
    }
    rustix::mount::unmount(
        crate::beneath::fd_path(fd),
        rustix::mount::UnmountFlags::DETACH,
    )
}

/// Aborts the FUSE connection of `m` through the fuse control filesystem (mounted at
/// `/sys/fs/fuse/connections` when it is not yet), found by the mount's device, not by any
/// path: every request through it fails at once (`ENOTCONN`), and a lazily detached mount
/// leaves nobody reading or writing through it.
pub(super) fn abort_fuse(m: &Mounted) -> Result<(), String> {
    let minor = m
        .dev
        .split_once(':')
        .and_then(|(_, minor)| minor.parse::<u32>().ok())
        .ok_or_else(|| format!("device {:?} of {}", m.dev, m.target.display()))?;
    let conn = fuse_control()?.join(minor.to_string());
    std::fs::write(conn.join("abort"), b"1").map_err(|e| format!("{}: {e}", conn.display()))
}

/// `/sys/fs/fuse/connections`, mounted (fusectl) when it is not yet.
pub(super) fn fuse_control() -> Result<&'static Path, String> {
    let control = Path::new("/sys/fs/fuse/connections");
    if top_at(&mount_table(), control).is_none() {
        rustix::mount::mount(
            "none",
            control,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .map_err(|e| format!("mount fusectl on {}: {e}", control.display()))?;
    }
    Ok(control)
}

/// Attaches a copy of the directory `fd` holds at `staging` (an agent-private directory),
/// `nosymfollow,nosuid,nodev` and private: no symlink inside is ever followed through it, and
/// no mount made later in the source (another project's folder) propagates into it.
pub(super) fn clone_private(fd: BorrowedFd<'_>, staging: &Path) -> Result<(), String> {
    clone_private_with(fd, staging, false)
}

/// `clone_private`, read-only when `read_only`.
pub(super) fn clone_private_with(
    fd: BorrowedFd<'_>,
    staging: &Path,
    read_only: bool,
) -> Result<(), String> {
    use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags};
    let tree = rustix::mount::open_tree(
        fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| format!("clone for {}: {e}", staging.display()))?;
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        staging,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("attach at {}: {e}", staging.display()))?;
    let mut flags =
        MountFlags::BIND | MountFlags::NOSYMFOLLOW | MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    let set = rustix::mount::mount_change(staging, MountPropagationFlags::PRIVATE)
        .and_then(|()| rustix::mount::mount_remount(staging, flags, ""));
    if let Err(e) = set {
        let _ = rustix::mount::unmount(staging, rustix::mount::UnmountFlags::DETACH);
        return Err(format!("{}: {e}", staging.display()));
    }
    // Until it was made private the copy was a peer of the source: a mount made in the source
    // in that moment propagated into it (without `nosymfollow`). Take any such one out.
    let table = mount_table();
    if let Some(copy) = top_at(&table, staging) {
        for m in table.iter().rev().filter(|m| m.parent == copy.id) {
            unmount_exact(m)?;
        }
    }
    Ok(())
}

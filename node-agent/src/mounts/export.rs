//! Source side: each served project's export, and the copies of it in each peer's sftp chroot
//! (made, kept in line with the grants, taken down with their sessions).

use super::*;

/// Exports the project mounted at `mountpoint` (`project` = `<ns>/<name>`) to the sftp
/// chroot: a private bind mount of its root with `nosymfollow,nosuid,nodev`, so sftp-server —
/// root — never follows a symlink a tenant made there, whatever it races, and sees none of
/// the folders mounted inside the project. The chroot is writable by a root sftp session, so
/// the export's directory is made and held by descriptor and the export moved onto it.
/// Idempotent; a stale export (of an earlier mount) is replaced.
pub fn export(dirs: &MountDirs, project: &Path, mountpoint: &Path) -> Result<(), String> {
    let _one_at_a_time = EXPORTS.lock().unwrap_or_else(|e| e.into_inner());
    export_into(dirs, &dirs.exports_root(), project, mountpoint, false)
}

/// Exports and peers' views are made and taken down one at a time: a view is never made
/// again from a project that is being taken down (`unexport`), nor left behind by it.
pub(super) static EXPORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `export`, into the directory `into` (the exports, or a peer's chroot, where a root sftp
/// session of that peer may have made anything: it is walked by descriptor).
pub(super) fn export_into(
    dirs: &MountDirs,
    into: &Path,
    project: &Path,
    mountpoint: &Path,
    read_only: bool,
) -> Result<(), String> {
    use crate::beneath::{ensure_dir, mount_id, open_mount_point, open_root};
    let err = |e: crate::beneath::BeneathError| format!("export of {}: {e}", project.display());
    let table = mount_table();
    let live = top_at(&table, mountpoint)
        .ok_or_else(|| format!("{} is not mounted", mountpoint.display()))?;
    let ns = project.parent().unwrap_or(Path::new(""));
    let name = project
        .file_name()
        .ok_or("an export needs <namespace>/<name>")?;
    // The directories are made where they can be written (a peer's chroot is a read-only
    // alias of its directory: `MountDirs::writable`), and mounted on where they show.
    let made = open_root(&dirs.writable(into)).map_err(err)?;
    let made = ensure_dir(made.as_fd(), ns, (0, 0)).map_err(err)?;
    if let Err(e) = open_mount_point(made.as_fd(), Path::new(name)) {
        if e.reason != "does not exist" {
            return Err(err(e));
        }
        ensure_dir(made.as_fd(), Path::new(name), (0, 0)).map_err(err)?;
    }
    let shown = open_root(into).map_err(err)?;
    let parent = crate::beneath::open_dir(shown.as_fd(), ns).map_err(err)?;
    let (_, at) = open_mount_point(parent.as_fd(), Path::new(name)).map_err(err)?;
    let id = |fd: BorrowedFd<'_>| mount_id(fd).map_err(|e| e.to_string());
    let here = id(at.as_fd())?;
    let at = if here == id(parent.as_fd())? {
        at
    } else {
        let found = table.iter().find(|m| m.id == here);
        let current = found.is_some_and(|m| {
            m.dev == live.dev
                && m.root == "/"
                && m.has_option("nosymfollow")
                && !m.is_shared()
                && m.has_option("ro") == read_only
        });
        if current {
            return Ok(());
        }
        // Stale (of an earlier mount of the project, or writable where it must not be): out
        // of reach of new sessions first, then the sessions holding it end, then it goes.
        match found {
            Some(m) => {
                drop(at);
                take_down(dirs, m, true).map_err(|e| format!("replace a stale export: {e}"))?;
            }
            None => {
                unmount_fd(at.as_fd()).map_err(|e| format!("replace a stale export: {e}"))?;
                drop(at);
            }
        }
        open_mount_point(parent.as_fd(), Path::new(name))
            .map_err(err)?
            .1
    };
    let root = open_root(mountpoint).map_err(|e| e.to_string())?;
    if id(root.as_fd())? != live.id {
        return Err(format!(
            "{} changed while exporting it",
            mountpoint.display()
        ));
    }
    let staging = dirs
        .staging_root()
        .join(format!("export-{}", hex_of(&into.join(project))));
    clone_private_with(root.as_fd(), &staging, read_only)?;
    let moved = rustix::mount::move_mount(
        rustix::fs::CWD,
        &staging,
        at.as_fd(),
        "",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    );
    if let Err(e) = moved {
        let _ = rustix::mount::unmount(&staging, rustix::mount::UnmountFlags::DETACH);
        return Err(format!("export {}: {e}", mountpoint.display()));
    }
    Ok(())
}

pub(super) fn hex_of(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(p.as_os_str().as_encoded_bytes())[..16])
}

/// Takes down the export of the project mounted at `mountpoint` and every same-host mount
/// made from it (a project about to stop serving: they must go before its filesystem does),
/// all found by the project's filesystem (`dev`) and unmounted by mount ID. Nothing may keep
/// writing to the project through them afterwards (epoch fencing): the bindfs mounts reading
/// a copy are force-unmounted (their FUSE connection aborted, so open files there fail), the
/// sftp sessions holding files of the export are ended, and the copies and the export are
/// then unmounted for real, lazily only as a last resort. Returns what was unmounted.
pub fn unexport(dirs: &MountDirs, mountpoint: &Path) -> Vec<PathBuf> {
    use rustix::mount::UnmountFlags;
    let _one_at_a_time = EXPORTS.lock().unwrap_or_else(|e| e.into_inner());
    let table = mount_table();
    let Some(live) = top_at(&table, mountpoint) else {
        return Vec::new();
    };
    let (exports, peers, staging) = (dirs.exports_root(), dirs.peers_root(), dirs.staging_root());
    let exported = |m: &Mounted| m.target.starts_with(&exports) || m.target.starts_with(&peers);
    let copies: Vec<&Mounted> = table
        .iter()
        .filter(|m| m.dev == live.dev && (exported(m) || m.target.starts_with(&staging)))
        .collect();
    let mut done = Vec::new();
    let users = table
        .iter()
        .rev()
        .filter(|m| m.is_root_fuse() && copies.iter().any(|c| Path::new(&m.source) == c.target));
    for m in users {
        match unmount_exact_with(m, UnmountFlags::FORCE | UnmountFlags::DETACH) {
            Ok(()) => done.push(m.target.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release a mount of a project that stops serving")
            }
        }
    }
    for c in copies {
        match take_down(dirs, c, exported(c)) {
            Ok(()) => done.push(c.target.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release a copy of a project that stops serving")
            }
        }
    }
    done
}

/// Unmounts copy `c` of a project; an export (or a peer's view) is first moved out of reach of
/// new sftp sessions (sshfs reconnects at once) and the sessions holding files in it are
/// ended. Lazily only as a last resort.
pub(super) fn take_down(dirs: &MountDirs, c: &Mounted, exported: bool) -> Result<(), String> {
    use rustix::mount::UnmountFlags;
    let moved;
    let c = if exported {
        match retire(dirs, c) {
            Ok(m) => {
                end_sftp_sessions_holding(dirs, m.id);
                moved = m;
                &moved
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take an export out of the sftp chroot");
                end_sftp_sessions_holding(dirs, c.id);
                c
            }
        }
    } else {
        c
    };
    let mut r = unmount_exact_with(c, UnmountFlags::empty());
    for _ in 0..40 {
        if r.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        r = unmount_exact_with(c, UnmountFlags::empty());
    }
    if r.is_err() {
        tracing::warn!(copy = %c.target.display(), "still busy after its users were ended: detached");
        r = unmount_exact(c);
    }
    r
}

/// Makes each peer's sftp chroot hold the exports of exactly the projects it is granted
/// (those served here: exported), and takes down every other view, ending the sessions that
/// hold files in it. Returns what could not be done.
pub fn sync_peers(
    dirs: &MountDirs,
    projects_root: &Path,
    grants: &[crate::sftp::Grant],
) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    // Not waiting behind a take-down: the next pass does it.
    let _one_at_a_time = match EXPORTS.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return vec![
                "exports are being taken down: the peers' views wait for the next pass".into(),
            ];
        }
    };
    let table = mount_table();
    let mut problems = Vec::new();
    let mut wanted = std::collections::HashSet::new();
    for g in grants {
        let root = dirs.peer_root(&g.node);
        let dir = dirs.writable(&root);
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)));
        if let Err(e) = made {
            problems.push(format!("{}: {e}", root.display()));
            continue;
        }
        for (project, read_only) in &g.projects {
            if top_at(&table, &dirs.exports_root().join(project)).is_none() {
                continue; // not served here (any more, or yet)
            }
            let mountpoint = projects_root.join(project);
            match export_into(dirs, &root, project, &mountpoint, *read_only) {
                Ok(()) => {
                    wanted.insert(root.join(project));
                }
                Err(e) => problems.push(format!("{} for node {}: {e}", project.display(), g.node)),
            }
        }
    }
    let peers = dirs.peers_root();
    for m in mount_table().iter().rev() {
        if m.target.starts_with(&peers)
            && m.target != peers
            && !wanted.contains(&m.target)
            && let Err(e) = take_down(dirs, m, true)
        {
            problems.push(format!("{}: {e}", m.target.display()));
        }
    }
    problems
}

/// Moves export `m` to an agent-private directory (out of the sftp chroot); returns it there.
pub(super) fn retire(dirs: &MountDirs, m: &Mounted) -> Result<Mounted, String> {
    let fd = open_mount_path(&m.target)?;
    if crate::beneath::mount_id(fd.as_fd()).map_err(|e| e.to_string())? != m.id {
        return Err(format!("{} was moved", m.target.display()));
    }
    let to = dirs.staging_root().join(format!("retired-{}", m.id));
    std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
    rustix::mount::move_mount(
        fd.as_fd(),
        "",
        rustix::fs::CWD,
        &to,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("move {} out of the chroot: {e}", m.target.display()))?;
    Ok(Mounted {
        target: to,
        ..m.clone()
    })
}

/// Ends (SIGKILL) the sftp sessions that hold a file of mount `mount_id` open: a peer must not
/// keep reading or writing a project once its view is gone. Sessions are the processes
/// chrooted below the peers' root (also those of an earlier sshd, whose parent is gone), and
/// what they hold is read from `/proc/PID/fdinfo` (`mnt_id`), not from a path, which a tenant
/// can make too long to read back.
pub(super) fn end_sftp_sessions_holding(dirs: &MountDirs, mount_id: u64) {
    let peers = dirs.peers_root();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let chrooted = std::fs::read_link(format!("/proc/{pid}/root"))
            .is_ok_and(|root| root.starts_with(&peers));
        if !chrooted {
            continue;
        }
        let holds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                    info.lines()
                        .filter_map(|l| l.strip_prefix("mnt_id:"))
                        .any(|v| v.trim().parse::<u64>() == Ok(mount_id))
                })
            })
        });
        // SIGKILL: sshd's internal-sftp process outlives SIGTERM (seen: still running).
        if holds && let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

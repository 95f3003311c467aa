//! Consumer side: making one wanted mount (sshfs or a local export, then bindfs, staged and
//! moved onto a target resolved beneath the consumer's root).

use super::*;

/// What is at the target now.
pub(super) enum AtTarget {
    /// A directory with nothing mounted on it.
    Free(OwnedFd),
    /// Our mount, from the wanted source.
    Current,
}

/// Resolves (creating it beneath the consumer's root when missing) the target directory of
/// `w`, and takes down a mount there that is not the wanted one.
pub(super) fn prepare_target(
    w: &Wanted,
    lower: &Path,
    remote_ok: bool,
    dirs: &MountDirs,
) -> Result<AtTarget, String> {
    let root = crate::beneath::open_root(&w.consumer_root).map_err(|e| e.to_string())?;
    let mount_path = |e: crate::beneath::BeneathError| {
        format!(
            "mountPath {:?}: {:?} {}",
            w.mount_path.display().to_string(),
            e.path,
            e.reason
        )
    };
    let (parent, fd) = match crate::beneath::open_mount_point(root.as_fd(), &w.mount_path) {
        Err(e) if e.reason == "does not exist" => {
            crate::beneath::ensure_dir(root.as_fd(), &w.mount_path, w.owner).map_err(mount_path)?;
            crate::beneath::open_mount_point(root.as_fd(), &w.mount_path).map_err(mount_path)?
        }
        other => other.map_err(mount_path)?,
    };
    let id = |fd: BorrowedFd<'_>| crate::beneath::mount_id(fd).map_err(|e| e.to_string());
    let here = id(fd.as_fd())?;
    if here == id(parent.as_fd())? {
        return Ok(AtTarget::Free(fd));
    }
    let table = mount_table();
    let m = table.iter().find(|m| m.id == here).ok_or_else(|| {
        format!(
            "mount {here} at {} is not in the mount table",
            w.target().display()
        )
    })?;
    if m.source == lower.display().to_string() && remote_ok && m.has_option("ro") == w.read_only {
        return Ok(AtTarget::Current);
    }
    if !m.is_root_fuse() {
        // Something of the tenant's covers the target: the agent's mount under it (if any)
        // must not live on as it was (a removed mount, a mount that became read-only).
        dirs.abort_covered(&w.target());
        return Err(format!(
            "mountPath {:?}: another filesystem ({}) is mounted there",
            w.mount_path.display().to_string(),
            m.fstype
        ));
    }
    unmount_fd(fd.as_fd()).map_err(|e| format!("unmount {}: {e}", w.target().display()))?;
    drop(fd);
    // What the replaced mount read (its staging directory may be another one: other owners).
    if let Some(old) = dirs.staging_of(m) {
        dirs.release_staging(&old);
    }
    let (_, fd) =
        crate::beneath::open_mount_point(root.as_fd(), &w.mount_path).map_err(mount_path)?;
    Ok(AtTarget::Free(fd))
}

/// Makes `w` mounted (idempotent): nothing happens when it already is, from the same source;
/// a mount from another source (the source project moved) is replaced. The target is
/// resolved beneath the consumer's root and held by descriptor; bindfs mounts on a staging
/// directory of the agent and the finished mount is moved onto that descriptor.
pub async fn ensure(w: &Wanted, keys: &SshKeys, dirs: &MountDirs) -> Result<(), String> {
    let staging = dirs.staging_for(w);
    let top = staging.join("top");
    // What bindfs reads: the sshfs of the source folder, or on this host a private
    // `nosymfollow` copy of the source folder itself, resolved beneath the source's root.
    let lower = staging.join(if w.remote.is_some() {
        "remote"
    } else {
        "source"
    });
    let table = mount_table();
    let staged = top_at(&table, &lower);
    let remote_ok = match &sshfs_source(w) {
        Some(src) => staged.is_some_and(|m| &m.source == src),
        // The copy is of the source's live filesystem (not of one it was moved away from).
        None => staged
            .zip(top_at(&table, &w.source_root))
            .is_some_and(|(c, live)| {
                c.dev == live.dev && Path::new(&c.root) == Path::new("/").join(&w.path)
            }),
    };
    let target = {
        let (w, lower, dirs) = (w.clone(), lower.clone(), dirs.clone());
        blocking(format!("{}", w.target().display()), move || {
            prepare_target(&w, &lower, remote_ok, &dirs)
        })
        .await?
    };
    let AtTarget::Free(target) = target else {
        return Ok(());
    };
    // Half-made leftovers of an earlier attempt (also of the other kind, local or remote).
    dirs.release_staging(&staging);
    let made = mount_staged(w, keys, &top, &lower, target).await;
    if made.is_err() {
        // Nothing half-made stays behind: the next attempt, or a removed mount, finds none.
        dirs.release_staging(&staging);
    }
    made
}

/// The source (sshfs, or a private copy on this host) onto `lower`, bindfs of it onto `top`,
/// and that moved onto the target.
pub(super) async fn mount_staged(
    w: &Wanted,
    keys: &SshKeys,
    top: &Path,
    lower: &Path,
    target: OwnedFd,
) -> Result<(), String> {
    std::fs::create_dir_all(top).map_err(|e| format!("{}: {e}", top.display()))?;
    if let (Some(remote), Some(src)) = (&w.remote, sshfs_source(w)) {
        mount_remote(w, remote, &src, keys, lower).await?;
    } else {
        let (source_root, path, lower) = (w.source_root.clone(), w.path.clone(), lower.to_owned());
        blocking(format!("{}", source_root.display()), move || {
            copy_source(&source_root, &path, &lower)
        })
        .await?;
    }
    args_and_mount(w, lower, top, target).await
}

/// `root@host:/<ns>/<name>/<path>` for a source on another host.
pub(super) fn sshfs_source(w: &Wanted) -> Option<String> {
    w.remote.as_ref().map(|r| {
        let host = r.rsplit_once(':').map_or(r.as_str(), |(h, _)| h);
        format!("root@{host}:/{}", w.source_project.join(&w.path).display())
    })
}

/// bindfs of `lower` onto `top`, then the finished mount moved onto the target's descriptor.
pub(super) async fn args_and_mount(
    w: &Wanted,
    lower: &Path,
    top: &Path,
    target: OwnedFd,
) -> Result<(), String> {
    let mut args: Vec<std::ffi::OsString> = vec![
        // A request a tenant keeps blocked (a FIFO, say) must not stall the others.
        "--multithreaded".into(),
        format!("--create-for-user={}", w.source_owner.0).into(),
        format!("--create-for-group={}", w.source_owner.1).into(),
        "-u".into(),
        w.owner.0.to_string().into(),
        "-g".into(),
        w.owner.1.to_string().into(),
        "-o".into(),
        if w.read_only {
            "allow_other,nosuid,nodev,ro"
        } else {
            "allow_other,nosuid,nodev"
        }
        .into(),
    ];
    args.push(lower.as_os_str().to_owned());
    args.push(top.as_os_str().to_owned());
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run("bindfs", &refs).await?;
    let moved = rustix::mount::move_mount(
        rustix::fs::CWD,
        top,
        target.as_fd(),
        "",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    );
    if let Err(e) = moved {
        let _ = rustix::mount::unmount(top, rustix::mount::UnmountFlags::DETACH);
        return Err(format!("move the mount onto {}: {e}", w.target().display()));
    }
    Ok(())
}

/// The source folder of a same-host mount: `path` resolved beneath the root of the source
/// project's live filesystem, and that very directory copied to `lower` (`clone_private`).
pub(super) fn copy_source(source_root: &Path, path: &Path, lower: &Path) -> Result<(), String> {
    let table = mount_table();
    let live = top_at(&table, source_root)
        .ok_or("the source project is not mounted on this host (yet)")?;
    let root = crate::beneath::open_root(source_root).map_err(|e| e.to_string())?;
    if crate::beneath::mount_id(root.as_fd()).map_err(|e| e.to_string())? != live.id {
        return Err("the source project is not mounted on this host (yet)".into());
    }
    let dir = crate::beneath::open_dir(root.as_fd(), path).map_err(|e| {
        format!(
            "path {:?}: {:?} {}",
            path.display().to_string(),
            e.path,
            e.reason
        )
    })?;
    clone_private(dir.as_fd(), lower)
}

/// sshfs of the source folder on its host into `remote_dir`, made `nosymfollow,nosuid,nodev`
/// before anything uses it (bindfs runs as root here: a symlink in the source must not lead
/// it anywhere on this host).
pub(super) async fn mount_remote(
    w: &Wanted,
    remote: &str,
    src: &str,
    keys: &SshKeys,
    remote_dir: &Path,
) -> Result<(), String> {
    let (_, port) = remote
        .rsplit_once(':')
        .ok_or_else(|| format!("sftp endpoint {remote:?} has no port"))?;
    // Exactly this host, with exactly the key it published: no other host key is trusted.
    let host_key = w
        .remote_host_key
        .as_deref()
        .ok_or("the source host has not published its sftp host key yet")?;
    check_host_key(host_key)?;
    check_endpoint(remote)?;
    let host = remote.rsplit_once(':').map_or(remote, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let known = remote_dir.with_extension("known_hosts");
    std::fs::write(&known, format!("[{host}]:{port} {host_key}\n"))
        .map_err(|e| format!("{}: {e}", known.display()))?;
    let opts = format!(
        "IdentityFile={},UserKnownHostsFile={},GlobalKnownHostsFile=/dev/null,StrictHostKeyChecking=yes,BatchMode=yes,port={port},\
         reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,\
         cache_timeout=10,kernel_cache,auto_cache,allow_other,default_permissions,nosuid,nodev{}",
        keys.client_key().display(),
        known.display(),
        w.bind_address
            .map(|a| format!(",BindAddress={a}"))
            .unwrap_or_default()
    );
    if let Err(e) = sshfs(&opts, src, remote_dir).await {
        // Say which component of `path` is the problem, as for a mount on this host: look
        // at the source project's root through sftp and resolve the path beneath it.
        let user_host = src.split_once(":/").map_or(src, |(uh, _)| uh);
        let root_src = format!("{user_host}:/{}", w.source_project.display());
        let probe = remote_dir.with_extension("probe");
        let why = match sshfs(&opts, &root_src, &probe).await {
            Ok(()) => {
                let (probe2, path) = (probe.clone(), w.path.clone());
                let found = blocking(probe.display().to_string(), move || {
                    let root = crate::beneath::open_root(&probe2).map_err(|e| e.to_string())?;
                    crate::beneath::open_dir(root.as_fd(), &path)
                        .map(drop)
                        .map_err(|e| {
                            format!(
                                "path {:?}: {:?} {}",
                                path.display().to_string(),
                                e.path,
                                e.reason
                            )
                        })
                })
                .await;
                // Aborted, not only detached: a lookup the source host never answers must
                // not keep a thread (and an sshfs) waiting for ever.
                if let Some(m) = top_at(&mount_table(), &probe).filter(|m| m.is_root_fuse()) {
                    let _ = abort_fuse(m);
                }
                let _ = rustix::mount::unmount(&probe, rustix::mount::UnmountFlags::DETACH);
                found.err()
            }
            Err(_) => None,
        };
        return Err(why.unwrap_or(e));
    }
    Ok(())
}

/// sshfs of `src` onto `dir` with `opts`, then made `nosymfollow,nosuid,nodev` before
/// anything uses it.
pub(super) async fn sshfs(opts: &str, src: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    run(
        "sshfs",
        &["-o".as_ref(), opts.as_ref(), src.as_ref(), dir.as_os_str()],
    )
    .await?;
    use rustix::mount::MountFlags;
    let flags = MountFlags::BIND | MountFlags::NOSYMFOLLOW | MountFlags::NOSUID | MountFlags::NODEV;
    if let Err(e) = rustix::mount::mount_remount(dir, flags, "") {
        let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
        return Err(format!("remount {} nosymfollow: {e}", dir.display()));
    }
    Ok(())
}

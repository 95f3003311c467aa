//! The agent's own directories for mounts: staging, the exports and the peers' sftp chroots.

use super::*;

/// The agent's own directories for mounts, below its run directory (root's, never a
/// tenant's): `mnt/` stages mounts before they are moved into place, `sftp/` is the sftp
/// server's chroot and holds the exports of this host's projects.
#[derive(Debug, Clone)]
pub struct MountDirs {
    run_dir: PathBuf,
}

impl MountDirs {
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
        }
    }
    pub(super) fn staging_root(&self) -> PathBuf {
        self.run_dir.join("mnt")
    }
    /// `<ns>/<name>` below it is that project's export (what same-host mounts read, and
    /// what peers' views are made of).
    pub fn exports_root(&self) -> PathBuf {
        self.run_dir.join("exports")
    }
    /// The sftp chroots, one per peer node let in (`peer_root`), and an empty one: a
    /// read-only alias (`nosuid,nodev,noexec`) of `<run>/sftp-dirs`, so a root sftp session
    /// can neither write nor rename anything in its chroot (only inside the exports mounted
    /// there, as they allow).
    pub fn peers_root(&self) -> PathBuf {
        self.run_dir.join("sftp")
    }
    /// Where the agent makes the directories shown read-only below `peers_root`.
    pub(super) fn peers_dirs(&self) -> PathBuf {
        self.run_dir.join("sftp-dirs")
    }
    /// The writable alias of a directory below `peers_root` (itself elsewhere).
    pub(super) fn writable(&self, dir: &Path) -> PathBuf {
        match dir.strip_prefix(self.peers_root()) {
            Ok(rest) => self.peers_dirs().join(rest),
            Err(_) => dir.to_path_buf(),
        }
    }
    /// The sftp chroot of a peer node: `<ns>/<name>` below it for each project it mounts.
    pub fn peer_root(&self, node: &str) -> PathBuf {
        self.peers_root().join(node_tag(node))
    }
    /// The chroot of a session from an address no peer was let in from: empty.
    pub fn no_peer_root(&self) -> PathBuf {
        self.peers_root().join("none")
    }
    /// One staging directory per mount target, owners and source host (outside every
    /// project), named by a hash no tenant can make two targets share. A mount made for other
    /// owners or from another source host reads another staging directory, so it is made again.
    pub(super) fn staging_for(&self, w: &Wanted) -> PathBuf {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(w.target().as_os_str().as_encoded_bytes());
        h.update([0]);
        let ids = [w.owner.0, w.owner.1, w.source_owner.0, w.source_owner.1];
        for id in ids {
            h.update(id.to_be_bytes());
        }
        // And the source host's endpoint and host key: a source host that comes back with a
        // new key (its pod restarted) or another address is mounted again, trusting exactly
        // the key it publishes now.
        for part in [&w.remote, &w.remote_host_key] {
            h.update([0]);
            h.update(part.as_deref().unwrap_or_default().as_bytes());
        }
        self.staging_root().join(hex::encode(&h.finalize()[..16]))
    }

    /// The staging directory a mount reads from (bindfs's source is `<staging>/source` or
    /// `<staging>/remote`), or the one it is part of; None for a mount that is not staged.
    pub(super) fn staging_of(&self, m: &Mounted) -> Option<PathBuf> {
        let root = self.staging_root();
        // A mount's source is whatever its maker named it: only a root FUSE mount's counts
        // (a tenant may mount FUSE with any name).
        let source = m.is_root_fuse().then_some(Path::new(&m.source));
        [source, Some(m.target.as_path())]
            .into_iter()
            .flatten()
            .find_map(|p| p.strip_prefix(&root).ok()?.components().next())
            .map(|c| root.join(c))
    }

    /// Unmounts what is mounted in a staging directory (deepest first), each by its mount ID.
    pub(super) fn release_staging(&self, staging: &Path) {
        for m in mount_table()
            .iter()
            .rev()
            .filter(|m| m.target.starts_with(staging))
        {
            if let Err(e) = unmount_exact(m) {
                tracing::warn!(mount = %m.target.display(), error = %e, "cannot release a staging mount");
            }
        }
    }

    /// The agent's mounts shown at `target` in the table (covered or not): their FUSE
    /// connection aborted (found by device, no path walked), tried to unmount, and what they
    /// staged released.
    pub(super) fn abort_covered(&self, target: &Path) {
        for m in mount_table()
            .iter()
            .filter(|m| m.target == target && m.is_root_fuse())
        {
            let Some(staging) = self.staging_of(m) else {
                continue;
            };
            if let Err(e) = abort_fuse(m) {
                tracing::warn!(mount = %m.target.display(), error = %e, "cannot abort a FUSE connection");
            }
            let _ = unmount_exact(m);
            self.release_staging(&staging);
        }
    }

    /// At start, before any mount is made: the staging mounts no mount in a project reads
    /// any more (left by a crash between staging and moving, or by an agent that was killed).
    pub fn release_unused_staging(&self) -> Vec<PathBuf> {
        let table = mount_table();
        let root = self.staging_root();
        let used: std::collections::HashSet<PathBuf> = table
            .iter()
            .filter(|m| !m.target.starts_with(&root))
            .filter_map(|m| self.staging_of(m))
            .collect();
        let mut released = Vec::new();
        for m in table.iter().rev().filter(|m| m.target.starts_with(&root)) {
            if self.staging_of(m).is_some_and(|s| !used.contains(&s)) && unmount_exact(m).is_ok() {
                released.push(m.target.clone());
            }
        }
        released
    }

    /// Creates the directories; makes the staging directory a private mount, so mounts made
    /// there can be moved into a project (a mount below a shared one cannot be moved), and the
    /// exports' root one, so exports stay private.
    pub fn prepare(&self) -> Result<(), String> {
        use rustix::mount::{MountFlags, MountPropagationFlags};
        use std::os::unix::fs::PermissionsExt;
        let (staging, exports, peers, dirs) = (
            self.staging_root(),
            self.exports_root(),
            self.peers_root(),
            self.peers_dirs(),
        );
        // The chroots' path must be root's and unwritable by others all the way (sshd); a
        // Kubernetes emptyDir (the run directory) is made 0777.
        for (dir, mode) in [
            (&self.run_dir, 0o755),
            (&staging, 0o700),
            (&exports, 0o700),
            (&dirs, 0o755),
            (&dirs.join("none"), 0o755),
            (&peers, 0o755),
        ] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Private mounts: one moved below a shared mount would become shared.
        let private = |dir: &Path, source: &Path| -> Result<(), String> {
            if top_at(&mount_table(), dir).is_none() {
                rustix::mount::mount_bind(source, dir)
                    .map_err(|e| format!("bind {}: {e}", dir.display()))?;
            }
            rustix::mount::mount_change(dir, MountPropagationFlags::PRIVATE)
                .map_err(|e| format!("make {} private: {e}", dir.display()))
        };
        private(&staging, &staging)?;
        private(&exports, &exports)?;
        private(&peers, &dirs)?;
        let ro = MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC;
        rustix::mount::mount_remount(&peers, ro, "")
            .map_err(|e| format!("make {} read-only: {e}", peers.display()))?;
        // The FUSE control filesystem, to abort the connections of mounts that go.
        fuse_control().map(drop)
    }
}

/// Makes sure the project filesystem mounted at `mountpoint` is `nosuid,nodev`: on zfs-fuse
/// the `setuid`/`devices` properties do not reach the mount flags.
pub fn harden(mountpoint: &Path) -> Result<(), String> {
    let table = mount_table();
    let m = top_at(&table, mountpoint)
        .ok_or_else(|| format!("{} is not mounted", mountpoint.display()))?;
    if m.has_option("nosuid") && m.has_option("nodev") {
        return Ok(());
    }
    use rustix::mount::MountFlags;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
    if m.has_option("ro") {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount_remount(mountpoint, flags, "")
        .map_err(|e| format!("remount {} nosuid,nodev: {e}", mountpoint.display()))
}

//! Mounts (DESIGN §5.7): a folder of project B inside project A.
//!
//! Source side: every served project is exported as a `nosymfollow,nosuid,nodev` bind mount
//! of its root into `<run>/sftp/<ns>/<name>`, the chroot of an sftp-only sshd run by the
//! agent (key auth only). Neither sftp-server nor bindfs, both root, ever follows a symlink
//! a tenant made: the kernel refuses it on that mount, whatever the tenant races.
//! Consumer side: sshfs from B's host into a staging directory (made `nosymfollow` too),
//! then bindfs onto a staging directory (files created through it belong to B's owner; they
//! show as A's owner), then the finished mount is moved onto the target directory, which
//! was resolved beneath A's root and held by descriptor (`beneath`); on the same host,
//! bindfs of the export alone. What is mounted is read back from `/proc/self/mountinfo`, so a
//! restarted agent knows its mounts without any other state, and each is unmounted by its
//! mount ID, never by a path a tenant could have redirected.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::sftp::{SshKeys, check_endpoint, check_host_key};

/// One wanted mount on the consumer's primary host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The consumer project's mountpoint (its root): `mount_path` is resolved beneath it.
    pub consumer_root: PathBuf,
    /// `mountPath`, relative to the consumer's root.
    pub mount_path: PathBuf,
    /// The source project, `<ns>/<name>` relative to the projects root (and the sftp chroot).
    pub source_project: PathBuf,
    /// `path`, relative to the source project's root.
    pub path: PathBuf,
    /// Where the source project is mounted on this host (used when it is served here).
    pub source_root: PathBuf,
    /// The source's sftp endpoint and its sshd's host key, or None when the source is served
    /// on this host.
    pub remote: Option<String>,
    pub remote_host_key: Option<String>,
    /// This host's own address, which the source host lets this host's client key in from
    /// (ssh's `BindAddress`); None: the kernel picks one.
    pub bind_address: Option<std::net::IpAddr>,
    pub read_only: bool,
    /// The source project's owner: files created through the mount get it.
    pub source_owner: (u32, u32),
    /// The consumer project's owner: files show as owned by it.
    pub owner: (u32, u32),
}

impl Wanted {
    /// Where the mount shows, as a path (for status and the mount table; never used to act).
    pub fn target(&self) -> PathBuf {
        self.consumer_root.join(&self.mount_path)
    }
}

/// A node's name as a file name: a hash (a node name may be any DNS subdomain).
pub fn node_tag(node: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(node.as_bytes())[..16])
}

/// A mounted filesystem from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The mount ID: what identifies this mount, whatever its path is renamed to.
    pub id: u64,
    /// The ID of the mount it is mounted on.
    pub parent: u64,
    /// `major:minor` of the filesystem (one per ZFS dataset, also under zfs-fuse).
    pub dev: String,
    /// The directory of the filesystem shown at `target` (`/` for a whole filesystem).
    pub root: String,
    pub target: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,…`).
    pub options: String,
    /// The optional fields: propagation (`shared:N`, `master:N`, …).
    pub optional: String,
    pub fstype: String,
    pub source: String,
    /// Per-filesystem options (for FUSE, `user_id=` is who mounted it).
    pub super_options: String,
}

impl Mounted {
    fn has_option(&self, o: &str) -> bool {
        self.options.split(',').any(|x| x == o)
    }
    /// A FUSE mount made by root, of the kinds the agent makes (bindfs, sshfs): a tenant's
    /// own FUSE mount (fusermount) carries the tenant's `user_id`, zfs-fuse is `fuse.zfs`.
    pub fn is_root_fuse(&self) -> bool {
        matches!(self.fstype.as_str(), "fuse" | "fuse.sshfs")
            && self.super_options.split(',').any(|o| o == "user_id=0")
    }
    fn is_shared(&self) -> bool {
        self.optional.split(' ').any(|f| f.starts_with("shared:"))
    }
}

/// The mount table (octal escapes in paths decoded). Read as bytes: a tenant can name a
/// directory with bytes that are not UTF-8, and such a line must neither hide the others nor
/// be misread.
pub fn mount_table() -> Vec<Mounted> {
    let bytes = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&bytes)
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && let Some(d) = s.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                d.iter()
                    .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses `/proc/self/mountinfo`: `ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL…] - TYPE
/// SOURCE SUPER-OPTIONS`. A line that does not parse is left out, not the table.
pub fn parse_mountinfo(bytes: &[u8]) -> Vec<Mounted> {
    use std::os::unix::ffi::OsStringExt;
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let sep = l.windows(3).position(|w| w == b" - ")?;
            let (head, tail) = (&l[..sep], &l[sep + 3..]);
            let mut h = head.split(|b| *b == b' ');
            let id = std::str::from_utf8(h.next()?).ok()?.parse().ok()?;
            let parent = std::str::from_utf8(h.next()?).ok()?.parse().ok()?;
            let dev = text(h.next()?);
            let root = text(&unescape(h.next()?));
            let target = PathBuf::from(std::ffi::OsString::from_vec(unescape(h.next()?)));
            let options = text(h.next()?);
            let optional = h.map(text).collect::<Vec<_>>().join(" ");
            let mut t = tail.split(|b| *b == b' ');
            let fstype = text(t.next()?);
            let source = text(&unescape(t.next()?));
            let super_options = t.next().map(text).unwrap_or_default();
            Some(Mounted {
                id,
                parent,
                dev,
                root,
                target,
                options,
                optional,
                fstype,
                source,
                super_options,
            })
        })
        .collect()
}

/// The mount now shown at `target` (the topmost one), if any.
fn top_at<'a>(table: &'a [Mounted], target: &Path) -> Option<&'a Mounted> {
    table.iter().rev().find(|m| m.target == target)
}

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
    fn staging_root(&self) -> PathBuf {
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
    fn peers_dirs(&self) -> PathBuf {
        self.run_dir.join("sftp-dirs")
    }
    /// The writable alias of a directory below `peers_root` (itself elsewhere).
    fn writable(&self, dir: &Path) -> PathBuf {
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
    fn staging_for(&self, w: &Wanted) -> PathBuf {
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
    fn staging_of(&self, m: &Mounted) -> Option<PathBuf> {
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
    fn release_staging(&self, staging: &Path) {
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
    fn abort_covered(&self, target: &Path) {
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

/// Unmounts exactly mount `m`: its path is resolved component by component following no
/// symlink (however long a tenant made it), and unmounted only when it still leads to the
/// mount with `m`'s ID (a tenant who renamed or swapped a directory on the way cannot
/// redirect the unmount).
pub fn unmount_exact(m: &Mounted) -> Result<(), String> {
    unmount_exact_with(m, rustix::mount::UnmountFlags::DETACH)
}

fn unmount_exact_with(m: &Mounted, flags: rustix::mount::UnmountFlags) -> Result<(), String> {
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
fn open_mount_path(target: &Path) -> Result<OwnedFd, String> {
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
fn unmount_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
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
fn abort_fuse(m: &Mounted) -> Result<(), String> {
    let minor = m
        .dev
        .split_once(':')
        .and_then(|(_, minor)| minor.parse::<u32>().ok())
        .ok_or_else(|| format!("device {:?} of {}", m.dev, m.target.display()))?;
    let conn = fuse_control()?.join(minor.to_string());
    std::fs::write(conn.join("abort"), b"1").map_err(|e| format!("{}: {e}", conn.display()))
}

/// `/sys/fs/fuse/connections`, mounted (fusectl) when it is not yet.
fn fuse_control() -> Result<&'static Path, String> {
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
fn clone_private(fd: BorrowedFd<'_>, staging: &Path) -> Result<(), String> {
    clone_private_with(fd, staging, false)
}

/// `clone_private`, read-only when `read_only`.
fn clone_private_with(fd: BorrowedFd<'_>, staging: &Path, read_only: bool) -> Result<(), String> {
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
static EXPORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `export`, into the directory `into` (the exports, or a peer's chroot, where a root sftp
/// session of that peer may have made anything: it is walked by descriptor).
fn export_into(
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

fn hex_of(p: &Path) -> String {
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
fn take_down(dirs: &MountDirs, c: &Mounted, exported: bool) -> Result<(), String> {
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
fn retire(dirs: &MountDirs, m: &Mounted) -> Result<Mounted, String> {
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
fn end_sftp_sessions_holding(dirs: &MountDirs, mount_id: u64) {
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

/// A relative path with no `..`, `.`, or root: a spec's `path` or `mountPath` as text, checked
/// before anything is resolved (the resolution itself is `beneath`'s).
pub fn safe_relative(p: &str) -> Result<PathBuf, String> {
    if p.is_empty() || p.contains('\0') {
        return Err(format!("{p:?} is not a path"));
    }
    let path: PathBuf = crate::beneath::components(Path::new(p))
        .map(|c| c.iter().collect())
        .map_err(|e| format!("{p:?} {}", e.reason))?;
    // The snapshot directory: read-only snapshots, and on OpenZFS a directory made in
    // `.zfs/snapshot` (by root, as the agent) is a snapshot, outside the project's quota.
    if path
        .components()
        .next()
        .is_some_and(|c| c.as_os_str() == ".zfs")
    {
        return Err(format!(
            "{p:?}: \".zfs\" is the snapshot directory, not a folder a mount may use"
        ));
    }
    Ok(path)
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .map_err(|_| format!("{program} did not finish within 30 s"))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs blocking file-system work off the async threads with a time limit: a path below a
/// dead FUSE mount must not stall the agent.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} does not answer (a hung mount?)")),
    }
}

/// What is at the target now.
enum AtTarget {
    /// A directory with nothing mounted on it.
    Free(OwnedFd),
    /// Our mount, from the wanted source.
    Current,
}

/// Resolves (creating it beneath the consumer's root when missing) the target directory of
/// `w`, and takes down a mount there that is not the wanted one.
fn prepare_target(
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
async fn mount_staged(
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
fn sshfs_source(w: &Wanted) -> Option<String> {
    w.remote.as_ref().map(|r| {
        let host = r.rsplit_once(':').map_or(r.as_str(), |(h, _)| h);
        format!("root@{host}:/{}", w.source_project.join(&w.path).display())
    })
}

/// bindfs of `lower` onto `top`, then the finished mount moved onto the target's descriptor.
async fn args_and_mount(
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
fn copy_source(source_root: &Path, path: &Path, lower: &Path) -> Result<(), String> {
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
async fn mount_remote(
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
async fn sshfs(opts: &str, src: &str, dir: &Path) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_must_stay_inside_the_project() {
        assert_eq!(safe_relative("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative("./a").unwrap(), PathBuf::from("a"));
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc",
            "a\0b",
            ".zfs",
            ".zfs/snapshot/x",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        assert!(
            safe_relative("a/.zfs").is_ok(),
            "only the dataset's own .zfs is special"
        );
    }

    #[test]
    fn the_mount_table_is_read_with_ids_options_and_escapes() {
        // Debian 12 (Linux 6.1): an sshfs staging mount and a bindfs mount in a project.
        let t = "612 27 0:58 / /run/p/mnt/ab/remote rw,nosuid,nodev,relatime,nosymfollow shared:300 - fuse.sshfs root@127.0.0.2:/ns/b/sub rw,user_id=0,group_id=0,allow_other\n\
                 613 43 0:59 / /p/ns/a/in\\040here rw,nosuid,nodev,relatime - fuse /a\\040b rw,user_id=0,group_id=0,default_permissions,allow_other\n";
        let mut bytes = t.as_bytes().to_vec();
        // A tenant's directory named with bytes that are not UTF-8 hides no other line.
        bytes.extend_from_slice(b"614 43 0:60 / /p/ns/a/\xff\xfe/m rw - fuse /x rw\n");
        let m = parse_mountinfo(&bytes);
        assert_eq!(m.len(), 3);
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(m[2].target.as_os_str().as_bytes(), b"/p/ns/a/\xff\xfe/m");
        assert_eq!(m[0].id, 612);
        assert_eq!(m[0].dev, "0:58");
        assert_eq!(m[0].source, "root@127.0.0.2:/ns/b/sub");
        assert_eq!(m[0].fstype, "fuse.sshfs");
        assert!(m[0].has_option("nosymfollow") && !m[1].has_option("nosymfollow"));
        assert_eq!(m[1].target, PathBuf::from("/p/ns/a/in here"));
        assert_eq!(m[1].source, "/a b");
        assert_eq!(m[1].root, "/");
    }
}

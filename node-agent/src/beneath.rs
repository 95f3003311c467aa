//! Paths a tenant can shape, resolved beneath their project's root by file descriptor
//! (DESIGN §5.7, invariant 6).
//!
//! Every component is opened with `openat2` relative to the directory opened before it,
//! following no symlink and crossing into no other mount, and the result is held as a
//! descriptor: what was checked is what is then used, whatever the tenant renames or swaps
//! in between. A path that would leave the project is refused with the component named.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a path was not resolved beneath its root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?}: {reason}")]
pub struct BeneathError {
    /// The path as far as it was resolved, ending at the offending component.
    pub path: String,
    pub reason: String,
}

impl BeneathError {
    fn at(done: &Path, reason: impl Into<String>) -> Self {
        Self {
            path: done.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Opening a component: `RESOLVE_NO_SYMLINKS` refuses a symlink with `ELOOP` (not the
/// `ENOTDIR` that `O_NOFOLLOW | O_DIRECTORY` would give), so the message can say what it is.
const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

fn strict() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

fn why(e: Errno) -> String {
    match e {
        Errno::LOOP => "is a symbolic link: paths inside a project follow no symlink".into(),
        Errno::NOTDIR => "is not a directory".into(),
        Errno::XDEV => "is another filesystem mounted inside the project".into(),
        Errno::NOENT => "does not exist".into(),
        Errno::ACCESS | Errno::PERM => "is not accessible".into(),
        other => other.to_string(),
    }
}

/// Opens an agent-controlled directory (a project's mountpoint, a staging directory) as the
/// root that tenant paths are resolved beneath; a symlink in its last component is refused.
pub fn open_root(path: &Path) -> Result<OwnedFd, BeneathError> {
    rustix::fs::open(path, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| BeneathError::at(path, why(e)))
}

/// The normal components of a relative path; `..`, absolute paths and NUL are refused.
pub fn components(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, BeneathError> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) if !n.as_encoded_bytes().contains(&0) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(BeneathError::at(
                    rel,
                    "must stay inside the project (no `..`, not absolute)",
                ));
            }
        }
    }
    Ok(out)
}

fn step(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    loop {
        match rustix::fs::openat2(dir, name, DIR_FLAGS, Mode::empty(), resolve) {
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Resolves the directory `rel` beneath `root`; every component must be a real directory of
/// the same filesystem.
pub fn open_dir(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, BeneathError> {
    let mut cur = dup(root, rel)?;
    let mut done = PathBuf::new();
    for name in components(rel)? {
        done.push(name);
        cur = step(cur.as_fd(), name, strict()).map_err(|e| BeneathError::at(&done, why(e)))?;
    }
    Ok(cur)
}

/// Like [`open_dir`], but the last component may be the root of a mount (one this agent made
/// there): returns the parent and the last component.
pub fn open_mount_point(
    root: BorrowedFd<'_>,
    rel: &Path,
) -> Result<(OwnedFd, OwnedFd), BeneathError> {
    let names = components(rel)?;
    let Some((last, parents)) = names.split_last() else {
        return Err(BeneathError::at(rel, "is the project's root itself"));
    };
    let parent = open_dir(root, &parents.iter().collect::<PathBuf>())?;
    let resolve = strict() - ResolveFlags::NO_XDEV;
    let fd = step(parent.as_fd(), last, resolve).map_err(|e| BeneathError::at(rel, why(e)))?;
    Ok((parent, fd))
}

/// Resolves `rel` beneath `root`, creating the directories that are missing (mode 0755,
/// given to `owner`), each created and then opened relative to its parent's descriptor.
pub fn ensure_dir(
    root: BorrowedFd<'_>,
    rel: &Path,
    owner: (u32, u32),
) -> Result<OwnedFd, BeneathError> {
    let mut cur = dup(root, rel)?;
    let mut done = PathBuf::new();
    for name in components(rel)? {
        done.push(name);
        let next = match step(cur.as_fd(), name, strict()) {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(cur.as_fd(), name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(BeneathError::at(&done, format!("cannot create: {e}"))),
                }
                let made = step(cur.as_fd(), name, strict())
                    .map_err(|e| BeneathError::at(&done, why(e)))?;
                chown_fd(made.as_fd(), owner)
                    .map_err(|e| BeneathError::at(&done, format!("cannot chown: {e}")))?;
                made
            }
            other => other.map_err(|e| BeneathError::at(&done, why(e)))?,
        };
        cur = next;
    }
    Ok(cur)
}

fn dup(fd: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, BeneathError> {
    fd.try_clone_to_owned()
        .map_err(|e| BeneathError::at(rel, format!("cannot duplicate the root: {e}")))
}

/// Gives the file or directory held by `fd` (also an `O_PATH` descriptor) to `owner`.
pub fn chown_fd(fd: BorrowedFd<'_>, owner: (u32, u32)) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        fd,
        "",
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
        AtFlags::EMPTY_PATH,
    )
}

/// The ID of the mount that `fd` lies on (as in `/proc/self/mountinfo`), read from
/// `/proc/self/fdinfo`: unlike `statx`, it asks nothing of the filesystem, so a hung FUSE
/// mount (a tenant can block a single-threaded one) cannot hang the agent here.
pub fn mount_id(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id in fdinfo"))
}

/// Opens the directory at the absolute path `abs` (as `/proc/self/mountinfo` names a mount
/// point) one component at a time from `/`, following no symlink: a path longer than
/// `PATH_MAX` still resolves, and a symlink swapped in anywhere makes it fail.
pub fn open_absolute(abs: &Path) -> Result<OwnedFd, BeneathError> {
    open_absolute_checked(abs, |_| Ok(()))
}

/// `open_absolute`, asking `may_look_in` before each lookup whether the directory reached so
/// far may be looked in (a lookup on a FUSE filesystem is a request its daemon may never
/// answer); a refusal ends the walk with its reason.
pub fn open_absolute_checked(
    abs: &Path,
    may_look_in: impl Fn(BorrowedFd<'_>) -> Result<(), &'static str>,
) -> Result<OwnedFd, BeneathError> {
    let rel = abs
        .strip_prefix("/")
        .map_err(|_| BeneathError::at(abs, "is not an absolute path"))?;
    let mut cur = open_root(Path::new("/"))?;
    let mut done = PathBuf::from("/");
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    for name in components(rel)? {
        may_look_in(cur.as_fd()).map_err(|reason| BeneathError::at(&done, reason))?;
        done.push(name);
        cur = step(cur.as_fd(), name, resolve).map_err(|e| BeneathError::at(&done, why(e)))?;
    }
    Ok(cur)
}

/// A path naming what `fd` holds, for programs and syscalls that take paths: the kernel
/// resolves it to the held file itself, not to whatever its former name points at now.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("p/a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../../outside", t.path().join("p/a/esc")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("p/etc")).unwrap();
        std::os::unix::fs::symlink("b", t.path().join("p/a/inner")).unwrap();
        std::fs::write(t.path().join("p/file"), b"x").unwrap();
        let root = open_root(&t.path().join("p")).unwrap();
        (t, root)
    }

    #[test]
    fn directories_beneath_the_root_resolve() {
        let (_t, root) = tree();
        assert!(open_dir(root.as_fd(), Path::new("a/b")).is_ok());
        assert!(open_dir(root.as_fd(), Path::new("./a")).is_ok());
    }

    #[test]
    fn a_symlink_at_any_component_is_refused_and_named() {
        let (_t, root) = tree();
        for (rel, named) in [
            ("etc", "etc"),
            ("etc/ssh", "etc"),
            ("a/esc", "a/esc"),
            ("a/esc/x", "a/esc"),
            ("a/inner", "a/inner"),
        ] {
            let e = open_dir(root.as_fd(), Path::new(rel)).unwrap_err();
            assert_eq!(e.path, named, "{rel}");
            assert!(e.reason.contains("symbolic link"), "{rel}: {e}");
        }
    }

    #[test]
    fn dotdot_absolute_files_and_missing_paths_are_refused() {
        let (_t, root) = tree();
        for rel in ["../p", "a/../..", "/etc"] {
            assert!(open_dir(root.as_fd(), Path::new(rel)).is_err(), "{rel}");
        }
        let e = open_dir(root.as_fd(), Path::new("file")).unwrap_err();
        assert!(e.reason.contains("not a directory"), "{e}");
        let e = open_dir(root.as_fd(), Path::new("a/none")).unwrap_err();
        assert!(e.reason.contains("does not exist"), "{e}");
    }

    #[test]
    fn missing_directories_are_created_beneath_and_never_through_a_symlink() {
        let (t, root) = tree();
        ensure_dir(root.as_fd(), Path::new("a/new/deeper"), (0, 0)).unwrap();
        assert!(t.path().join("p/a/new/deeper").is_dir());
        let e = ensure_dir(root.as_fd(), Path::new("a/esc/made"), (0, 0)).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        assert!(!t.path().join("outside/made").exists());
        let e = ensure_dir(root.as_fd(), Path::new("etc/made"), (0, 0)).unwrap_err();
        assert_eq!(e.path, "etc");
    }

    #[test]
    fn a_descriptor_keeps_naming_the_directory_it_resolved_after_a_swap() {
        let (t, root) = tree();
        let fd = open_dir(root.as_fd(), Path::new("a/b")).unwrap();
        std::fs::rename(t.path().join("p/a/b"), t.path().join("p/a/moved")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("p/a/b")).unwrap();
        let seen = std::fs::read_link(fd_path(fd.as_fd())).unwrap();
        assert_eq!(seen, t.path().join("p/a/moved"));
    }
}

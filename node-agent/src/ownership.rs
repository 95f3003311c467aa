//! Ownership repair (DESIGN §1, `projstore.io/repair-ownership`): every entry of a project
//! given to its owner.
//!
//! The walk goes by directory descriptor: each entry is looked at and changed relative to
//! its opened parent (`fstatat`/`fchownat` with `AT_SYMLINK_NOFOLLOW`), directories are
//! opened with `O_NOFOLLOW` and must stay on the project's filesystem, so a tenant renaming
//! or swapping entries while it runs can neither redirect it outside the project nor stop
//! it: what fails is reported and the rest of the pass goes on.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid};

/// What one repair pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Entries whose owner was changed.
    pub changed: u64,
    /// Entries that could not be looked at or changed, each with the reason.
    pub failed: Vec<String>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Gives everything below the directory `root` (and `root` itself) to `uid:gid`, staying on
/// its filesystem (mounts inside are other projects' folders) and skipping `root/.zfs`.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<Repaired, String> {
    let top = rustix::fs::open(root, DIR_FLAGS, Mode::empty())
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let dev = rustix::fs::fstat(&top)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .st_dev;
    let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mut out = Repaired::default();
    let top = Rc::new(top);
    // Directories still to read: the opened parent and the name, opened when their turn comes.
    let mut todo: Vec<(Rc<OwnedFd>, CString, PathBuf)> = Vec::new();
    let read = |dir: &Rc<OwnedFd>,
                shown: &Path,
                out: &mut Repaired,
                todo: &mut Vec<(Rc<OwnedFd>, CString, PathBuf)>| {
        let entries = match Dir::read_from(dir.as_fd()) {
            Ok(d) => d,
            Err(e) => return out.failed.push(format!("{}: {e}", shown.display())),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.failed.push(format!("{}: {e}", shown.display()));
                    break;
                }
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." || (Rc::ptr_eq(dir, &top) && bytes == b".zfs") {
                continue;
            }
            let path = shown.join(String::from_utf8_lossy(bytes).as_ref());
            let st = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    out.failed.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if st.st_dev != dev {
                continue; // a mount inside the project (another project's folder)
            }
            if (st.st_uid, st.st_gid) != (uid, gid) {
                match rustix::fs::chownat(
                    dir.as_fd(),
                    name,
                    owner,
                    group,
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(()) => out.changed += 1,
                    Err(e) => out.failed.push(format!("{}: {e}", path.display())),
                }
            }
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                todo.push((dir.clone(), name.to_owned(), path));
            }
        }
    };
    read(&top, root, &mut out, &mut todo);
    while let Some((parent, name, shown)) = todo.pop() {
        let dir =
            match rustix::fs::openat(parent.as_fd(), name.as_c_str(), DIR_FLAGS, Mode::empty()) {
                Ok(d) => d,
                // Swapped for a symlink or a file since it was listed: nothing to follow there.
                Err(e) => {
                    out.failed.push(format!("{}: {e}", shown.display()));
                    continue;
                }
            };
        drop(parent);
        match rustix::fs::fstat(&dir) {
            Ok(st) if st.st_dev == dev => read(&Rc::new(dir), &shown, &mut out, &mut todo),
            Ok(_) => {} // became a mount point meanwhile
            Err(e) => out.failed.push(format!("{}: {e}", shown.display())),
        }
    }
    rustix::fs::fchown(top.as_fd(), owner, group)
        .map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn everything_inside_is_given_to_the_owner_and_nothing_a_symlink_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("p");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".zfs/snapshot")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.join("link-file")).unwrap();

        let done = chown_tree(&root, 4242, 4343).unwrap();
        assert!(done.failed.is_empty(), "{:?}", done.failed);
        for p in ["", "a", "a/b", "a/b/f"] {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
        }
        // The links themselves change hands; what they name does not.
        let l = std::fs::symlink_metadata(root.join("link-file")).unwrap();
        assert_eq!(l.uid(), 4242);
        for p in [&outside, &outside.join("victim"), &root.join(".zfs")] {
            assert_eq!(
                std::fs::symlink_metadata(p).unwrap().uid(),
                0,
                "{}",
                p.display()
            );
        }
    }
}

//! The mount table as the kernel shows it (`/proc/self/mountinfo`): what is mounted where,
//! by mount ID, read afresh each time, so a restarted agent needs no state of its own.

use super::*;

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
    pub(super) fn has_option(&self, o: &str) -> bool {
        self.options.split(',').any(|x| x == o)
    }
    /// A FUSE mount made by root, of the kinds the agent makes (bindfs, sshfs): a tenant's
    /// own FUSE mount (fusermount) carries the tenant's `user_id`, zfs-fuse is `fuse.zfs`.
    pub fn is_root_fuse(&self) -> bool {
        matches!(self.fstype.as_str(), "fuse" | "fuse.sshfs")
            && self.super_options.split(',').any(|o| o == "user_id=0")
    }
    pub(super) fn is_shared(&self) -> bool {
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

pub(super) fn unescape(s: &[u8]) -> Vec<u8> {
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

pub(super) fn text(b: &[u8]) -> String {
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
pub(super) fn top_at<'a>(table: &'a [Mounted], target: &Path) -> Option<&'a Mounted> {
    table.iter().rev().find(|m| m.target == target)
}

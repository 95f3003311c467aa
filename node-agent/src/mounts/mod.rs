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

mod dirs;
mod ensure;
mod export;
mod kernel;
mod release;
mod table;

pub use dirs::*;
pub use ensure::*;
pub use export::*;
pub use kernel::*;
pub use release::*;
pub use table::*;

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

pub(super) async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
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
pub(super) async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} does not answer (a hung mount?)")),
    }
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

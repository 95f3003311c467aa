//! The ZFS driver: typed operations over the `zfs` and `zpool` command-line tools.
//!
//! Every command runs from an argument vector (never a shell) built only from validated names
//! ([`names`]), with `LC_ALL=C` so messages can be classified ([`ZfsError::classify`]).
//! Outcomes are checked after the fact where an implementation may report success without
//! doing the work.

pub mod caps;
mod dataset;
pub mod error;
pub mod keys;
pub mod names;
pub mod parse;
mod pipe;
mod pool;
pub mod resume;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

pub use caps::{Capabilities, Implementation};
pub use dataset::{Created, Destroyed};
pub use error::ZfsError;
pub use names::{DatasetName, HoldTag, NameError, PoolName, PropertyName, SnapshotName};
pub use parse::{PoolRow, SnapshotInfo};
pub use pipe::{Progress, RecvOptions, Recycled, SendFlags};
pub use pool::{Capacity, Imported, Vdev, parse_status_vdevs};
pub use resume::ResumeToken;

/// A handle on the host's ZFS: the binaries to run and what they can do.
#[derive(Debug, Clone)]
pub struct Zfs {
    zfs: PathBuf,
    zpool: PathBuf,
    caps: Capabilities,
}

impl Zfs {
    /// Finds `zfs`/`zpool` on the PATH and detects what they can do.
    pub async fn detect() -> Result<Self, ZfsError> {
        Self::with_binaries(PathBuf::from("zfs"), PathBuf::from("zpool")).await
    }

    /// Uses the given binaries (e.g. the host's userland mounted into a container).
    pub async fn with_binaries(zfs: PathBuf, zpool: PathBuf) -> Result<Self, ZfsError> {
        let probe = |program: &PathBuf, args: &[&str]| {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .kill_on_drop(true);
            cmd.output()
        };
        let spawn_err = |program: &PathBuf, source| ZfsError::Spawn {
            what: "detect ZFS".into(),
            program: program.display().to_string(),
            source,
        };
        let version = probe(&zfs, &["version"])
            .await
            .map_err(|e| spawn_err(&zfs, e))?;
        let version = version
            .status
            .success()
            .then(|| String::from_utf8_lossy(&version.stdout).into_owned());
        let upgrade = probe(&zpool, &["upgrade", "-v"])
            .await
            .map_err(|e| spawn_err(&zpool, e))?;
        let upgrade_out = String::from_utf8_lossy(&upgrade.stdout).into_owned();
        if !upgrade.status.success() {
            return Err(ZfsError::classify(
                "zpool upgrade -v",
                &String::from_utf8_lossy(&upgrade.stderr),
            ));
        }
        // A get of an unknown property prints the usage table with the accepted values.
        let usage = probe(&zfs, &["get", "projstore-probe-no-such-property"])
            .await
            .map_err(|e| spawn_err(&zfs, e))?;
        let usage_text = String::from_utf8_lossy(&usage.stderr).into_owned();
        let caps = Capabilities::from_outputs(version.as_deref(), &upgrade_out, &usage_text)
            .ok_or_else(|| ZfsError::Parse {
                what: "detect ZFS".into(),
                detail: format!("unrecognised `zpool upgrade -v` output: {upgrade_out:?}"),
            })?;
        // zfs-fuse answers `zpool upgrade -v` without its daemon; make sure the library works.
        let check = probe(&zpool, &["list", "-H", "-o", "name"])
            .await
            .map_err(|e| spawn_err(&zpool, e))?;
        if !check.status.success() {
            return Err(ZfsError::classify(
                "zpool list",
                &String::from_utf8_lossy(&check.stderr),
            ));
        }
        Ok(Self { zfs, zpool, caps })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Runs `zfs ARGS`, returning stdout; a non-zero exit is classified from stderr.
    async fn zfs(&self, what: &str, args: Vec<OsString>) -> Result<String, ZfsError> {
        let _lock = self.mount_lock(what, Tool::Zfs, &args).await?;
        run(what, &self.zfs, args).await
    }

    /// Runs `zpool ARGS`, returning stdout.
    async fn zpool(&self, what: &str, args: Vec<OsString>) -> Result<String, ZfsError> {
        let _lock = self.mount_lock(what, Tool::Zpool, &args).await?;
        run(what, &self.zpool, args).await
    }

    /// On zfs-fuse, the machine-wide mount lock while a command that may mount runs (None
    /// elsewhere, or when the command mounts nothing). See [`MOUNT_LOCK`].
    async fn mount_lock(
        &self,
        what: &str,
        tool: Tool,
        args: &[OsString],
    ) -> Result<Option<std::fs::File>, ZfsError> {
        if self.caps.implementation != caps::Implementation::ZfsFuse || !may_mount(tool, args) {
            return Ok(None);
        }
        lock_mounts()
            .await
            .map(Some)
            .map_err(|source| ZfsError::Io {
                what: format!("{what}: lock {MOUNT_LOCK}"),
                source,
            })
    }
}

/// zfs-fuse hands each new mount to its FUSE listener with two unlocked writes into one pipe:
/// two mounts at once (from any process) can interleave them, after which the listener waits
/// forever for a garbage length while holding its lock, and no FUSE request of any pool is
/// served again. Every command that may mount takes this file lock (`flock`) first, on this
/// machine, whichever process runs it. OpenZFS needs none.
pub const MOUNT_LOCK: &str = "/run/projstore-zfs-fuse-mount.lock";

/// Takes [`MOUNT_LOCK`]; held until the returned file is dropped.
pub async fn lock_mounts() -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(lock_mounts_blocking)
        .await
        .map_err(std::io::Error::other)?
}

/// [`lock_mounts`] for callers outside an async runtime (test tools).
pub fn lock_mounts_blocking() -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MOUNT_LOCK)?;
    f.lock()?;
    Ok(f)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Zfs,
    Zpool,
}

/// [`may_mount`] for a command line given as strings (`program` is `zfs` or `zpool`), for
/// tools that run those commands themselves.
pub fn command_may_mount(program: &str, args: &[&str]) -> bool {
    let tool = match program {
        "zfs" => Tool::Zfs,
        "zpool" => Tool::Zpool,
        _ => return false,
    };
    may_mount(tool, &args.iter().map(OsString::from).collect::<Vec<_>>())
}

/// Whether `zfs`/`zpool` with these arguments may mount a filesystem.
fn may_mount(tool: Tool, args: &[OsString]) -> bool {
    let arg = |s: &str| args.iter().any(|a| a == s);
    let mount_property = args.iter().any(|a| {
        let a = a.to_string_lossy();
        ["mountpoint", "canmount"]
            .iter()
            .any(|p| a == *p || a.starts_with(&format!("{p}=")))
    });
    let sub = args
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    match tool {
        Tool::Zpool => matches!(sub.as_ref(), "create" | "import"),
        Tool::Zfs => match sub.as_ref() {
            "create" | "mount" | "clone" | "rename" | "promote" | "rollback" => true,
            "recv" | "receive" => !arg("-u"),
            "set" | "inherit" => mount_property,
            _ => false,
        },
    }
}

/// Runs `program ARGS` to its end (no shell, C locale), whatever its exit status.
async fn output(
    what: &str,
    program: &PathBuf,
    args: Vec<OsString>,
) -> Result<std::process::Output, ZfsError> {
    tracing::debug!(program = %program.display(), ?args, "exec");
    Command::new(program)
        .args(&args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ZfsError::Spawn {
            what: what.into(),
            program: program.display().to_string(),
            source,
        })
}

async fn run(what: &str, program: &PathBuf, args: Vec<OsString>) -> Result<String, ZfsError> {
    let out = output(what, program, args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = if stderr.trim().is_empty() {
            format!("exit status {}", out.status)
        } else {
            stderr.into_owned()
        };
        Err(ZfsError::classify(what, &stderr))
    }
}

/// Appends `flag name=value` for each property, checking every value first (a value is data
/// to ZFS, but a newline would break `-H` output and a leading `-` reads like an option).
fn push_props(
    a: &mut Vec<OsString>,
    flag: &str,
    props: &[(PropertyName, String)],
    what: &str,
) -> Result<(), ZfsError> {
    for (name, value) in props {
        names::check_property_value(value).map_err(ZfsError::invalid_name(what))?;
        a.push(flag.into());
        a.push(format!("{}={value}", name.as_str()).into());
    }
    Ok(())
}

/// Builds an argument vector from anything string-like.
fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn commands_that_may_mount_are_told_apart() {
        for a in [
            &["create", "-p", "p/a"][..],
            &["mount", "p/a"],
            &["rename", "p/a", "p/b"],
            &["recv", "p/a"],
            &["set", "mountpoint=/x", "p/a"],
            &["set", "canmount=on", "p/a"],
            &["inherit", "mountpoint", "p/a"],
        ] {
            assert!(may_mount(Tool::Zfs, &v(a)), "{a:?}");
        }
        for a in [
            &["get", "-Hp", "mountpoint", "p/a"][..],
            &["recv", "-u", "p/a"],
            &["set", "refquota=1G", "p/a"],
            &["snapshot", "p/a@s"],
            &["destroy", "-r", "p/a"],
            &["unmount", "p/a"],
        ] {
            assert!(!may_mount(Tool::Zfs, &v(a)), "{a:?}");
        }
        assert!(may_mount(Tool::Zpool, &v(&["create", "p", "/img"])));
        assert!(may_mount(Tool::Zpool, &v(&["import", "-d", "/d", "p"])));
        assert!(!may_mount(Tool::Zpool, &v(&["list", "-H"])));
    }
}

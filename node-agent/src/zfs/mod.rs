//! The ZFS driver: typed operations over the `zfs` and `zpool` command-line tools.
//!
//! Every command runs from an argument vector (never a shell) built only from validated names
//! ([`names`]), with `LC_ALL=C` so messages can be classified ([`ZfsError::classify`]).
//! Outcomes are checked after the fact where an implementation may report success without
//! doing the work.

pub mod caps;
mod dataset;
pub mod error;
pub mod names;
pub mod parse;
mod pipe;
mod pool;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

pub use caps::{Capabilities, Implementation};
pub use dataset::{Created, Destroyed};
pub use error::ZfsError;
pub use names::{DatasetName, HoldTag, NameError, PoolName, PropertyName, SnapshotName};
pub use parse::{PoolRow, SnapshotInfo};
pub use pipe::{Progress, RecvOptions};
pub use pool::{Capacity, Imported, Vdev, parse_status_vdevs};

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
        run(what, &self.zfs, args).await
    }

    /// Runs `zpool ARGS`, returning stdout.
    async fn zpool(&self, what: &str, args: Vec<OsString>) -> Result<String, ZfsError> {
        run(what, &self.zpool, args).await
    }
}

async fn run(what: &str, program: &PathBuf, args: Vec<OsString>) -> Result<String, ZfsError> {
    tracing::debug!(program = %program.display(), ?args, "exec");
    let out = Command::new(program)
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
        })?;
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
        names::check_property_value(value).map_err(|source| ZfsError::InvalidName {
            what: what.to_owned(),
            source,
        })?;
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

//! The dev hosts, as scenarios reach into them: pools, stream stores, mounts, and `zfs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use projstore_e2e::dev::Host;

use super::Cluster;

impl Cluster {
    /// The host serving pool `pool` (a StoragePool name).
    pub fn host_of_pool(&self, pool: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| format!("{}-storage", h.node) == pool)
            .expect("a dev host")
    }

    /// A dev host's stream store: one directory per namespace and project below it.
    pub fn streams_dir(&self, h: &Host) -> PathBuf {
        self.dir
            .join("hosts")
            .join(&h.node)
            .join("streams")
            .join(&h.pool)
    }

    /// Waits until nothing is mounted strictly below any of `dirs` (they themselves may be
    /// mount points).
    pub async fn wait_no_mounts_below(&self, what: &str, dirs: &[&Path], limit: Duration) {
        self.wait(what, limit, || async {
            let left: Vec<_> = projstore_agent::mounts::mount_table()
                .into_iter()
                .map(|m| m.target)
                .filter(|t| dirs.iter().any(|d| t.starts_with(d) && t.as_path() != *d))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await
    }
}

/// Runs a program (never through a shell) and returns its stdout; panics on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    // A test's own `zfs`/`zpool` changes take zfs-fuse's mount lock like the agents' do.
    let _lock = projstore_agent::zfs::command_may_mount(program, args)
        .then(|| projstore_agent::zfs::lock_mounts_blocking().unwrap());
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of `fs` (`trash`, `recv`, …) and every dataset below it in a host's pool, one a
/// line.
pub fn datasets_below(h: &Host, fs: &str) -> String {
    run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-r",
            &format!("{}/{fs}", h.pool),
        ],
    )
}

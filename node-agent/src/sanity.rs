//! Start-up sanity checks (DESIGN §5.8): an agent refuses to serve — no receives, no mounts —
//! until ZFS works, its pools are imported and their filesystems are really mounted. A host
//! once received replicas into an unmounted directory; these checks exist so it never again
//! writes into an empty directory where a filesystem should be.

use std::path::{Path, PathBuf};

use crate::layout::PoolLayout;
use crate::zfs::{DatasetName, Zfs};

/// One mount of `/proc/self/mountinfo` (one parser for the agent: `mounts`).
pub type Mount = crate::mounts::Mounted;

/// Parses `/proc/self/mountinfo` (octal escapes in paths are decoded).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    crate::mounts::parse_mountinfo(text.as_bytes())
}

/// Whether `dataset` is mounted at `path` as a ZFS filesystem (kernel or FUSE).
pub fn is_zfs_mount(mounts: &[Mount], path: &Path, dataset: &DatasetName) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| m.target == path)
        .is_some_and(|m| {
            matches!(m.fstype.as_str(), "zfs" | "fuse.zfs" | "fuse.zfs-fuse")
                && m.source == dataset.as_str()
        })
}

/// The result of one check, with what to do when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// All checks for the pools this agent serves; every check runs, so the report is complete.
pub async fn run_checks(
    zfs: Option<&Zfs>,
    pools: &[(PoolLayout, PathBuf)],
    projects_root: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(zfs) = zfs else {
        checks.push(Check {
            name: "zfs".into(),
            ok: false,
            detail: "zfs/zpool do not work: install ZFS (or start zfs-fuse) on this host".into(),
        });
        return checks;
    };
    checks.push(Check {
        name: "zfs".into(),
        ok: true,
        detail: format!(
            "{} {}",
            zfs.capabilities().implementation.as_str(),
            zfs.capabilities().version.clone().unwrap_or_default()
        ),
    });
    let mounts = crate::mounts::mount_table();
    let root_ok = projects_root.is_dir();
    checks.push(Check {
        name: "projects-root".into(),
        ok: root_ok,
        detail: if root_ok {
            format!("{} exists", projects_root.display())
        } else {
            format!(
                "{} is missing: create it (the agent mounts projects below it)",
                projects_root.display()
            )
        },
    });
    for (layout, streams_mp) in pools {
        let pool = layout.pool();
        match zfs.pool_info(pool).await {
            Ok(row) => checks.push(Check {
                name: format!("pool {pool}"),
                ok: true,
                detail: format!("imported, {}", row.health),
            }),
            Err(e) => {
                checks.push(Check {
                    name: format!("pool {pool}"),
                    ok: false,
                    detail: format!("{e}: import it (zpool import) or fix its devices"),
                });
                continue;
            }
        }
        for ds in [layout.projects(), layout.streams()].into_iter().flatten() {
            let exists = zfs.exists(&ds).await.unwrap_or(false);
            checks.push(Check {
                name: format!("filesystem {ds}"),
                ok: exists,
                detail: if exists {
                    "exists".into()
                } else {
                    "missing: the agent creates it when it manages the pool".into()
                },
            });
        }
        if let Ok(streams) = layout.streams() {
            let mounted = is_zfs_mount(&mounts, streams_mp, &streams);
            checks.push(Check {
                name: format!("mount {}", streams_mp.display()),
                ok: mounted,
                detail: if mounted {
                    format!("{streams} is mounted there")
                } else {
                    format!("{streams} is not mounted at {}: nothing is received into a plain directory; run `zfs mount {streams}`", streams_mp.display())
                },
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_of_zfs_fuse_and_kernel_zfs() {
        let text = "42 27 0:39 / /tmp/mi-mnt rw,relatime - fuse.zfs pmi/x rw,user_id=0\n\
                    50 27 0:50 / /projects/with\\040space rw shared:1 - zfs tank/projects/a rw,xattr\n\
                    22 1 8:1 / / rw - ext4 /dev/vda rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert!(is_zfs_mount(
            &m,
            Path::new("/tmp/mi-mnt"),
            &DatasetName::parse("pmi/x").unwrap()
        ));
        assert!(is_zfs_mount(
            &m,
            Path::new("/projects/with space"),
            &DatasetName::parse("tank/projects/a").unwrap()
        ));
        assert!(
            !is_zfs_mount(
                &m,
                Path::new("/tmp/mi-mnt"),
                &DatasetName::parse("pmi/y").unwrap()
            ),
            "another dataset"
        );
        assert!(
            !is_zfs_mount(
                &m,
                Path::new("/tmp/other"),
                &DatasetName::parse("pmi/x").unwrap()
            ),
            "not mounted"
        );
    }
}

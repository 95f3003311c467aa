//! Pool operations: create (devices or sparse image files), import, export, grow, capacity.

use std::path::{Path, PathBuf};

use super::names::{NameError, PoolName, PropertyName};
use super::parse::{self, PoolRow};
use super::{Zfs, ZfsError, args, push_props};

/// A vdev: a block device or an image file, created sparse with `create_size` when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vdev {
    path: PathBuf,
    create_size: Option<u64>,
}

impl Vdev {
    /// Validates `path` (absolute, normalised, no `..`, no odd characters).
    pub fn new(path: &str, create_size: Option<u64>) -> Result<Self, NameError> {
        if !projstore_api::names::is_absolute_path(path) {
            return Err(NameError {
                what: "vdev path",
                value: path.escape_debug().to_string(),
                reason: "must be an absolute, normalised path without '..' or special characters",
            });
        }
        Ok(Self {
            path: PathBuf::from(path),
            create_size,
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the image file sparse if it does not exist and a size was given.
    async fn ensure_exists(&self) -> Result<(), ZfsError> {
        let what = || format!("create image file {}", self.path.display());
        match (tokio::fs::metadata(&self.path).await, self.create_size) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(size)) => {
                if let Some(dir) = self.path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|source| ZfsError::Io {
                            what: what(),
                            source,
                        })?;
                }
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&self.path)
                    .await
                    .map_err(|source| ZfsError::Io {
                        what: what(),
                        source,
                    })?;
                f.set_len(size).await.map_err(|source| ZfsError::Io {
                    what: what(),
                    source,
                })?;
                Ok(())
            }
            (Err(e), None) => Err(ZfsError::NotFound {
                what: format!("vdev {}", self.path.display()),
                stderr: format!("{e}; give sizeBytes to create an image file"),
            }),
        }
    }
}

/// Space and health of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Raw pool size (approximate on zfs-fuse, which prints only human units).
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    /// Bytes datasets can still use (exact; what placement should count on).
    pub available: u64,
    /// Bytes used by all datasets (exact).
    pub used: u64,
    pub health: String,
}

/// Whether an import found the pool already imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Now,
    Already,
}

impl Zfs {
    /// Creates `pool` on `vdevs` with filesystem properties `props` on its root (not mounted:
    /// `-m none`). Image files are created sparse first. Never forces: a device that holds
    /// another pool's label is an error to resolve by hand.
    pub async fn pool_create(
        &self,
        pool: &PoolName,
        vdevs: &[Vdev],
        props: &[(PropertyName, String)],
    ) -> Result<(), ZfsError> {
        let what = format!("create pool {pool}");
        if vdevs.is_empty() {
            return Err(ZfsError::Other {
                what,
                stderr: "no vdevs given".into(),
            });
        }
        for v in vdevs {
            v.ensure_exists().await?;
        }
        let mut a = args(["create", "-m", "none"]);
        push_props(&mut a, "-O", props, &what)?;
        a.push(pool.as_str().into());
        a.extend(vdevs.iter().map(|v| v.path.clone().into_os_string()));
        self.zpool(&what, a).await?;
        if self.pool_info(pool).await.is_err() {
            return Err(ZfsError::Unverified {
                what,
                problem: "the pool is not listed afterwards".into(),
            });
        }
        Ok(())
    }

    /// Imports `pool`, searching `dirs` for image files (and the default device paths when
    /// `dirs` is empty). `force` only when the spec asks: importing a pool another live host
    /// uses corrupts it.
    pub async fn pool_import(
        &self,
        pool: &PoolName,
        dirs: &[PathBuf],
        force: bool,
    ) -> Result<Imported, ZfsError> {
        if self.pool_info(pool).await.is_ok() {
            return Ok(Imported::Already);
        }
        let what = format!("import pool {pool}");
        let mut a = args(["import"]);
        for d in dirs {
            a.push("-d".into());
            a.push(d.clone().into_os_string());
        }
        if force {
            a.push("-f".into());
        }
        a.push(pool.as_str().into());
        self.zpool(&what, a).await?;
        self.pool_info(pool)
            .await
            .map(|_| Imported::Now)
            .map_err(|_| ZfsError::Unverified {
                what,
                problem: "the pool is not listed afterwards".into(),
            })
    }

    /// Exports `pool` (unmounts its datasets first; fails when they are busy).
    pub async fn pool_export(&self, pool: &PoolName) -> Result<(), ZfsError> {
        let what = format!("export pool {pool}");
        self.zpool(&what, args(["export", pool.as_str()])).await?;
        if self.pool_info(pool).await.is_ok() {
            return Err(ZfsError::Unverified {
                what,
                problem: "the pool is still imported".into(),
            });
        }
        Ok(())
    }

    /// Grows `pool` by one vdev (created sparse first when it is an image file to create).
    /// Adding a vdev the pool already has is a no-op.
    pub async fn pool_add(&self, pool: &PoolName, vdev: &Vdev) -> Result<(), ZfsError> {
        let what = format!("add {} to pool {pool}", vdev.path.display());
        if self
            .pool_vdevs(pool)
            .await?
            .iter()
            .any(|p| Path::new(p) == vdev.path)
        {
            return Ok(());
        }
        vdev.ensure_exists().await?;
        let mut a = args(["add", pool.as_str()]);
        a.push(vdev.path.clone().into_os_string());
        self.zpool(&what, a).await?;
        if !self
            .pool_vdevs(pool)
            .await?
            .iter()
            .any(|p| Path::new(p) == vdev.path)
        {
            return Err(ZfsError::Unverified {
                what,
                problem: "the vdev is not in `zpool status` afterwards".into(),
            });
        }
        Ok(())
    }

    /// Every imported pool.
    pub async fn pool_list(&self) -> Result<Vec<PoolRow>, ZfsError> {
        let mut a = args(["list", "-H"]);
        if self.caps.parsable_list {
            a.push("-p".into());
        }
        a.extend(args(["-o", "name,size,allocated,free,health"]));
        let out = self.zpool("list pools", a).await?;
        parse::parse_zpool_list(&out).map_err(|detail| ZfsError::Parse {
            what: "list pools".into(),
            detail,
        })
    }

    /// One imported pool; `PoolUnavailable` when it is not imported.
    pub async fn pool_info(&self, pool: &PoolName) -> Result<PoolRow, ZfsError> {
        let pools = self.pool_list().await?;
        pools
            .into_iter()
            .find(|p| p.name == pool.as_str())
            .ok_or_else(|| ZfsError::PoolUnavailable {
                what: format!("pool {pool}"),
                stderr: "not imported".into(),
            })
    }

    /// Size, use and health of `pool`, with exact dataset-level numbers.
    pub async fn capacity(&self, pool: &PoolName) -> Result<Capacity, ZfsError> {
        let row = self.pool_info(pool).await?;
        let props = self.get(pool.as_str(), &["used", "available"]).await?;
        let num = |p: &str| {
            props
                .get(p)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ZfsError::Parse {
                    what: format!("capacity of {pool}"),
                    detail: format!("{p} missing or not a number"),
                })
        };
        Ok(Capacity {
            size: row.size,
            allocated: row.allocated,
            free: row.free,
            available: num("available")?,
            used: num("used")?,
            health: row.health,
        })
    }

    /// The vdev paths of `pool`, from `zpool status`.
    pub async fn pool_vdevs(&self, pool: &PoolName) -> Result<Vec<String>, ZfsError> {
        let out = self
            .zpool(
                &format!("status of {pool}"),
                args(["status", pool.as_str()]),
            )
            .await?;
        Ok(parse_status_vdevs(&out, pool.as_str()))
    }
}

/// The leaf vdev names of the config section of `zpool status`.
pub fn parse_status_vdevs(out: &str, pool: &str) -> Vec<String> {
    let mut in_config = false;
    let mut vdevs = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("config:") {
            in_config = true;
            continue;
        }
        if !in_config || t.is_empty() || t.starts_with("NAME") {
            continue;
        }
        if t.starts_with("errors:") {
            break;
        }
        let name = t.split_whitespace().next().unwrap_or_default();
        let grouping = name == pool
            || [
                "mirror",
                "raidz",
                "draid",
                "logs",
                "cache",
                "spares",
                "special",
                "dedup",
                "replacing",
                "spare-",
            ]
            .iter()
            .any(|g| name.starts_with(g));
        if !grouping {
            vdevs.push(name.to_owned());
        }
    }
    vdevs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_paths_are_validated() {
        assert!(Vdev::new("/var/lib/projstore/a.img", Some(1 << 30)).is_ok());
        assert!(Vdev::new("/dev/sdb", None).is_ok());
        for bad in ["a.img", "/var/../etc/passwd", "/a b", "-/x", "/x;rm", ""] {
            assert!(Vdev::new(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_vdevs_from_zfs_fuse() {
        let out = "  pool: ztc\n state: ONLINE\n scrub: none requested\nconfig:\n\n\tNAME             STATE     READ WRITE CKSUM\n\tztc              ONLINE       0     0     0\n\t  /tmp/zt/c.img  ONLINE       0     0     0\n\t  /tmp/zt/d.img  ONLINE       0     0     0\n\nerrors: No known data errors\n";
        assert_eq!(
            parse_status_vdevs(out, "ztc"),
            ["/tmp/zt/c.img", "/tmp/zt/d.img"]
        );
    }

    #[test]
    fn status_vdevs_from_openzfs_with_mirrors_and_logs() {
        let out = "  pool: tank\n state: ONLINE\n  scan: scrub repaired 0B in 00:00:01 with 0 errors on Sun Nov  8 00:24:02 2026\nconfig:\n\n\tNAME        STATE     READ WRITE CKSUM\n\ttank        ONLINE       0     0     0\n\t  mirror-0  ONLINE       0     0     0\n\t    sdb     ONLINE       0     0     0\n\t    sdc     ONLINE       0     0     0\n\tlogs\t\n\t  nvme0n1   ONLINE       0     0     0\n\nerrors: No known data errors\n";
        assert_eq!(parse_status_vdevs(out, "tank"), ["sdb", "sdc", "nvme0n1"]);
    }
}

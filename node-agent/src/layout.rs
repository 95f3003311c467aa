//! The on-disk layout of a pool (DESIGN §4) and the creation of a project's dataset.
//!
//! ```text
//! <pool>/projects/<ns>/<name>          live dataset
//! <pool>/streams                       stream store (one filesystem, mounted)
//! <pool>/trash/<ns>/<name>-<ts>        deleted projects until retention ends
//! <pool>/forks/<ns>/<name>-e<epoch>    diverged data preserved after a failover
//! <pool>/recv/<ns>/<name>              staging for full receives (never visible as a project);
//!                                      a cut-off resumable one stays until it resumes (OpenZFS)
//! <pool>/recv/verify.<ns>/<name>       scratch: a closing copy's stored chain, rebuilt to check it
//! ```

use std::path::{Path, PathBuf};

use crate::streams::ProjectKey;
use crate::transfer::RECV_STAGING;
use crate::zfs::{DatasetName, NameError, PoolName, PropertyName, Zfs, ZfsError};

/// User property: `<ns>/<name>` of the project a dataset holds.
pub const PROP_PROJECT: &str = "projstore.io:project";
/// User property: the fencing epoch the dataset was last written under.
pub const PROP_EPOCH: &str = "projstore.io:epoch";
/// User property: `primary` or `secondary`.
pub const PROP_ROLE: &str = "projstore.io:role";

/// Dataset names of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLayout {
    pool: PoolName,
}

impl PoolLayout {
    pub fn new(pool: PoolName) -> Self {
        Self { pool }
    }
    pub fn pool(&self) -> &PoolName {
        &self.pool
    }
    fn child(&self, path: &str) -> Result<DatasetName, NameError> {
        self.pool.dataset(path)
    }
    pub fn projects(&self) -> Result<DatasetName, NameError> {
        self.child("projects")
    }
    pub fn streams(&self) -> Result<DatasetName, NameError> {
        self.child("streams")
    }
    pub fn trash(&self) -> Result<DatasetName, NameError> {
        self.child("trash")
    }
    pub fn forks(&self) -> Result<DatasetName, NameError> {
        self.child("forks")
    }
    pub fn recv(&self) -> Result<DatasetName, NameError> {
        self.child(RECV_STAGING)
    }
    /// `<pool>/projects/<ns>/<name>`.
    pub fn project(&self, p: &ProjectKey) -> Result<DatasetName, NameError> {
        self.child(&format!("projects/{}/{}", p.namespace, p.name))
    }
    /// `<pool>/forks/<ns>/<name>-e<epoch>`.
    pub fn fork(&self, p: &ProjectKey, epoch: u64) -> Result<DatasetName, NameError> {
        self.child(&format!("forks/{}/{}-e{epoch}", p.namespace, p.name))
    }
    /// `<pool>/trash/<ns>/<name>-<stamp>`.
    pub fn trashed(&self, p: &ProjectKey, stamp: &str) -> Result<DatasetName, NameError> {
        self.child(&format!("trash/{}/{}-{stamp}", p.namespace, p.name))
    }
}

/// Creates the standard filesystems of a pool (idempotent): `projects`, `trash`, `forks` and
/// `recv` unmounted, `streams` mounted at `streams_mountpoint`.
pub async fn ensure_layout(
    zfs: &Zfs,
    layout: &PoolLayout,
    streams_mountpoint: &Path,
) -> Result<(), ZfsError> {
    for ds in [
        layout.projects(),
        layout.trash(),
        layout.forks(),
        layout.recv(),
    ] {
        let ds = ds.map_err(ZfsError::invalid_name("pool layout"))?;
        zfs.create(&ds, &[(prop("mountpoint", &ds)?, "none".into())])
            .await?;
    }
    let streams = layout
        .streams()
        .map_err(ZfsError::invalid_name("pool layout"))?;
    let mp = checked_mountpoint(&streams, streams_mountpoint)?;
    zfs.create(&streams, &[(prop("mountpoint", &streams)?, mp)])
        .await?;
    zfs.mount(&streams).await
}

/// What a new project dataset gets.
#[derive(Debug, Clone)]
pub struct NewProject<'a> {
    pub key: &'a ProjectKey,
    pub mountpoint: &'a Path,
    pub quota_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    pub epoch: u64,
}

/// Creates (or finds) the live dataset of a project with its quota, identity properties and
/// mountpoint, mounts it, and gives its root to the owner.
pub async fn create_project(
    zfs: &Zfs,
    layout: &PoolLayout,
    new: &NewProject<'_>,
) -> Result<DatasetName, ZfsError> {
    let ds = layout
        .project(new.key)
        .map_err(ZfsError::invalid_name("project dataset"))?;
    let mp = checked_mountpoint(&ds, new.mountpoint)?;
    zfs.create_parents(&ds).await?;
    let props = vec![
        (prop("refquota", &ds)?, new.quota_bytes.to_string()),
        (prop("mountpoint", &ds)?, mp),
        (prop(PROP_PROJECT, &ds)?, new.key.to_string()),
        (prop(PROP_EPOCH, &ds)?, new.epoch.to_string()),
        (prop(PROP_ROLE, &ds)?, "primary".into()),
        (prop("setuid", &ds)?, "off".into()),
        (prop("devices", &ds)?, "off".into()),
    ];
    zfs.create(&ds, &props).await?;
    zfs.mount(&ds).await?;
    let root = PathBuf::from(new.mountpoint);
    let (uid, gid) = (new.uid, new.gid);
    let what = format!("chown {} to {uid}:{gid}", root.display());
    tokio::task::spawn_blocking(move || std::os::unix::fs::chown(&root, Some(uid), Some(gid)))
        .await
        .map_err(|e| ZfsError::Io {
            what: what.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| ZfsError::Io { what, source })?;
    Ok(ds)
}

/// The root of a served project as a tenant must find it: mounted `nosuid,nodev` (on
/// zfs-fuse the `setuid`/`devices` properties do not reach the mount flags), owned by the
/// owner, mode 0700 (no other tenant on the host lists or reads it). Acts on the root by
/// descriptor.
pub fn secure_root(mountpoint: &Path, owner: (u32, u32)) -> Result<(), String> {
    use std::os::fd::AsFd;
    crate::mounts::harden(mountpoint)?;
    let root = crate::beneath::open_root(mountpoint).map_err(|e| e.to_string())?;
    crate::beneath::chown_fd(root.as_fd(), owner)
        .map_err(|e| format!("chown {}: {e}", mountpoint.display()))?;
    // An O_PATH descriptor cannot chmod: reopen the very directory through it.
    rustix::fs::open(
        crate::beneath::fd_path(root.as_fd()),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|d| rustix::fs::fchmod(&d, rustix::fs::Mode::from_raw_mode(0o700)))
    .map_err(|e| format!("chmod {}: {e}", mountpoint.display()))
}

fn prop(name: &str, ds: &DatasetName) -> Result<PropertyName, ZfsError> {
    PropertyName::parse(name).map_err(ZfsError::invalid_name(format!("property of {ds}")))
}

fn checked_mountpoint(ds: &DatasetName, path: &Path) -> Result<String, ZfsError> {
    let s = path.to_str().unwrap_or_default();
    if projstore_api::names::is_absolute_path(s) {
        Ok(s.to_owned())
    } else {
        Err(ZfsError::InvalidName {
            what: format!("mountpoint of {ds}"),
            source: NameError {
                what: "mountpoint",
                value: path.display().to_string(),
                reason: "must be an absolute, normalised path without '..' or special characters",
            },
        })
    }
}

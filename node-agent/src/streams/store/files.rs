//! How the store opens and creates files: private, never through a symlink, synced.

use super::*;

/// Stream files are the project's data: 0600, and never opened through a symlink (one
/// placed among them is refused, not served).
pub(super) fn nofollow() -> i32 {
    // O_NOFOLLOW's value fits an i32 on every Linux architecture.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

pub(super) async fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .await
}

pub(super) async fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(path)
        .await
}

/// Creates `dir` (a project's directory below the store's root) and its parents, all 0700:
/// no other user on the host lists or reads the streams.
pub(super) async fn private_dir(root: &Path, dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(io(dir))?;
    let mut d = dir;
    loop {
        fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(d))?;
        match d.parent() {
            Some(parent) if d != root && parent.starts_with(root) => d = parent,
            _ => return Ok(()),
        }
    }
}

pub(super) async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = File::open(dir).await.map_err(io(dir))?;
    d.sync_all().await.map_err(io(dir))
}

//! The stream store of one pool (DESIGN §4): `<root>/<namespace>/<name>/<id>.zstream` with a
//! `<id>.json` manifest.
//!
//! A stream is written as `<id>.zstream.partial`, fsynced, checksummed, renamed; the manifest
//! is written last (itself through a `.partial` and a rename) and marks the stream complete.
//! Anything else found in a project directory is a crash leftover and [`StreamStore::recover`]
//! removes it.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::manifest::{Manifest, ProjectKey, SnapshotJson, StreamId};

/// Where deleted projects' streams wait for purge, inside the store root. A leading dot can
/// never be a namespace (DNS-1123 labels), so it cannot collide with a project directory.
pub const TRASH_DIR: &str = ".trash";
/// Where streams of diverged history are kept: `<root>/.forks/<ns>/<fork>/`.
pub const FORKS_DIR: &str = ".forks";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stream {id} of {project} is corrupt: {reason}; it will not be applied (fetch or write it again)"
    )]
    Corrupt {
        project: String,
        id: String,
        reason: String,
    },
    #[error("stream {id} of {project} does not exist")]
    NotFound { project: String, id: String },
    #[error("stream {id} of {project} already exists")]
    AlreadyExists { project: String, id: String },
    #[error("{path}: bad manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("offset {offset} is past the end of stream {id} ({len} bytes)")]
    BadOffset { id: String, offset: u64, len: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A complete stream: its id and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    pub id: StreamId,
    pub manifest: Manifest,
}

/// What the writer of a stream knows besides the bytes.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub from: Option<SnapshotJson>,
    pub to: SnapshotJson,
    pub epoch: u64,
    pub node: String,
}

/// The stream store rooted at the mountpoint of `<pool>/streams`.
#[derive(Debug, Clone)]
pub struct StreamStore {
    root: PathBuf,
}

impl StreamStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a project's streams.
    pub fn dir(&self, p: &ProjectKey) -> PathBuf {
        self.root.join(&p.namespace).join(&p.name)
    }

    /// Starts writing stream `id` of `p`. Write the bytes into the returned writer, then
    /// [`StreamWriter::commit`]. Dropping it uncommitted leaves a `.partial` that
    /// [`StreamStore::recover`] removes.
    pub async fn begin(&self, p: &ProjectKey, id: &StreamId) -> Result<StreamWriter, StoreError> {
        let dir = self.dir(p);
        private_dir(&self.root, &dir).await?;
        let final_path = dir.join(id.file_name());
        if fs::try_exists(&final_path).await.map_err(io(&final_path))? {
            return Err(StoreError::AlreadyExists {
                project: p.to_string(),
                id: id.to_string(),
            });
        }
        let partial = dir.join(format!("{}.partial", id.file_name()));
        let file = OpenOptions::new()
            .read(true) // a direct writer's bytes are read back to hash them
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&partial)
            .await
            .map_err(io(&partial))?;
        Ok(StreamWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
            partial,
            dir,
            id: id.clone(),
            project: p.clone(),
        })
    }

    /// The complete streams of `p`, sorted by id. Incomplete ones (no manifest yet, or a file
    /// whose size differs from its manifest) are left out.
    pub async fn list(&self, p: &ProjectKey) -> Result<Vec<StoredStream>, StoreError> {
        let dir = self.dir(p);
        let mut out = Vec::new();
        let mut rd = match fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&dir)(e)),
        };
        while let Some(entry) = rd.next_entry().await.map_err(io(&dir))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = StreamId::from_file_name(&name) else {
                continue;
            };
            let Ok(manifest) = self.manifest(p, &id).await else {
                continue;
            };
            let len = entry.metadata().await.map_err(io(&entry.path()))?.len();
            if len == manifest.bytes {
                out.push(StoredStream { id, manifest });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Reads the manifest of stream `id`.
    pub async fn manifest(&self, p: &ProjectKey, id: &StreamId) -> Result<Manifest, StoreError> {
        let path = self.dir(p).join(id.manifest_name());
        let read = async {
            let mut t = Vec::new();
            open_read(&path).await?.read_to_end(&mut t).await?;
            Ok::<_, std::io::Error>(t)
        };
        let text = match read.await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    project: p.to_string(),
                    id: id.to_string(),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| StoreError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.project != p.to_string() {
            return Err(StoreError::BadManifest {
                path,
                reason: format!("belongs to project {}", m.project),
            });
        }
        Ok(m)
    }

    /// Checks size and SHA-256 of stream `id` against its manifest.
    pub async fn verify(&self, p: &ProjectKey, id: &StreamId) -> Result<Manifest, StoreError> {
        Ok(self.open_verified(p, id).await?.0)
    }

    /// [`StreamStore::verify`], returning the open stream file at offset 0 with its manifest:
    /// the bytes that were checked are the bytes a reader of this file gets.
    pub async fn open_verified(
        &self,
        p: &ProjectKey,
        id: &StreamId,
    ) -> Result<(Manifest, File), StoreError> {
        let manifest = self.manifest(p, id).await?;
        let path = self.dir(p).join(id.file_name());
        let corrupt = |reason: String| StoreError::Corrupt {
            project: p.to_string(),
            id: id.to_string(),
            reason,
        };
        let mut file = match open_read(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt("the stream file is missing".into()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let len = file.metadata().await.map_err(io(&path))?.len();
        if len != manifest.bytes {
            return Err(corrupt(format!(
                "{len} bytes on disk, manifest says {}",
                manifest.bytes
            )));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(io(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sum = hex::encode(hasher.finalize());
        if sum != manifest.sha256 {
            return Err(corrupt(format!(
                "sha256 {sum}, manifest says {}",
                manifest.sha256
            )));
        }
        file.seek(SeekFrom::Start(0)).await.map_err(io(&path))?;
        Ok((manifest, file))
    }

    /// Opens stream `id` at byte `offset` (for serving `Range` requests); returns the file
    /// positioned there and the stream's total length.
    pub async fn open_at(
        &self,
        p: &ProjectKey,
        id: &StreamId,
        offset: u64,
    ) -> Result<(File, u64), StoreError> {
        let manifest = self.manifest(p, id).await?;
        let path = self.dir(p).join(id.file_name());
        let mut file = open_read(&path).await.map_err(io(&path))?;
        let len = file.metadata().await.map_err(io(&path))?.len();
        if len != manifest.bytes {
            return Err(StoreError::Corrupt {
                project: p.to_string(),
                id: id.to_string(),
                reason: format!("{len} bytes on disk, manifest says {}", manifest.bytes),
            });
        }
        if offset > len {
            return Err(StoreError::BadOffset {
                id: id.to_string(),
                offset,
                len,
            });
        }
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(io(&path))?;
        Ok((file, len))
    }

    /// Deletes stream `id`: the manifest first (so it stops being complete), then the file.
    pub async fn delete(&self, p: &ProjectKey, id: &StreamId) -> Result<(), StoreError> {
        let dir = self.dir(p);
        for name in [id.manifest_name(), id.file_name()] {
            let path = dir.join(name);
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        sync_dir(&dir).await
    }

    /// Moves stream `id` (manifest first, so it stops being complete here) out of the project
    /// into `<root>/.forks/<ns>/<fork>/`, kept with the diverged dataset it belongs to.
    pub async fn set_aside(
        &self,
        p: &ProjectKey,
        id: &StreamId,
        fork: &str,
    ) -> Result<(), StoreError> {
        let dir = self.dir(p);
        let to = self.root.join(FORKS_DIR).join(&p.namespace).join(fork);
        fs::create_dir_all(&to).await.map_err(io(&to))?;
        for name in [id.manifest_name(), id.file_name()] {
            let from = dir.join(&name);
            match fs::rename(&from, to.join(&name)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&from)(e)),
            }
        }
        sync_dir(&to).await?;
        sync_dir(&dir).await
    }

    /// Moves all of `p`'s streams into the trash as `<root>/.trash/<ns>/<name>-<stamp>`;
    /// returns that directory (None when `p` has no streams).
    pub async fn move_to_trash(
        &self,
        p: &ProjectKey,
        stamp: &str,
    ) -> Result<Option<PathBuf>, StoreError> {
        let from = self.dir(p);
        if !fs::try_exists(&from).await.map_err(io(&from))? {
            return Ok(None);
        }
        let trash_ns = self.root.join(TRASH_DIR).join(&p.namespace);
        fs::create_dir_all(&trash_ns).await.map_err(io(&trash_ns))?;
        let to = trash_ns.join(format!("{}-{stamp}", p.name));
        fs::rename(&from, &to).await.map_err(io(&to))?;
        sync_dir(&trash_ns).await?;
        Ok(Some(to))
    }

    /// Puts streams back from a trash directory made by [`StreamStore::move_to_trash`].
    pub async fn restore_from_trash(
        &self,
        p: &ProjectKey,
        trashed: &Path,
    ) -> Result<(), StoreError> {
        let to = self.dir(p);
        if fs::try_exists(&to).await.map_err(io(&to))? {
            return Err(StoreError::AlreadyExists {
                project: p.to_string(),
                id: "(project directory)".into(),
            });
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        fs::rename(trashed, &to).await.map_err(io(&to))?;
        Ok(())
    }

    /// Bytes of stream `id` downloaded so far (`<id>.zstream.download`), to resume from.
    pub async fn download_len(&self, p: &ProjectKey, id: &StreamId) -> u64 {
        fs::metadata(self.dir(p).join(format!("{}.download", id.file_name())))
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The file a download of `id` appends to (created with its directory when missing).
    pub async fn download_file(&self, p: &ProjectKey, id: &StreamId) -> Result<File, StoreError> {
        let dir = self.dir(p);
        private_dir(&self.root, &dir).await?;
        let path = dir.join(format!("{}.download", id.file_name()));
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&path)
            .await
            .map_err(io(&path))
    }

    /// Completes a download: the bytes must have the size and SHA-256 the peer's manifest
    /// states; then the stream is renamed into place and the manifest written last. A
    /// download that does not match is deleted (fetch it again) and reported corrupt.
    pub async fn finish_download(
        &self,
        p: &ProjectKey,
        id: &StreamId,
        manifest: &Manifest,
    ) -> Result<(), StoreError> {
        let dir = self.dir(p);
        let partial = dir.join(format!("{}.download", id.file_name()));
        let corrupt = |reason: String| StoreError::Corrupt {
            project: p.to_string(),
            id: id.to_string(),
            reason,
        };
        if manifest.project != p.to_string() {
            return Err(corrupt(format!(
                "the manifest belongs to {}",
                manifest.project
            )));
        }
        let mut f = open_read(&partial).await.map_err(io(&partial))?;
        let len = f.metadata().await.map_err(io(&partial))?.len();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(io(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sum = hex::encode(hasher.finalize());
        if len != manifest.bytes || sum != manifest.sha256 {
            let _ = fs::remove_file(&partial).await;
            return Err(corrupt(format!(
                "downloaded {len} bytes with sha256 {sum}; the peer's manifest says {} bytes, {}",
                manifest.bytes, manifest.sha256
            )));
        }
        open_read(&partial)
            .await
            .map_err(io(&partial))?
            .sync_all()
            .await
            .map_err(io(&partial))?;
        let final_path = dir.join(id.file_name());
        fs::rename(&partial, &final_path)
            .await
            .map_err(io(&final_path))?;
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::BadManifest {
            path: final_path.clone(),
            reason: e.to_string(),
        })?;
        let manifest_partial = dir.join(format!("{}.partial", id.manifest_name()));
        let mut mf = create_private(&manifest_partial)
            .await
            .map_err(io(&manifest_partial))?;
        mf.write_all(&text).await.map_err(io(&manifest_partial))?;
        mf.sync_all().await.map_err(io(&manifest_partial))?;
        fs::rename(&manifest_partial, dir.join(id.manifest_name()))
            .await
            .map_err(io(&dir))?;
        sync_dir(&dir).await
    }

    /// Removes crash leftovers in every project directory: `*.partial` files, stream files
    /// without a manifest, and manifests whose stream is missing or of the wrong size.
    /// Interrupted downloads (`*.download`) stay: they resume with `Range`. Returns what was
    /// removed.
    pub async fn recover(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        for dir in self.project_dirs().await? {
            let mut rd = fs::read_dir(&dir).await.map_err(io(&dir))?;
            let mut names = Vec::new();
            while let Some(e) = rd.next_entry().await.map_err(io(&dir))? {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
            for name in &names {
                let stale = if name.ends_with(".partial") {
                    true
                } else if let Some(stem) = name.strip_suffix(".zstream") {
                    !names.contains(&format!("{stem}.json"))
                } else if let Some(stem) = name.strip_suffix(".json") {
                    let stream = dir.join(format!("{stem}.zstream"));
                    let size_ok =
                        match (fs::metadata(&stream).await, fs::read(dir.join(name)).await) {
                            (Ok(meta), Ok(text)) => serde_json::from_slice::<Manifest>(&text)
                                .is_ok_and(|m| m.bytes == meta.len()),
                            _ => false,
                        };
                    !size_ok
                } else {
                    false
                };
                if stale {
                    let path = dir.join(name);
                    fs::remove_file(&path).await.map_err(io(&path))?;
                    removed.push(path);
                }
            }
            if !removed.is_empty() {
                sync_dir(&dir).await?;
            }
        }
        Ok(removed)
    }

    /// Every `<root>/<ns>/<name>` directory (the trash excluded).
    async fn project_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let mut namespaces = match fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        while let Some(ns) = namespaces.next_entry().await.map_err(io(&self.root))? {
            if ns.file_name() == TRASH_DIR
                || !ns.file_type().await.map_err(io(&ns.path()))?.is_dir()
            {
                continue;
            }
            let mut projects = fs::read_dir(ns.path()).await.map_err(io(&ns.path()))?;
            while let Some(p) = projects.next_entry().await.map_err(io(&ns.path()))? {
                if p.file_type().await.map_err(io(&p.path()))?.is_dir() {
                    out.push(p.path());
                }
            }
        }
        Ok(out)
    }
}

/// Writes one stream: counts and hashes every byte on the way to `<id>.zstream.partial`.
pub struct StreamWriter {
    file: File,
    hasher: Sha256,
    bytes: u64,
    partial: PathBuf,
    dir: PathBuf,
    id: StreamId,
    project: ProjectKey,
}

impl StreamWriter {
    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The stream file itself (open for reading and writing, at the end of what is written)
    /// for a writer that puts bytes in directly, such as `zfs send` given it as its output.
    /// Such a writer's bytes must each be passed to [`StreamWriter::note`], in order.
    pub async fn direct_file(&mut self) -> Result<std::fs::File, StoreError> {
        self.file.flush().await.map_err(io(&self.partial))?;
        let dup = self.file.try_clone().await.map_err(io(&self.partial))?;
        Ok(dup.into_std().await)
    }

    /// Counts and hashes bytes that a direct writer put into the file.
    pub fn note(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// fsync → rename to `<id>.zstream` → manifest (fsynced, renamed) → directory fsync.
    pub async fn commit(mut self, meta: StreamMeta) -> Result<Manifest, StoreError> {
        self.file.flush().await.map_err(io(&self.partial))?;
        self.file.sync_all().await.map_err(io(&self.partial))?;
        let len = self.file.metadata().await.map_err(io(&self.partial))?.len();
        if len != self.bytes {
            return Err(StoreError::Corrupt {
                project: self.project.to_string(),
                id: self.id.to_string(),
                reason: format!(
                    "{len} bytes in the file but {} were hashed; not committed",
                    self.bytes
                ),
            });
        }
        let sha256 = hex::encode(self.hasher.finalize_reset());
        let final_path = self.dir.join(self.id.file_name());
        fs::rename(&self.partial, &final_path)
            .await
            .map_err(io(&final_path))?;
        let manifest = Manifest {
            project: self.project.to_string(),
            from: meta.from,
            to: meta.to,
            epoch: meta.epoch,
            bytes: self.bytes,
            sha256,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            node: meta.node,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::BadManifest {
            path: final_path.clone(),
            reason: e.to_string(),
        })?;
        let manifest_path = self.dir.join(self.id.manifest_name());
        let manifest_partial = self
            .dir
            .join(format!("{}.partial", self.id.manifest_name()));
        let mut f = create_private(&manifest_partial)
            .await
            .map_err(io(&manifest_partial))?;
        f.write_all(&text).await.map_err(io(&manifest_partial))?;
        f.sync_all().await.map_err(io(&manifest_partial))?;
        fs::rename(&manifest_partial, &manifest_path)
            .await
            .map_err(io(&manifest_path))?;
        sync_dir(&self.dir).await?;
        Ok(manifest)
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.bytes += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

/// Stream files are the project's data: 0600, and never opened through a symlink (one
/// placed among them is refused, not served).
fn nofollow() -> i32 {
    // O_NOFOLLOW's value fits an i32 on every Linux architecture.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

async fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .await
}

async fn create_private(path: &Path) -> std::io::Result<File> {
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
async fn private_dir(root: &Path, dir: &Path) -> Result<(), StoreError> {
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

async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = File::open(dir).await.map_err(io(dir))?;
    d.sync_all().await.map_err(io(dir))
}

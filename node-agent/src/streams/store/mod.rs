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

mod download;
mod files;
mod places;
mod recover;
mod writer;

use files::*;
pub use writer::StreamWriter;

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
}

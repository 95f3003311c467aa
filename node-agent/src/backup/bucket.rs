//! A project's objects in a BackupTarget's bucket: `<prefix>/<namespace>/<name>/<id>.zstream`
//! (a `zfs send` stream, sealed when the target has a key) and `<id>.json` (its manifest,
//! written last: it marks the stream complete, as in a host's stream store).
//!
//! Each multipart upload under way is recorded beside them, in `uploads/<digest of its upload
//! id>.json` (below the project's objects: the chain's listing does not see it), until it is
//! completed or aborted: an upload a host began and never finished (the host lost, or another
//! copy uploading now) is aborted by the next backup that succeeds, from whichever host, so its
//! parts do not stay in the bucket for good (S3 lists no multipart uploads to the client used).
//!
//! The bucket is outside input: every manifest is parsed strictly and checked against its
//! name and project, sealed objects must open with the key (and with a key set, nothing
//! unsealed is taken), and streams are hashed on the way down (see [`super::restore`]).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use super::seal::{Opener, SealKey, Sealer};
use crate::streams::{Manifest, StreamId, plan::Edge};
use crate::zfs::{Progress, SendFlags, SnapshotName, Zfs};

/// The "folder" below a project's objects where its uploads under way are recorded.
const UPLOADS: &str = "uploads";

/// The most upload records one backup reads (each is one GET).
const MAX_UPLOAD_RECORDS: usize = 100;

/// A running upload records itself again after a part once its record is this old.
pub const RECORD_REFRESH: std::time::Duration = std::time::Duration::from_secs(120);

/// An upload under way, as recorded in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadRecord {
    /// The object's key (directly under the project's root, a `.zstream`).
    object: String,
    upload_id: String,
    /// The node that began it.
    node: String,
}

/// Plaintext per uploaded part (S3 wants at least 5 MiB for every part but the last).
pub const PART: usize = 8 << 20;
/// The most parts S3 makes one object of.
const MAX_PARTS: usize = 10_000;
/// The largest part S3 takes.
const MAX_PART: usize = 5 << 30;

/// The part size for a stream of at most about `bound` bytes: [`PART`], or larger where the
/// stream could otherwise need more than [`MAX_PARTS`] parts (with room for a stream four
/// times the bound: a `zfs send` of compressed data may outgrow the size on disk), in whole
/// MiB.
pub fn part_size(bound: u64) -> usize {
    let need = bound.saturating_mul(4) / (MAX_PARTS as u64 * 9 / 10);
    let mib = need.div_ceil(1 << 20).saturating_mul(1 << 20);
    usize::try_from(mib)
        .unwrap_or(MAX_PART)
        .clamp(PART, MAX_PART)
}
/// Refusals to complete an upload of stored parts before it starts afresh.
pub const MAX_RESUMES: u32 = 3;
/// The ranges an object is read in.
const RANGE: u64 = 8 << 20;
/// Ranges of one object asked for at once (each held until its turn).
const RANGES_IN_FLIGHT: usize = 4;
/// The most objects a project's place in the bucket may hold.
const MAX_OBJECTS: usize = 100_000;
/// The largest manifest read.
const MAX_MANIFEST: usize = 64 << 10;

/// A stream's manifest in the bucket: the host manifest (sizes and SHA-256 of the plaintext
/// stream), how many bytes the object holds, and whether it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectManifest {
    #[serde(flatten)]
    pub stream: Manifest,
    pub stored_bytes: u64,
    pub encrypted: bool,
}

/// A stream in the bucket, as its manifest describes it.
#[derive(Debug, Clone)]
pub struct BucketStream {
    pub id: StreamId,
    pub manifest: ObjectManifest,
    pub edge: Edge,
}

/// One project's place in a bucket.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    /// Which service and bucket this is (an interrupted upload goes on only into the same).
    place: String,
    root: Path,
    key: Option<SealKey>,
    /// `<namespace>/<name>` of the backed-up project, as manifests must say.
    project: String,
    /// How often an upload's record is written again while it stores parts
    /// ([`RECORD_REFRESH`]).
    record_refresh: std::time::Duration,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("root", &self.root)
            .field("sealed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Bucket {
    pub fn new(store: Arc<AmazonS3>, root: Path, key: Option<SealKey>, project: String) -> Self {
        Self {
            place: store.to_string(),
            store,
            root,
            key,
            project,
            record_refresh: RECORD_REFRESH,
        }
    }

    /// Writes an upload's record again this often while it stores parts (instead of every
    /// [`RECORD_REFRESH`]).
    pub fn record_every(mut self, every: std::time::Duration) -> Self {
        self.record_refresh = every;
        self
    }

    /// Names the service and bucket (for the upload state): `<endpoint>/<bucket>`.
    pub fn at(mut self, place: String) -> Self {
        self.place = place;
        self
    }

    pub fn sealed(&self) -> bool {
        self.key.is_some()
    }

    /// The object key of `name` under the project's root.
    pub fn object(&self, name: &str) -> Path {
        self.root.clone().join(name)
    }

    /// Every complete stream of the project (a manifest present), checked. An object that is
    /// not a manifest, or a stream without one (an upload cut off), is not part of the chain.
    pub async fn streams(&self) -> Result<Vec<BucketStream>, BackupError> {
        // One level (a project's objects, not whatever another prefix nests below), bounded.
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(BackupError::store)?;
        if listing.objects.len() > MAX_OBJECTS {
            return Err(BackupError::Bucket(format!(
                "{} holds {} objects, more than the {MAX_OBJECTS} a project's backups may have",
                self.root,
                listing.objects.len()
            )));
        }
        let mut names = Vec::new();
        for meta in listing.objects {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".json") {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for stem in names {
            let id = StreamId::parse(&stem).map_err(BackupError::Bucket)?;
            let manifest = self.manifest(&id).await?;
            let edge = manifest
                .stream
                .edge(&id)
                .map_err(|e| BackupError::Bucket(format!("manifest of {id}: {e}")))?;
            out.push(BucketStream { id, manifest, edge });
        }
        Ok(out)
    }

    /// Reads and checks the manifest of `id`.
    pub async fn manifest(&self, id: &StreamId) -> Result<ObjectManifest, BackupError> {
        let path = self.object(&id.manifest_name());
        let got = self.store.get(&path).await.map_err(BackupError::store)?;
        let raw = read_small(got, MAX_MANIFEST).await?.ok_or_else(|| {
            BackupError::Bucket(format!("manifest {path} is over {MAX_MANIFEST} bytes"))
        })?;
        let text = self.open_small(&path, &raw).map_err(BackupError::Bucket)?;
        let m: ObjectManifest = serde_json::from_slice(&text).map_err(|e| {
            BackupError::Bucket(format!(
                "manifest {path} is not a manifest{}: {e}",
                if self.key.is_none() {
                    " (or it is encrypted and the target has no key)"
                } else {
                    ""
                }
            ))
        })?;
        let bad = |why: String| BackupError::Bucket(format!("manifest {path}: {why}"));
        if m.stream.project != self.project {
            return Err(bad(format!("it is of project {:?}", m.stream.project)));
        }
        if m.encrypted != self.key.is_some() {
            return Err(bad(if m.encrypted {
                "the stream is encrypted and the target has no key".into()
            } else {
                "the stream is not encrypted, and the target's objects all are".into()
            }));
        }
        let want = StreamId::for_snapshots(
            m.stream.from.as_ref().map(|f| f.name.as_str()),
            &m.stream.to.name,
        )
        .map_err(bad)?;
        if want != *id {
            return Err(bad(format!("it describes stream {want}")));
        }
        if m.stream.sha256.len() != 64 || !m.stream.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("its sha256 is not a hex digest".into()));
        }
        Ok(m)
    }

    async fn put_manifest(&self, id: &StreamId, m: &ObjectManifest) -> Result<(), BackupError> {
        let path = self.object(&id.manifest_name());
        let text = serde_json::to_vec_pretty(m).map_err(|e| BackupError::Bucket(e.to_string()))?;
        self.put_small(&path, &text).await
    }

    /// Stores a small object (a manifest, an upload record) at `path`, sealed when the target
    /// has a key.
    async fn put_small(&self, path: &Path, text: &[u8]) -> Result<(), BackupError> {
        let body = self.seal_small(path, text).map_err(BackupError::Bucket)?;
        self.store
            .put(path, PutPayload::from(body))
            .await
            .map_err(BackupError::store)?;
        Ok(())
    }

    /// A small object's body as stored at `path`: sealed when the target has a key.
    fn seal_small(&self, path: &Path, text: &[u8]) -> Result<Bytes, String> {
        match &self.key {
            Some(key) => {
                let mut s = Sealer::new(key.clone(), path.as_ref());
                let mut out = BytesMut::new();
                s.update(text, &mut out)?;
                s.finish(&mut out)?;
                Ok(out.freeze())
            }
            None => Ok(Bytes::copy_from_slice(text)),
        }
    }

    /// What a small object stored at `path` says: opened with the key when the target has one.
    fn open_small(&self, path: &Path, raw: &[u8]) -> Result<Vec<u8>, String> {
        match &self.key {
            Some(key) => {
                let mut o = Opener::new(key.clone(), path.as_ref());
                let mut plain = Vec::new();
                for b in o.update(raw)? {
                    plain.extend_from_slice(&b);
                }
                plain.extend_from_slice(&o.finish()?);
                Ok(plain)
            }
            None => Ok(raw.to_vec()),
        }
    }

    /// The stream object of `id`, as it arrives (sealed or not, unchecked), with the size
    /// the service says it has: `size` bytes (the manifest's) in ranges of [`RANGE`] bytes,
    /// [`RANGES_IN_FLIGHT`] of them asked for at once and handed on in order (one request at
    /// a time is far slower than the service: S3 itself serves each connection at a fraction
    /// of what it serves a host). Each range must come whole and no longer (a longer one is
    /// cut off as soon as it passes its length), and of the version the service first named
    /// (`If-Match`, and the version each answer names: an object rewritten meanwhile fails
    /// the read instead of mixing versions);
    /// the caller compares the size and checks the object as a whole.
    pub async fn get_stream(
        &self,
        id: &StreamId,
        size: u64,
    ) -> Result<
        (
            u64,
            futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
        ),
        BackupError,
    > {
        use futures::StreamExt;
        let path = self.object(&id.file_name());
        let head = match self.store.head(&path).await {
            Ok(head) => head,
            // Listed with its manifest, its object is gone: the backup is broken there (not
            // the service unreachable).
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::Broken {
                    stream: id.to_string(),
                    why: format!("its object {path} is missing"),
                });
            }
            Err(e) => return Err(BackupError::store(e)),
        };
        let store = self.store.clone();
        let ranges = (0..size)
            .step_by(RANGE as usize)
            .map(move |start| start..(start + RANGE).min(size));
        let version = head.e_tag;
        let body = futures::stream::iter(ranges)
            .map(move |r| read_range(store.clone(), path.clone(), r, version.clone()))
            .buffered(RANGES_IN_FLIGHT)
            .boxed();
        Ok((head.size, body))
    }

    /// The uploads of this project to this very bucket that are under way (cut off, or
    /// running), from their state files in `dir` under names starting with `prefix`: each
    /// file's name with the GUID of the snapshot it uploads; not those the service refused
    /// to complete [`MAX_RESUMES`] times.
    pub fn begun_uploads(&self, dir: &std::path::Path, prefix: &str) -> Vec<(String, String)> {
        self.uploads_here(dir, prefix)
            .into_iter()
            .filter(|(_, state)| !state.stuck())
            .filter_map(|(path, state)| {
                let name = path.file_name()?.to_str()?.to_owned();
                Some((name, state.to_guid))
            })
            .collect()
    }

    /// The state files in `dir` named `<prefix>*.json` of uploads to this very bucket, and
    /// what they say.
    fn uploads_here(&self, dir: &std::path::Path, prefix: &str) -> Vec<(PathBuf, UploadState)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let here = format!("{}/", self.root.as_ref());
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
            })
            .filter_map(|e| Some((e.path(), UploadState::load(&e.path())?)))
            .filter(|(_, state)| {
                state.place == self.place
                    && state
                        .object
                        .strip_prefix(&here)
                        .is_some_and(|rest| !rest.contains('/'))
            })
            .collect()
    }

    /// Abandons the uploads of this project whose state files lie in `dir` under names
    /// starting with `prefix` (none is under way: other snapshots were uploaded instead):
    /// their multipart uploads are aborted (their parts would otherwise stay in the bucket)
    /// and the files removed. Then the uploads the bucket records that no host finished
    /// (begun on a host since lost, or by a copy that no longer uploads) are aborted too,
    /// once their record is `grace` old (an upload another copy runs in the same moment, as
    /// the uploading copy changes, is left alone that long).
    pub async fn abandon_other_uploads(
        &self,
        dir: &std::path::Path,
        prefix: &str,
        grace: std::time::Duration,
    ) {
        for (path, state) in self.uploads_here(dir, prefix) {
            match self.abort_upload(&state.object, &state.upload_id).await {
                Ok(()) => {
                    UploadState::remove(&path);
                    tracing::info!(object = %state.object, "an abandoned upload aborted");
                }
                Err(e) => {
                    tracing::warn!(object = %state.object, error = %e, "cannot abort an abandoned upload")
                }
            }
        }
        if let Err(e) = self.abort_recorded_uploads(grace).await {
            tracing::warn!(project = %self.project, error = %e, "cannot read the uploads the bucket records");
        }
    }

    /// The uploads the bucket records (by their records' names), with their records' age.
    async fn recorded_uploads(
        &self,
    ) -> Result<Vec<(object_store::ObjectMeta, std::time::Duration)>, BackupError> {
        let folder = self.object(UPLOADS);
        let listing = self
            .store
            .list_with_delimiter(Some(&folder))
            .await
            .map_err(BackupError::store)?;
        if listing.objects.len() > MAX_OBJECTS {
            return Err(BackupError::Bucket(format!(
                "{folder} holds {} objects, more than the {MAX_OBJECTS} a project's uploads may have",
                listing.objects.len()
            )));
        }
        let now = chrono::Utc::now();
        Ok(listing
            .objects
            .into_iter()
            .filter(|m| {
                m.location.filename().is_some_and(|n| {
                    n.strip_suffix(".json")
                        .is_some_and(|d| d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()))
                })
            })
            .map(|m| {
                let age = (now - m.last_modified).to_std().unwrap_or_default();
                (m, age)
            })
            .collect())
    }

    /// What the record at `at` says, when it is an upload record of one of this project's
    /// stream objects stored under its own name (what the bucket says is outside input).
    async fn read_record(&self, at: &Path) -> Option<UploadRecord> {
        let raw = match self.store.get(at).await {
            Ok(got) => match read_small(got, 4096).await {
                Ok(Some(raw)) => raw,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(record = %at, error = %e, "an upload record not read");
                    return None;
                }
            },
            // Removed since the listing (its upload finished or was aborted meanwhile).
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => {
                tracing::warn!(record = %at, error = %e, "an upload record not read");
                return None;
            }
        };
        let record = self
            .open_small(at, &raw)
            .ok()
            .and_then(|text| serde_json::from_slice::<UploadRecord>(&text).ok());
        let Some(r) = record else {
            tracing::warn!(record = %at, "not an upload record: left as it is");
            return None;
        };
        let here = format!("{}/", self.root.as_ref());
        let ours = r.object.strip_prefix(&here).is_some_and(|rest| {
            !rest.contains('/') && rest.ends_with(".zstream") && rest.len() > ".zstream".len()
        });
        if !ours || *at != self.record_of(&r.upload_id) {
            tracing::warn!(record = %at, "an upload record of another object: left as it is");
            return None;
        }
        Some(r)
    }

    /// Another node's upload of this project whose record is younger than `fresh` (it stored
    /// a part lately): that node's name and the object. Best effort: nothing when the records
    /// cannot be read.
    pub async fn uploading_elsewhere(
        &self,
        node: &str,
        fresh: std::time::Duration,
    ) -> Option<(String, String)> {
        let young: Vec<_> = self
            .recorded_uploads()
            .await
            .ok()?
            .into_iter()
            .filter(|(_, age)| *age < fresh)
            .take(MAX_UPLOAD_RECORDS)
            .collect();
        for (meta, _) in young {
            if let Some(r) = self.read_record(&meta.location).await
                && r.node != node
            {
                return Some((node_name(&r.node).to_owned(), r.object));
            }
        }
        None
    }

    /// Aborts the uploads the bucket records whose record is at least `grace` old: at most
    /// [`MAX_UPLOAD_RECORDS`] records read per call, starting at a place that moves with the
    /// clock (records left standing, not ours or not abortable, never starve the others).
    async fn abort_recorded_uploads(&self, grace: std::time::Duration) -> Result<(), BackupError> {
        let old: Vec<_> = self
            .recorded_uploads()
            .await?
            .into_iter()
            .filter(|(_, age)| *age >= grace)
            .collect();
        let start = (chrono::Utc::now().timestamp().unsigned_abs() as usize) % old.len().max(1);
        let turn = old
            .iter()
            .cycle()
            .skip(start)
            .take(old.len().min(MAX_UPLOAD_RECORDS));
        for (meta, _) in turn {
            let Some(r) = self.read_record(&meta.location).await else {
                continue;
            };
            let node = node_name(&r.node);
            match self.abort_upload(&r.object, &r.upload_id).await {
                Ok(()) => {
                    tracing::info!(object = %r.object, node, "an upload no host finished aborted")
                }
                Err(e) => {
                    tracing::warn!(object = %r.object, error = %e, "cannot abort an upload no host finished")
                }
            }
        }
        Ok(())
    }

    /// Records upload `upload_id` of object `path`, begun by `node`, in the bucket (sealed when
    /// the target has a key), or records it again: its record's age is how long since the
    /// upload last stored a part (give or take [`RECORD_REFRESH`]).
    async fn record_upload(
        &self,
        path: &Path,
        upload_id: &str,
        node: &str,
    ) -> Result<(), BackupError> {
        let record = UploadRecord {
            object: path.as_ref().to_owned(),
            upload_id: upload_id.to_owned(),
            node: node.to_owned(),
        };
        let text = serde_json::to_vec(&record).map_err(|e| BackupError::Local(e.to_string()))?;
        self.put_small(&self.record_of(upload_id), &text).await
    }

    /// Where upload `upload_id` is recorded.
    fn record_of(&self, upload_id: &str) -> Path {
        let digest = hex::encode(Sha256::digest(upload_id.as_bytes()));
        self.object(UPLOADS).join(format!("{}.json", &digest[..32]))
    }

    /// Aborts a multipart upload (one the service no longer knows counts as aborted), then
    /// forgets its record.
    async fn abort_upload(&self, object: &str, upload_id: &str) -> object_store::Result<()> {
        match self
            .store
            .abort_multipart(&Path::from(object), &upload_id.to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.forget_upload(upload_id).await;
        Ok(())
    }

    /// Removes the record of an upload that was completed or aborted.
    async fn forget_upload(&self, upload_id: &str) {
        match self.store.delete(&self.record_of(upload_id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(project = %self.project, error = %e, "cannot remove an upload's record")
            }
        }
    }

    /// An opener for the stream object of `id` when the target seals.
    pub fn opener(&self, id: &StreamId) -> Option<Opener> {
        self.key
            .as_ref()
            .map(|k| Opener::new(k.clone(), self.object(&id.file_name()).as_ref()))
    }

    /// Removes a superseded stream: its manifest first (so the stream leaves the chain), then
    /// the object.
    pub async fn delete(&self, id: &StreamId) -> Result<(), BackupError> {
        for name in [id.manifest_name(), id.file_name()] {
            match self.store.delete(&self.object(&name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(BackupError::store(e)),
            }
        }
        Ok(())
    }

    /// Uploads `snap` (incremental from `from`) as stream `id`: `zfs send` straight into a
    /// multipart upload (sealed on the way when the target has a key), then the manifest.
    /// An upload cut off (the agent killed, the service gone) goes on from its last stored
    /// part on the next try: `state` remembers the upload and each part's plaintext digest,
    /// and parts whose plaintext comes out of `zfs send` the same again are not sent again.
    pub async fn upload(
        &self,
        up: &Upload<'_>,
        progress: &Progress,
    ) -> Result<ObjectManifest, BackupError> {
        let path = self.object(&up.id.file_name());
        let sealing = self.key.as_ref().map(SealKey::id);
        let mut state = match UploadState::load(&up.state_file) {
            // Only the very upload goes on: same object of the same bucket, same snapshot,
            // parts sealed with the same key (or none).
            Some(s)
                if s.object == path.as_ref()
                    && s.place == self.place
                    && s.to_guid == up.manifest.to.guid
                    && s.sealed_with == sealing
                    && !s.stuck() =>
            {
                // Recorded again: its record's age counts from now, not from when it began.
                if let Err(e) = self
                    .record_upload(&path, &s.upload_id, &up.manifest.node)
                    .await
                {
                    tracing::warn!(object = %path, error = %e, "cannot record a resumed upload again");
                }
                s
            }
            Some(stale) => {
                // (An upload to another bucket is not this service's to abort.)
                if stale.place == self.place {
                    let _ = self.abort_upload(&stale.object, &stale.upload_id).await;
                }
                UploadState::remove(&up.state_file);
                self.begin(&path, up).await?
            }
            None => self.begin(&path, up).await?,
        };
        let resumed = state.parts.len();
        let upload_id = state.upload_id.clone();
        let part = state.part.clamp(PART, MAX_PART);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let send = up.zfs.send_chunks(up.snap, up.from, up.flags, tx);
        let store = self.store.clone();
        let upload = async {
            let mut whole = Sha256::new();
            let mut part_hash = Sha256::new();
            let mut plain_in_part = 0usize;
            let mut total = 0u64;
            let mut sealer = self
                .key
                .as_ref()
                .map(|k| Sealer::new(k.clone(), path.as_ref()));
            let mut out = BytesMut::new();
            let mut recorded = std::time::Instant::now();
            let mut parts = Parts {
                store: store.clone(),
                path: &path,
                state: &mut state,
                state_file: &up.state_file,
                hold: up.hold.as_deref(),
                done: Vec::new(),
                sending: futures::stream::FuturesOrdered::new(),
                stored: 0,
            };
            // A `zfs send` that gives nothing for this long (a pool whose I/O hangs) ends the
            // upload: it would otherwise hold one of the host's upload turns for good.
            loop {
                let Ok(next) = tokio::time::timeout(crate::live::STALL, rx.recv()).await else {
                    return Err(BackupError::Local(format!(
                        "zfs send gave nothing for {:?}",
                        crate::live::STALL
                    )));
                };
                let Some(chunk) = next else {
                    break;
                };
                progress.add(chunk.len());
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    // A full part ends once more plaintext follows it (sealed, its last chunk
                    // is then known not to be the object's last).
                    if plain_in_part == part {
                        if let Some(s) = &mut sealer {
                            s.more_follows(&mut out).map_err(BackupError::Bucket)?;
                        }
                        let digest = std::mem::take(&mut part_hash).finalize();
                        parts
                            .end(hex::encode(digest), std::mem::take(&mut out))
                            .await?;
                        // While it stores parts, its record stays young: no other host's
                        // backup takes it for abandoned.
                        if recorded.elapsed() >= self.record_refresh {
                            if let Err(e) = self
                                .record_upload(&path, &upload_id, &up.manifest.node)
                                .await
                            {
                                tracing::warn!(object = %path, error = %e, "cannot record an upload again");
                            }
                            recorded = std::time::Instant::now();
                        }
                        plain_in_part = 0;
                    }
                    let take = rest.len().min(part - plain_in_part);
                    let (now, later) = rest.split_at(take);
                    whole.update(now);
                    part_hash.update(now);
                    total += take as u64;
                    plain_in_part += take;
                    match &mut sealer {
                        Some(s) => s.update(now, &mut out).map_err(BackupError::Bucket)?,
                        None => out.extend_from_slice(now),
                    }
                    rest = later;
                }
            }
            if total == 0 {
                return Err(BackupError::Bucket("zfs send gave no stream".into()));
            }
            if let Some(s) = sealer.take() {
                s.finish(&mut out).map_err(BackupError::Bucket)?;
            }
            let digest = part_hash.finalize();
            parts.end(hex::encode(digest), out).await?;
            let (done, stored) = parts.finish().await?;
            Ok::<_, BackupError>((done, total, stored, hex::encode(whole.finalize())))
        };
        // The first side to fail ends the other: a `zfs send` is killed when its upload
        // failed, and an upload stops when its `zfs send` failed or went silent.
        let send = async { send.await.map_err(BackupError::from) };
        let (sent, (parts, total, stored, sha256)) = match tokio::try_join!(send, upload) {
            Ok(done) => done,
            Err(e) => {
                if matches!(e, BackupError::Changed(_)) || upload_gone(&e) {
                    let _ = self.abort_upload(path.as_ref(), &state.upload_id).await;
                    UploadState::remove(&up.state_file);
                }
                return Err(e);
            }
        };
        if sent != total {
            return Err(BackupError::Bucket(format!(
                "zfs send gave {sent} bytes, {total} were uploaded"
            )));
        }
        if let Err(e) = self
            .store
            .complete_multipart(&path, &state.upload_id, parts)
            .await
        {
            let e = BackupError::store(e);
            if upload_gone(&e) {
                UploadState::remove(&up.state_file);
                self.forget_upload(&state.upload_id).await;
            } else {
                // Every part is stored and the service will not make the object of them:
                // after MAX_RESUMES such refusals the upload starts afresh.
                state.refused += 1;
                state.save(&up.state_file)?;
            }
            return Err(e);
        }
        let manifest = ObjectManifest {
            stream: Manifest {
                bytes: total,
                sha256,
                ..up.manifest.clone()
            },
            stored_bytes: stored,
            encrypted: self.key.is_some(),
        };
        self.put_manifest(up.id, &manifest).await?;
        UploadState::remove(&up.state_file);
        self.forget_upload(&state.upload_id).await;
        if resumed > 0 {
            tracing::info!(object = %path, parts = resumed, "upload resumed after its stored parts");
        }
        Ok(manifest)
    }

    async fn begin(&self, path: &Path, up: &Upload<'_>) -> Result<UploadState, BackupError> {
        let upload_id = self
            .store
            .create_multipart(path)
            .await
            .map_err(BackupError::store)?;
        // Recorded in the bucket before any part is stored: whichever host's backup succeeds
        // next aborts it should this host never finish it.
        if let Err(e) = self
            .record_upload(path, &upload_id, &up.manifest.node)
            .await
        {
            let _ = self.store.abort_multipart(path, &upload_id).await;
            return Err(e);
        }
        let state = UploadState {
            object: path.as_ref().to_owned(),
            place: self.place.clone(),
            sealed_with: self.key.as_ref().map(SealKey::id),
            upload_id,
            to_guid: up.manifest.to.guid.clone(),
            parts: Vec::new(),
            refused: 0,
            part: part_size(up.bound),
        };
        state.save(&up.state_file)?;
        Ok(state)
    }
}

/// Whether the service no longer knows the multipart upload (aborted by a lifecycle rule, or
/// never of this bucket): the next try starts a new one.
fn upload_gone(e: &BackupError) -> bool {
    matches!(e, BackupError::Target(r) if r.message.contains("NoSuchUpload"))
}

/// Parts sent at once: while one travels, `zfs send`, sealing and hashing make the next (and
/// the service gets two requests to work on).
const IN_FLIGHT: usize = 2;

/// A part on its way (a task of its own, so it travels while the next part is made): its
/// plaintext digest and the service's id of it.
/// A part's upload, stopped when the upload it belongs to is dropped (a job stopped must not
/// leave parts landing after a later try stored the same part anew).
struct PartOnItsWay(tokio::task::JoinHandle<Result<(String, PartId), BackupError>>);

impl Drop for PartOnItsWay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for PartOnItsWay {
    type Output = Result<Result<(String, PartId), BackupError>, tokio::task::JoinError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

/// The parts of one multipart upload as they end.
struct Parts<'a> {
    store: Arc<AmazonS3>,
    path: &'a Path,
    state: &'a mut UploadState,
    state_file: &'a std::path::Path,
    hold: Option<&'a std::path::Path>,
    /// Stored parts, in order (each also in `state`).
    done: Vec<PartId>,
    /// Sent parts not yet answered, in order.
    sending: futures::stream::FuturesOrdered<PartOnItsWay>,
    stored: u64,
}

impl Parts<'_> {
    /// Ends the next part, `body` (its plaintext's SHA-256 `digest`): skipped when an earlier
    /// try stored the same plaintext, else uploaded and remembered.
    async fn end(&mut self, digest: String, body: BytesMut) -> Result<(), BackupError> {
        let index = self.done.len() + self.sending.len();
        if index >= MAX_PARTS {
            return Err(BackupError::Changed(format!(
                "{} outgrew {MAX_PARTS} parts of {} bytes: the stream is far larger than its snapshot's size",
                self.path,
                body.len()
            )));
        }
        self.stored += body.len() as u64;
        match self.state.parts.get(index) {
            Some(p) if p.sha256 == digest => {
                self.done.push(PartId {
                    content_id: p.etag.clone(),
                });
            }
            Some(_) => {
                return Err(BackupError::Changed(format!(
                    "part {index} of {} differs from the interrupted upload's",
                    self.path
                )));
            }
            None => {
                let (store, path) = (self.store.clone(), self.path.clone());
                let upload_id = self.state.upload_id.clone();
                self.sending
                    .push_back(PartOnItsWay(tokio::spawn(async move {
                        let id = store
                            .put_part(&path, &upload_id, index, PutPayload::from(body.freeze()))
                            .await
                            .map_err(BackupError::store)?;
                        Ok((digest, id))
                    })));
                while self.sending.len() >= IN_FLIGHT {
                    self.settle().await?;
                }
            }
        }
        Ok(())
    }

    /// Waits for the oldest part sent, and remembers it (in order: a resumed upload goes on
    /// after the parts stored before the cut).
    async fn settle(&mut self) -> Result<(), BackupError> {
        use futures::StreamExt;
        let Some(answer) = self.sending.next().await else {
            return Ok(());
        };
        let (digest, id) =
            answer.map_err(|e| BackupError::Local(format!("a part's upload ended: {e}")))??;
        self.state.parts.push(DonePart {
            sha256: digest,
            etag: id.content_id.clone(),
        });
        self.state.save(self.state_file)?;
        self.done.push(id);
        // The end-to-end tests' fault hook: an upload cut off half-way.
        while self.hold.is_some_and(std::path::Path::exists) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Every part sent answered: the parts, in order.
    async fn finish(mut self) -> Result<(Vec<PartId>, u64), BackupError> {
        while !self.sending.is_empty() {
            self.settle().await?;
        }
        Ok((self.done, self.stored))
    }
}

/// What to upload: the snapshot (and base) to send, the manifest to write (its `bytes` and
/// `sha256` filled in by the upload), and the file that lets a cut-off upload go on.
pub struct Upload<'a> {
    pub zfs: &'a Zfs,
    pub id: &'a StreamId,
    pub snap: &'a SnapshotName,
    pub from: Option<&'a SnapshotName>,
    pub flags: SendFlags,
    pub manifest: Manifest,
    pub state_file: PathBuf,
    /// A fault hook for the end-to-end tests: while this file exists, the upload waits after
    /// each part it stored ([`HOLD_UPLOAD`] under the agent's run directory).
    pub hold: Option<PathBuf>,
    /// About how large the stream can be (the snapshot's size): parts grow with it.
    pub bound: u64,
}

/// A node's name from the bucket, as Kubernetes allows it, else not repeated.
fn node_name(node: &str) -> &str {
    if node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        node
    } else {
        "(not a node name)"
    }
}

/// An object of at most `max` bytes, whole; None when it is larger. Its body is read only
/// that far, whatever size the service declared.
async fn read_small(
    got: object_store::GetResult,
    max: usize,
) -> Result<Option<Bytes>, BackupError> {
    use futures::StreamExt;
    if got.meta.size > max as u64 {
        return Ok(None);
    }
    let mut body = got.into_stream();
    let mut raw = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(BackupError::store)?;
        if raw.len() + chunk.len() > max {
            return Ok(None);
        }
        raw.extend_from_slice(&chunk);
    }
    Ok(Some(raw.freeze()))
}

/// An ETag as it names a version: without the weak mark and quotes some layers add.
fn same_version(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

/// Bytes `range` of the object at `path`, in full and no more, of version `version`.
async fn read_range(
    store: Arc<AmazonS3>,
    path: Path,
    range: std::ops::Range<u64>,
    version: Option<String>,
) -> object_store::Result<Bytes> {
    use futures::StreamExt;
    let want = range.end - range.start;
    let opts = object_store::GetOptions {
        range: Some(object_store::GetRange::Bounded(range.clone())),
        if_match: version.clone(),
        ..Default::default()
    };
    let odd = |why: String| object_store::Error::Generic {
        store: "bucket",
        source: format!("{path} bytes {}..{}: {why}", range.start, range.end).into(),
    };
    let got = store.get_opts(&path, opts).await?;
    // A service that ignores If-Match still names the version it sent.
    if let Some(v) = &version
        && got.meta.e_tag.as_deref().map(same_version) != Some(same_version(v))
    {
        return Err(odd(format!(
            "the object changed while it was read (version {:?}, then {:?})",
            version, got.meta.e_tag
        )));
    }
    let mut body = got.into_stream();
    let mut got = BytesMut::with_capacity(usize::try_from(want).unwrap_or(0));
    while let Some(piece) = body.next().await {
        let piece = piece?;
        if (got.len() + piece.len()) as u64 > want {
            return Err(odd("the service sent more than was asked for".into()));
        }
        got.extend_from_slice(&piece);
    }
    if (got.len() as u64) < want {
        return Err(odd(format!("the service sent only {} bytes", got.len())));
    }
    Ok(got.freeze())
}

/// The upload fault hook's file under an agent's run directory.
pub const HOLD_UPLOAD: &str = "faults/hold-backup-upload";

/// A multipart upload under way, kept on the host (the agent's run directory) so an agent
/// restarted mid-upload goes on with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadState {
    object: String,
    place: String,
    sealed_with: Option<String>,
    upload_id: String,
    to_guid: String,
    parts: Vec<DonePart>,
    /// Times the service refused to make the object of every part stored (it starts afresh
    /// after [`MAX_RESUMES`]: an upload the service will not complete must not block backups,
    /// while one cut off however often goes on from its parts).
    #[serde(default)]
    refused: u32,
    /// Plaintext bytes per part (a resumed upload keeps its own).
    #[serde(default = "default_part")]
    part: usize,
}

fn default_part() -> usize {
    PART
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DonePart {
    sha256: String,
    etag: String,
}

impl UploadState {
    /// The service refused to complete it [`MAX_RESUMES`] times.
    fn stuck(&self) -> bool {
        self.refused >= MAX_RESUMES
    }

    fn load(file: &std::path::Path) -> Option<Self> {
        let text = std::fs::read(file).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save(&self, file: &std::path::Path) -> Result<(), BackupError> {
        let io = |e: std::io::Error| {
            BackupError::Local(format!("cannot write upload state {}: {e}", file.display()))
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = file.with_extension("tmp");
        let text = serde_json::to_vec(self).map_err(|e| BackupError::Local(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, file).map_err(io)
    }

    fn remove(file: &std::path::Path) {
        let _ = std::fs::remove_file(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_a_stream_four_times_its_bound_fits_in_the_parts_s3_allows() {
        assert_eq!(part_size(0), PART);
        assert_eq!(part_size(10 << 30), PART, "10 GiB: 8 MiB parts do");
        for bound in [100u64 << 30, 1 << 40, 10 << 40] {
            let p = part_size(bound) as u64;
            assert!(p.is_multiple_of(1 << 20));
            assert!(4 * bound / p < MAX_PARTS as u64, "{bound}: {p}");
        }
        assert_eq!(part_size(u64::MAX), MAX_PART);
        // State files of before keep the part size they were cut in.
        let old: UploadState = serde_json::from_str(
            r#"{"object":"o","place":"p","sealedWith":null,"uploadId":"u","toGuid":"1","parts":[]}"#,
        )
        .unwrap();
        assert_eq!(old.part, PART);
    }

    #[test]
    fn etags_name_the_same_version_however_quoted() {
        assert_eq!(same_version("\"abc-2\""), same_version("abc-2"));
        assert_eq!(same_version("W/\"abc\""), "abc");
        assert_ne!(same_version("\"abc\""), same_version("\"abd\""));
    }

    #[test]
    fn an_upload_is_given_up_only_after_the_service_refused_to_complete_it() {
        let mut s: UploadState = serde_json::from_str(
            r#"{"object":"o","place":"p","sealedWith":null,"uploadId":"u","toGuid":"1","parts":[]}"#,
        )
        .unwrap();
        assert!(!s.stuck(), "a state file of before goes on");
        for _ in 1..MAX_RESUMES {
            s.refused += 1;
            assert!(!s.stuck());
        }
        s.refused += 1;
        let again: UploadState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert!(again.stuck(), "the count survives a restart");
    }
}

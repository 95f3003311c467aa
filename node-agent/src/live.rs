//! Live replication (DESIGN §5.4): a snapshot goes straight from the source's `zfs send` to
//! the receiver's `zfs recv` over the agents' mutual-TLS channel, and is stored nowhere on
//! the way.
//!
//! The source answers `GET /v1/send/<ns>/<name>?to=<guid>[&from=<guid>][&flags=<cLew>]` (the
//! `zfs send -c/-L/-e/-w` flags the receiver's ZFS takes; the source adds those of `-c/-L/-e`
//! its own has, and sends raw (`-w`) exactly when the dataset is encrypted, refusing a
//! receiver that cannot take raw sends; see [`raw_if_encrypted`]) with the stream as it comes out of `zfs send` (one snapshot: `-i`, never a compound `-I`/`-R` stream, whose
//! snapshots would commit one by one before the whole is verified), and its BLAKE3 digest
//! (twice as fast as SHA-256 with the CPU's SHA extensions, and both ends hash every byte)
//! and length in HTTP trailers after the data
//! ([`DIGEST_TRAILER`], [`BYTES_TRAILER`]; a send that fails says why in
//! [`ERROR_TRAILER`] instead). The receiver hashes what arrives while it feeds `zfs recv`,
//! but withholds the stream's last [`WITHHELD`] bytes — which hold its END record, without
//! which ZFS commits nothing — until the trailers arrive and agree. Anything else (a digest
//! that differs, a length that differs, no trailers, a cut connection) ends the receive's input
//! before its END record, and `zfs recv` fails and cleans up: a truncated, corrupted or
//! substituted stream never commits.
//! The receiver also reads the stream's BEGIN record before anything reaches `zfs recv`: it
//! must be a plain stream of exactly the snapshot asked for, from exactly the base asked for,
//! not a clone and carrying no properties, so even a source that was taken over cannot make
//! the receiver clone another project's snapshot or set properties. A receive is always
//! unmounted (`-u`), and the snapshot asked for must be there afterwards.
//! `GET /v1/snapshots/<ns>/<name>` lists the source's snapshots, so the receiver can find
//! the newest one they have in common (by GUID), then step from it one snapshot at a time.
//! A source runs at most [`MAX_SENDS`] `zfs send`s at once; receivers that ask for the same
//! stream at about the same time share one ([`fanout`]: the snapshot is read and hashed once,
//! not once per copy). It drops a receiver that takes no data for [`STALL`]; a receiver
//! drops a source that sends less than [`crate::fetch::MIN_PACE`] in as long.
//!
//! Where ZFS resumes receives (OpenZFS), receives run with `zfs recv -s`: a send that is cut
//! off ([`LiveError::Cut`]) keeps what arrived, and the next request for exactly that send
//! carries the target's resume token (`&resume=<token>`). The source reads the token
//! (`zfs send -nvt`) and sends only when it names this project's dataset, the snapshot
//! asked for and its base ([`crate::zfs::ResumeToken::check_for`]), else answers 409; it
//! then runs `zfs send -t`. The resumed stream is checked like any other — its BEGIN record
//! must say it resumes exactly that send, and its END record is withheld until its digest
//! agrees — while the part received before the cut was checked by ZFS's own per-record
//! checksums as it arrived over the authenticated channel. A stream refused for anything but
//! a cut drops the partial state (`zfs recv -A`), so a corrupt send never resumes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::fetch::{FetchError, Peer};
use crate::streams::ProjectKey;
use crate::zfs::{DatasetName, Progress, RecvOptions, SendFlags, SnapshotInfo, Zfs, ZfsError};

mod fanout;
use fanout::SendKey;

/// Trailer: the BLAKE3 digest of the stream, hex.
pub const DIGEST_TRAILER: &str = "x-projstore-blake3";
/// Trailer: the stream's length in bytes.
pub const BYTES_TRAILER: &str = "x-projstore-bytes";
/// Trailer instead of the digest: why the send failed.
pub const ERROR_TRAILER: &str = "x-projstore-error";

/// Bytes at the end of a stream held back from `zfs recv` until the stream is verified. A
/// stream ends with its END record (one 312-byte `dmu_replay_record`); without it a receive
/// commits nothing. Many times that, so no framing detail can let the END record through.
pub const WITHHELD: usize = 64 << 10;

/// What a receive hands `zfs recv` at a time, about.
const FEED_CHUNK: usize = 1 << 20;

/// Room in a receive's gathering buffer: a chunk, the withheld tail and a frame beyond them
/// (hyper's frames stay below about 400 KiB as a rule), so the buffer seldom grows by copying;
/// a larger frame only costs that copy.
const GATHER: usize = FEED_CHUNK + WITHHELD + (512 << 10);

/// The largest snapshot list read from a peer.
const MAX_LIST_BYTES: usize = 16 << 20;

/// Sends a host serves at once (each a `zfs send` and some megabytes of buffers).
pub const MAX_SENDS: usize = 8;
/// What one peer node may have running here, counting the sends it joined and the requests
/// still being checked: one node alone cannot keep every other from this host's sends.
pub const MAX_SENDS_PER_PEER: usize = MAX_SENDS / 2;
/// How long either end waits for the other to take or give data before giving up.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(300);

/// The size of a stream record (`dmu_replay_record_t`), BEGIN and END among them.
pub const RECORD: usize = 312;
/// `DMU_BACKUP_MAGIC`, the BEGIN record's magic number.
const BACKUP_MAGIC: u64 = 0x2F5B_ACBAC;
/// `DRR_FLAG_CLONE`: the stream would create a clone of a snapshot named by GUID.
const FLAG_CLONE: u32 = 1;
/// `DMU_BACKUP_FEATURE_RESUMING` (in the BEGIN record's feature flags): a resumed send.
const FEATURE_RESUMING: u64 = 1 << 20;
/// `DMU_BACKUP_FEATURE_RAW`: a raw send (`zfs send -w`) of an encrypted dataset.
const FEATURE_RAW: u64 = 1 << 24;
/// The largest BEGIN payload let through: that of a resumed send (where it resumes) or a raw
/// one (the wrapped key's parameters) is a few hundred bytes.
const MAX_BEGIN_PAYLOAD: usize = 64 << 10;

/// Why a live transfer did not commit.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Peer(#[from] FetchError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    /// The stream did not arrive as the source sent it: never applied.
    #[error("stream from {endpoint} not applied: {reason}")]
    Unverified { endpoint: String, reason: String },
    /// The stream stopped before its end (connection lost, source silent): nothing
    /// committed, but what arrived may be kept to resume from (OpenZFS).
    #[error("stream from {endpoint} cut off: {reason}")]
    Cut { endpoint: String, reason: String },
    /// The source answered the request with an HTTP error instead of a stream.
    #[error("{endpoint}: HTTP {status}: {reason}")]
    Refused {
        endpoint: String,
        status: u16,
        reason: String,
    },
}

impl LiveError {
    /// Whether what a resumable receive kept may be resumed after this failure: after a cut,
    /// a source that could not be reached or was busy (its 5xx) — never after a stream that
    /// was refused (its digest, its BEGIN record, ZFS itself) or a source that refused to
    /// resume it (its 4xx).
    pub fn keeps_partial(&self) -> bool {
        match self {
            Self::Cut { .. } | Self::Peer(FetchError::Peer { .. }) => true,
            Self::Refused { status, .. } => *status >= 500,
            Self::Peer(_) | Self::Zfs(_) | Self::Unverified { .. } => false,
        }
    }
}

/// What the stream server needs to serve live sends: ZFS, and where this host keeps a
/// project's live dataset (None: not here).
#[derive(Clone)]
pub struct Sources {
    pub zfs: Zfs,
    pub locate: Locate,
    slots: Arc<tokio::sync::Semaphore>,
    /// The sends each peer node has running here.
    per_peer: Arc<crate::server::PeerSlots<String>>,
    /// Requests whose checks (`zfs` commands) run at once: as many as may join or start sends.
    checking: Arc<tokio::sync::Semaphore>,
    /// The sends others may join (see [`fanout`]).
    fanout: Arc<fanout::Fanout>,
    /// The fault hooks of the end-to-end tests, files under the agent's run directory that only
    /// root on this host can make: [`FLIP_NEXT_SEND`], [`HOLD_SENDS`].
    fault: Option<std::path::PathBuf>,
}

/// A fault hook (see [`Sources`]): while this file exists, the next send flips one byte after
/// hashing it (and removes the file), as a corrupting network would. The receiver's check
/// refuses such a stream.
pub const FLIP_NEXT_SEND: &str = "faults/flip-next-send";

/// A fault hook (see [`Sources`]): while this file exists, sends wait before `zfs send` starts,
/// as a source whose disks are slow would; their receivers wait, holding their receive slots.
pub const HOLD_SENDS: &str = "faults/hold-sends";

/// The live dataset of a project on this host, if it has one.
pub type Locate = Arc<
    dyn Fn(ProjectKey) -> futures::future::BoxFuture<'static, Option<DatasetName>> + Send + Sync,
>;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).boxed());
    *r.status_mut() = code;
    r
}

/// A snapshot as the source lists it (`GET /v1/snapshots/…`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveSnapshot {
    pub name: String,
    /// Decimal string: 64-bit GUIDs do not survive JSON numbers in every reader.
    pub guid: String,
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub time: i64,
    /// Bytes the snapshot refers to: what a full send of it carries, roughly.
    #[serde(default)]
    pub referenced: u64,
    /// Bytes only it holds (`used`): what was overwritten or deleted after it and before the
    /// next snapshot, roughly.
    #[serde(default)]
    pub used: u64,
}

impl LiveSnapshot {
    pub fn of(s: &SnapshotInfo) -> Self {
        let prop = |name: &str| {
            s.properties
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            name: s.name.clone(),
            guid: s.guid.to_string(),
            createtxg: s.createtxg,
            time: s.creation,
            referenced: prop("referenced"),
            used: prop("used"),
        }
    }

    /// Its GUID, when it is a number.
    pub fn guid(&self) -> Option<u64> {
        self.guid.parse().ok()
    }
}

/// What a send from `from` (None: full) to `to`, the next snapshot, carries, roughly, for
/// progress: `zfs send -n` is not everywhere, and the `written` property neither. What `to`
/// holds that `from` did not: `to` refers to what `from` referred to, less what was removed
/// since (which only `from` now holds, its `used`, when no older snapshot shares it), plus
/// what was written. So an overwrite counts, where the difference of `referenced` alone
/// would not see it.
pub fn estimate(from: Option<&LiveSnapshot>, to: &LiveSnapshot) -> u64 {
    match from {
        None => to.referenced,
        Some(f) => to
            .referenced
            .saturating_add(f.used)
            .saturating_sub(f.referenced),
    }
    .max(RECORD as u64 * 2)
}

/// A send request's query: `to=<guid>[&from=<guid>][&flags=<cLew>][&resume=<token>]` — the
/// snapshot, its base, the optional `zfs send` flags the receiver can take (the source uses
/// those it has too), and the receiver's resume token when a resumable receive of exactly
/// this send was cut off (OpenZFS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendQuery {
    pub from: Option<u64>,
    pub to: u64,
    pub flags: SendFlags,
    pub resume: Option<String>,
}

/// The flags a send of a dataset uses, from those the receiver `asked` for: raw (`-w`) exactly
/// when the dataset is `encrypted` — its blocks leave the host as encrypted on disk, and its
/// key never does — and refused when the receiver cannot take raw sends.
pub fn raw_if_encrypted(asked: SendFlags, encrypted: bool) -> Result<SendFlags, String> {
    if encrypted && !asked.raw {
        return Err(
            "the dataset is encrypted and is only sent raw (zfs send -w), which the receiver \
             did not ask for: its ZFS cannot receive raw sends"
                .into(),
        );
    }
    Ok(SendFlags {
        raw: encrypted,
        ..asked
    })
}

/// Reads a send request's query ([`SendQuery`]); nothing else is accepted.
pub fn parse_send_query(query: &str) -> Result<SendQuery, String> {
    let (mut from, mut to, mut flags, mut resume) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected key=value"))?;
        if k == "resume" {
            crate::zfs::resume::check_token_text(v)?;
            if resume.replace(v.to_owned()).is_some() {
                return Err("resume given twice".into());
            }
            continue;
        }
        if k == "flags" {
            if flags.replace(SendFlags::parse_letters(v)?).is_some() {
                return Err("flags given twice".into());
            }
            continue;
        }
        let guid = (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| format!("{k}={v:?}: a snapshot GUID is a decimal number"))?;
        let slot = match k {
            "from" => &mut from,
            "to" => &mut to,
            _ => {
                return Err(format!(
                    "unknown parameter {k:?} (expected to, from, flags, resume)"
                ));
            }
        };
        if slot.replace(guid).is_some() {
            return Err(format!("{k} given twice"));
        }
    }
    Ok(SendQuery {
        from,
        to: to.ok_or("to=<guid> is required")?,
        flags: flags.unwrap_or_default(),
        resume,
    })
}

impl Sources {
    pub fn new(zfs: Zfs, locate: Locate) -> Self {
        Self {
            zfs,
            locate,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS)),
            per_peer: Arc::default(),
            checking: Arc::new(tokio::sync::Semaphore::new(2 * MAX_SENDS)),
            fanout: Arc::default(),
            fault: None,
        }
    }

    /// Receivers may join a send for `join_time` after it started instead of
    /// [`fanout::JOIN_TIME`] (tests, where requests come at their own pace).
    pub fn with_join_time(mut self, join_time: std::time::Duration) -> Self {
        self.fanout = Arc::new(fanout::Fanout::with_join_time(join_time));
        self
    }

    /// How many `zfs send`s this source started for live sends (receivers that joined one
    /// started none).
    pub fn sends_started(&self) -> u64 {
        self.fanout.sends_started()
    }

    /// Arms the fault hooks: [`FLIP_NEXT_SEND`] and [`HOLD_SENDS`] under `run_dir`.
    pub fn with_fault_hooks(mut self, run_dir: &std::path::Path) -> Self {
        self.fault = Some(run_dir.to_path_buf());
        self
    }

    /// `GET /v1/snapshots/<ns>/<name>`: the project's snapshots here, oldest first.
    pub async fn snapshots(&self, project: ProjectKey) -> Response<Body> {
        let Some(ds) = (self.locate)(project.clone()).await else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no live copy of {project} here"),
            );
        };
        let sizes: Vec<_> = ["referenced", "used"]
            .into_iter()
            .filter_map(|p| crate::zfs::PropertyName::parse(p).ok())
            .collect();
        let extra: Vec<&crate::zfs::PropertyName> = sizes.iter().collect();
        match self.zfs.snapshots(&ds, &extra).await {
            Ok(snaps) => {
                let list: Vec<LiveSnapshot> = snaps.iter().map(LiveSnapshot::of).collect();
                let mut r = Response::new(
                    Full::new(Bytes::from(serde_json::to_vec(&list).unwrap_or_default())).boxed(),
                );
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                r
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// `GET /v1/send/<ns>/<name>?to=<guid>[&from=<guid>]`: `zfs send` of snapshot `to`
    /// (incremental from `from`, with every snapshot between), streamed as it is made, digest
    /// and length in trailers.
    pub async fn send(&self, project: ProjectKey, peer: &str, query: &str) -> Response<Body> {
        let SendQuery {
            from,
            to,
            flags,
            resume,
        } = match parse_send_query(query) {
            Ok(q) => q,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let busy = || {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{MAX_SENDS} sends already run here, or {MAX_SENDS_PER_PEER} for this node: \
                     try again later"
                ),
            )
        };
        // Each node's requests, from their checks to the end of what they receive (a send of
        // their own or one they joined), count against its share.
        let Some(mine) = self
            .per_peer
            .take_up_to(peer.to_owned(), MAX_SENDS_PER_PEER)
        else {
            return busy();
        };
        let Ok(_checking) = self.checking.clone().try_acquire_owned() else {
            return busy();
        };
        let Some(ds) = (self.locate)(project.clone()).await else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no live copy of {project} here"),
            );
        };
        let snaps = match self.zfs.snapshots(&ds, &[]).await {
            Ok(s) => s,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let by_guid = |g: u64| snaps.iter().find(|s| s.guid == g);
        let Some(to) = by_guid(to) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{project} has no snapshot {to} here"),
            );
        };
        let from = match from.map(|g| by_guid(g).ok_or(g)).transpose() {
            Ok(f) => f,
            Err(g) => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("{project} has no snapshot {g} here"),
                );
            }
        };
        if from.is_some_and(|f| f.createtxg >= to.createtxg) {
            return text(StatusCode::BAD_REQUEST, "from must be older than to");
        }
        // An encrypted dataset is sent raw, or not at all; of the other flags, those this
        // host's ZFS has too (what `zfs send` will run with, so the same stream has one key).
        let flags = match self.zfs.encrypted(&ds).await {
            Ok(encrypted) => match raw_if_encrypted(flags, encrypted) {
                Ok(f) => f.both(self.zfs.capabilities().send_flags()),
                Err(e) => return text(StatusCode::CONFLICT, e),
            },
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if let Some(token) = &resume {
            // The token comes from the peer: it must resume exactly the send asked for, of
            // this project (raw when the dataset is encrypted), or nothing is sent.
            let checked = match self.zfs.describe_resume_token(token).await {
                Ok(t) if t.raw != flags.raw => Err(format!(
                    "the resume token continues a {} send, this dataset is sent {}",
                    if t.raw { "raw" } else { "plain" },
                    if flags.raw { "raw" } else { "plain" }
                )),
                Ok(t) => t.check_for(&ds, &to.name, to.guid, from.map(|f| f.guid)),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = checked {
                return text(StatusCode::CONFLICT, format!("cannot resume: {e}"));
            }
        }
        let (to_guid, from_guid) = (to.guid, from.map(|f| f.guid));
        let (to, from) = match (
            ds.snapshot(&to.name),
            from.map(|f| ds.snapshot(&f.name)).transpose(),
        ) {
            (Ok(t), Ok(f)) => (t, f),
            (Err(e), _) | (_, Err(e)) => {
                return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        };
        // A send of exactly this stream that others may still join is joined (see [`fanout`]);
        // a resumed one is this receiver's own.
        let key = resume.is_none().then(|| SendKey {
            snapshot: to.full(),
            to: to_guid,
            from: from_guid,
            flags,
        });
        let slots = self.slots.clone();
        let seat = Box::new(mine);
        let (body, fan, slot) = match self
            .fanout
            .join_or_start(key, peer, seat, || slots.try_acquire_owned().ok())
        {
            fanout::Started::Joined(body) => return streaming(body),
            fanout::Started::New(body, fan, slot) => (body, fan, slot),
            fanout::Started::Busy => return busy(),
        };
        let peer = peer.to_owned();
        let zfs = self.zfs.clone();
        let (flip, hold) = match &self.fault {
            Some(dir) => (Some(dir.join(FLIP_NEXT_SEND)), Some(dir.join(HOLD_SENDS))),
            None => (None, None),
        };
        tokio::spawn(async move {
            // zfs send's output in chunks of 1 MiB, read straight into the frames sent.
            let (chunks, mut r) = tokio::sync::mpsc::channel::<Bytes>(4);
            // A resumed send is what the token says it is, which the peer wrote: its BEGIN
            // record is checked before a byte leaves.
            let resumed = resume.as_ref().map(|_| {
                let (name, to, from) = (to.full(), to_guid, from_guid);
                move |first: &[u8]| check_resumed_begin(first, &name, to, from, flags.raw)
            });
            let send = async move {
                match &resume {
                    Some(token) => zfs.send_resumed_chunks(token, chunks).await,
                    None => zfs.send_chunks(&to, from.as_ref(), flags, chunks).await,
                }
            };
            // Err(None): every receiver went away; Err(Some(why)): refused before sending.
            let fan = &fan;
            let forward = async move {
                let mut hasher = blake3::Hasher::new();
                let mut total = 0u64;
                while let Some(chunk) = r.recv().await {
                    if total == 0
                        && let Some(check) = &resumed
                    {
                        check(&chunk).map_err(Some)?;
                    }
                    let n = chunk.len();
                    hasher.update(&chunk);
                    total += n as u64;
                    let flipped = (n > 2 * RECORD
                        && flip
                            .as_ref()
                            .is_some_and(|f| std::fs::remove_file(f).is_ok()))
                    .then(|| {
                        tracing::warn!("fault hook: one byte of this send flipped after hashing");
                        let mut flipped = chunk.to_vec();
                        flipped[n / 2] ^= 0x40;
                        Bytes::from(flipped)
                    });
                    if !fan.deliver(chunk, flipped).await {
                        // Every receiver went away or stalled: dropping the chunks ends the send.
                        return Err(None);
                    }
                }
                Ok::<_, Option<String>>((hasher.finalize().to_hex().to_string(), total))
            };
            // Held before zfs send starts: zfs-fuse stops taking snapshots while a send of it
            // waits half-way.
            while hold.as_ref().is_some_and(|h| h.exists()) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let (sent, forwarded) = tokio::join!(send, forward);
            let mut trailers = HeaderMap::new();
            let ok = sent.is_ok() && forwarded.is_ok();
            match (sent, forwarded) {
                (Ok(_), Ok((digest, total))) => {
                    if let (Ok(d), Ok(b)) = (digest.parse(), total.to_string().parse()) {
                        trailers.insert(DIGEST_TRAILER, d);
                        trailers.insert(BYTES_TRAILER, b);
                    }
                }
                (_, Err(Some(refused))) => {
                    tracing::warn!(peer = %peer, reason = %refused, "a resumed send refused");
                    if let Ok(v) = refused.parse() {
                        trailers.insert(ERROR_TRAILER, v);
                    }
                }
                (Err(e), _) => {
                    let why = e.to_string().replace(|c: char| c.is_control(), " ");
                    if let Ok(v) = why.parse() {
                        trailers.insert(ERROR_TRAILER, v);
                    }
                }
                // Every receiver went away: dropping `fan` ends what is left of the send.
                (_, Err(None)) => return,
            }
            // zfs send is done: its slot is free while the trailers wait for slow readers.
            drop(slot);
            fan.finish(trailers, ok).await;
        });
        streaming(body)
    }
}

/// A live send's answer: the stream, then its trailers.
fn streaming(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut().insert(
        "trailer",
        HeaderValue::from_static("x-projstore-blake3, x-projstore-bytes, x-projstore-error"),
    );
    r
}

/// A live send to ask for: snapshot `to` of `project`, incremental from `from`; resumed with
/// the receiver's token when a resumable receive of exactly this send was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub project: ProjectKey,
    pub from: Option<u64>,
    pub to: u64,
    pub resume: Option<String>,
}

/// What a live receive applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The stream's length, as verified.
    pub bytes: u64,
}

impl Peer {
    /// The snapshots the peer holds of `project` (its live copy), oldest first.
    pub async fn snapshots(&self, project: &ProjectKey) -> Result<Vec<LiveSnapshot>, FetchError> {
        let path = format!("/v1/snapshots/{}/{}", project.namespace, project.name);
        let body = self
            .get_json(&path, MAX_LIST_BYTES, "listing snapshots")
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.err(format!("bad snapshot list: {e}")))
    }

    /// Receives `want` (its `from`, when given, must be `target`'s newest snapshot) from the
    /// peer, unmounted, straight into `zfs recv` of `target`, and lets
    /// the receive commit only once the stream is verified (see the module's documentation).
    pub async fn receive(
        &self,
        zfs: &Zfs,
        want: &SendRequest,
        target: &DatasetName,
        progress: &Progress,
    ) -> Result<Received, LiveError> {
        let (project, to) = (&want.project, want.to);
        let mut path = format!("/v1/send/{}/{}?to={to}", project.namespace, project.name);
        if let Some(f) = want.from {
            path.push_str(&format!("&from={f}"));
        }
        let flags = zfs.capabilities().send_flags().letters();
        if !flags.is_empty() {
            path.push_str(&format!("&flags={flags}"));
        }
        if let Some(token) = &want.resume {
            path.push_str(&format!("&resume={token}"));
        }
        let started = std::time::Instant::now();
        let before = progress.bytes();
        let result = self.receive_from(zfs, want, &path, target, progress).await;
        crate::metrics::record_transfer(
            &self.node,
            crate::metrics::Direction::Received,
            progress.bytes().saturating_sub(before),
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        result
    }

    async fn receive_from(
        &self,
        zfs: &Zfs,
        want: &SendRequest,
        path: &str,
        target: &DatasetName,
        progress: &Progress,
    ) -> Result<Received, LiveError> {
        let to = want.to;
        let resp = self.get_streaming(path).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let why = crate::fetch::refusal_text(resp).await;
            return Err(LiveError::Refused {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                reason: printable(&format!("sending {to}: {why}")),
            });
        }
        apply_verified(
            zfs,
            target,
            RecvOptions {
                unmounted: true,
                resumable: zfs.capabilities().resumable_send,
            },
            progress,
            &self.endpoint,
            want,
            resp.into_body(),
        )
        .await
    }
}

/// Feeds a live send's `body` into `zfs recv` of `target` and lets it commit only when the
/// trailers' digest and length match what arrived (the module's documentation says how).
pub async fn apply_verified<B>(
    zfs: &Zfs,
    target: &DatasetName,
    opts: RecvOptions,
    progress: &Progress,
    source: &str,
    want: &SendRequest,
    body: B,
) -> Result<Received, LiveError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let unverified = |reason: String| LiveError::Unverified {
        endpoint: source.to_owned(),
        reason: printable(&reason),
    };
    // What arrived is gathered into chunks of about a mebibyte for zfs recv (TLS hands it over
    // in records of 16 KiB: one wake-up and one pipe write per record costs more than the
    // copy); the newest WITHHELD bytes stay here until the stream is verified.
    let (w, r) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut body = body;
    let recv_stopped = std::sync::atomic::AtomicBool::new(false);
    let recv_stopped = &recv_stopped;
    let feed = async move {
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        // zfs recv's channel (4) and its pipe write hold chunks in flight.
        let mut buffers = crate::zfs::Recycled::new(8);
        let mut held = buffers.buffer(GATHER);
        let mut trailers = None;
        let gone = || {
            recv_stopped.store(true, std::sync::atomic::Ordering::Relaxed);
            unverified("zfs recv stopped reading".into())
        };
        let cut = |reason: String| LiveError::Cut {
            endpoint: source.to_owned(),
            reason: printable(&reason),
        };
        let mut begun = false;
        let mut pace = crate::fetch::Pace::default();
        loop {
            let Some(next) = pace.next(&mut body).await else {
                return Err(cut(crate::fetch::Pace::too_slow()));
            };
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(|e| cut(e.to_string()))?;
            let frame = match frame.into_data() {
                Ok(data) => {
                    if trailers.is_some() {
                        return Err(unverified("data after the trailers".into()));
                    }
                    pace.took(data.len());
                    hasher.update(&data);
                    total += data.len() as u64;
                    crate::metrics::add(&crate::metrics::METRICS.bytes_received, data.len() as u64);
                    held.extend_from_slice(&data);
                    // Nothing reaches zfs recv before the BEGIN record says it is the stream
                    // asked for.
                    if !begun && held.len() >= RECORD {
                        // Raw streams were asked for exactly when this host takes them.
                        let raw_ok = zfs.capabilities().send_flags().raw;
                        check_begin(&held[..RECORD], want, raw_ok).map_err(unverified)?;
                        begun = true;
                    }
                    if begun && held.len() >= WITHHELD + FEED_CHUNK {
                        // The withheld tail moves to a buffer of its own, so the chunk's
                        // block is free to be used again once zfs recv has it.
                        let mut next = buffers.buffer(GATHER);
                        next.extend_from_slice(&held[held.len() - WITHHELD..]);
                        held.truncate(held.len() - WITHHELD);
                        let pass = std::mem::replace(&mut held, next).freeze();
                        buffers.track(&pass);
                        let waiting = tokio::time::Instant::now();
                        w.send(pass).await.map_err(|_| gone())?;
                        // zfs recv taking its time is not the source's slowness.
                        pace.paused(waiting.elapsed());
                    }
                    continue;
                }
                Err(f) => f,
            };
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        let trailers = trailers.ok_or_else(|| cut("the stream ended without its digest".into()))?;
        if !begun {
            return Err(unverified(format!(
                "a stream of {total} bytes has no BEGIN record"
            )));
        }
        check_trailers(&trailers, hasher.finalize().to_hex().as_str(), total)
            .map_err(unverified)?;
        // Verified: the END record may go to zfs recv now.
        w.send(held.freeze()).await.map_err(|_| gone())?;
        Ok(total)
    };
    let recv = async {
        zfs.recv_chunks(target, opts, r, progress)
            .await
            .map_err(LiveError::from)
    };
    // A feed that fails closes zfs recv's input before the END record: the receive fails
    // and nothing is committed. It is not killed: zfs recv then cleans up after itself (a
    // full receive's new dataset), where a killed one would leave it behind.
    let (fed, received) = tokio::join!(feed, recv);
    let bytes = match (fed, received) {
        // zfs recv stopped taking the stream: what it said is why.
        (Err(_), Err(e)) if recv_stopped.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(e);
        }
        (fed, received) => {
            let bytes = fed?;
            received?;
            bytes
        }
    };
    // What committed is the snapshot asked for.
    let have = zfs.snapshots(target, &[]).await?;
    if !have.iter().any(|s| s.guid == want.to) {
        return Err(unverified(format!(
            "{target} does not hold snapshot {} after the receive",
            want.to
        )));
    }
    Ok(Received { bytes })
}

/// Peer-chosen text as it may reach logs and status: one line, at most 300 characters.
fn printable(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The fields of a stream's BEGIN record that the agents check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Begin {
    kind: u32,
    payload: u32,
    versioninfo: u64,
    flags: u32,
    toguid: u64,
    fromguid: u64,
    /// `drr_toname`: the snapshot's full name on the host that sent it.
    toname: String,
}

impl Begin {
    /// Reads `record` (a stream's first), in either byte order.
    fn parse(record: &[u8]) -> Result<Self, String> {
        let field = |at: usize, len: usize| record.get(at..at + len);
        let raw32 = |at| field(at, 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
        let raw64 = |at| field(at, 8).and_then(|b| <[u8; 8]>::try_from(b).ok());
        let magic = raw64(8).ok_or("the stream is shorter than a record")?;
        let swapped = if u64::from_le_bytes(magic) == BACKUP_MAGIC {
            false
        } else if u64::from_be_bytes(magic) == BACKUP_MAGIC {
            true
        } else {
            return Err("not a ZFS send stream (no BEGIN record)".into());
        };
        let u32_at = |at| {
            raw32(at).map(|b| {
                if swapped {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                }
            })
        };
        let u64_at = |at| {
            raw64(at).map(|b| {
                if swapped {
                    u64::from_be_bytes(b)
                } else {
                    u64::from_le_bytes(b)
                }
            })
        };
        // dmu_replay_record: drr_type u32, drr_payloadlen u32, then drr_begin: magic u64,
        // versioninfo u64, creation_time u64, type u32, flags u32, toguid u64, fromguid u64,
        // toname char[256].
        let short = || "the BEGIN record is cut short".to_owned();
        let name = field(56, RECORD - 56).ok_or_else(short)?;
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        Ok(Self {
            kind: u32_at(0).ok_or_else(short)?,
            payload: u32_at(4).ok_or_else(short)?,
            versioninfo: u64_at(16).ok_or_else(short)?,
            flags: u32_at(36).ok_or_else(short)?,
            toguid: u64_at(40).ok_or_else(short)?,
            fromguid: u64_at(48).ok_or_else(short)?,
            toname: String::from_utf8_lossy(name).into_owned(),
        })
    }

    /// A BEGIN record of one snapshot of one dataset: not compound, not a clone.
    fn check_single(&self) -> Result<(), String> {
        if self.kind != 0 {
            return Err(format!(
                "the first record is of type {}, not BEGIN",
                self.kind
            ));
        }
        // The low two bits of versioninfo: 1 a plain stream, 2 a compound (-R/-I) one.
        if self.versioninfo & 3 != 1 {
            return Err("a compound stream (several snapshots or datasets) is refused".into());
        }
        if self.flags & FLAG_CLONE != 0 {
            return Err("a stream that would create a clone is refused".into());
        }
        Ok(())
    }
}

/// What a source checks of its own `zfs send -t` before a byte of it leaves: the BEGIN record
/// of a resumed send of exactly `snapshot` (its full name here, GUID `to`), from `from`, raw
/// exactly when `raw`. Whatever the peer's token said, only that send goes out.
pub fn check_resumed_begin(
    record: &[u8],
    snapshot: &str,
    to: u64,
    from: Option<u64>,
    raw: bool,
) -> Result<(), String> {
    let b = Begin::parse(record)?;
    b.check_single()
        .map_err(|e| format!("the resumed send was refused: {e}"))?;
    let features = b.versioninfo >> 2;
    let checks = [
        (
            features & FEATURE_RESUMING != 0,
            "it does not resume a send",
        ),
        (
            (features & FEATURE_RAW != 0) == raw,
            "it is not raw exactly when the dataset is encrypted",
        ),
        (b.toguid == to, "it is of another snapshot"),
        (b.fromguid == from.unwrap_or(0), "it is from another base"),
        (b.toname == snapshot, "it names another snapshot"),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        None => Ok(()),
        Some((_, why)) => Err(format!("the resumed send was refused: {why}")),
    }
}

/// Whether `record` (a stream's first) is the BEGIN record of a plain stream of snapshot
/// `want.to`, incremental from `want.from` (full when none): not compound, not a clone, no
/// payload (properties) — unless it resumes a send, which it must do exactly when
/// `want.resume` asks for it, or is raw, which only a receiver that asked for raw sends
/// (`raw_ok`) takes — in either byte order.
pub fn check_begin(record: &[u8], want: &SendRequest, raw_ok: bool) -> Result<(), String> {
    let begin = Begin::parse(record)?;
    begin.check_single()?;
    let Begin {
        payload,
        versioninfo,
        toguid,
        fromguid,
        ..
    } = begin;
    // The feature flags, above the header type: a resumed send says so, and carries where
    // it resumes (object, offset) in its payload; a plain send carries nothing there.
    let resuming = (versioninfo >> 2) & FEATURE_RESUMING != 0;
    if resuming != want.resume.is_some() {
        return Err(if resuming {
            "a resumed stream was sent where none was asked for".into()
        } else {
            "a fresh stream was sent where a resumed one was asked for".into()
        });
    }
    // A raw send (of an encrypted dataset) says so, and carries the dataset's wrapped key
    // material in its payload: only where raw sends were asked for.
    let raw = (versioninfo >> 2) & FEATURE_RAW != 0;
    if raw && !raw_ok {
        return Err("a raw stream was sent where none was asked for".into());
    }
    if payload != 0 && !resuming && !raw {
        return Err(format!(
            "a stream carrying {payload} bytes of properties is refused"
        ));
    }
    if payload as usize > MAX_BEGIN_PAYLOAD {
        return Err(format!("a BEGIN payload of {payload} bytes is refused"));
    }
    if toguid != want.to {
        return Err(format!(
            "the stream is of snapshot {toguid}, not {} as asked",
            want.to
        ));
    }
    if fromguid != want.from.unwrap_or(0) {
        return Err(format!(
            "the stream is incremental from {fromguid}, not {:?} as asked",
            want.from
        ));
    }
    Ok(())
}

/// Whether the trailers vouch for a stream of `total` bytes with BLAKE3 `digest`.
pub fn check_trailers(trailers: &HeaderMap, digest: &str, total: u64) -> Result<(), String> {
    let header = |k: &str| trailers.get(k).and_then(|v| v.to_str().ok());
    if let Some(e) = header(ERROR_TRAILER) {
        return Err(format!("the source's zfs send failed: {e}"));
    }
    if header(DIGEST_TRAILER) != Some(digest) {
        return Err(format!(
            "BLAKE3 digest {digest} of what arrived differs from the source's {:?}",
            header(DIGEST_TRAILER).unwrap_or_default()
        ));
    }
    if header(BYTES_TRAILER) != Some(total.to_string().as_str()) {
        return Err(format!(
            "{total} bytes arrived, the source sent {:?}",
            header(BYTES_TRAILER).unwrap_or_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(referenced: u64, used: u64) -> LiveSnapshot {
        LiveSnapshot {
            name: "s".into(),
            guid: "1".into(),
            createtxg: 1,
            time: 0,
            referenced,
            used,
        }
    }

    #[test]
    fn an_estimate_counts_what_was_written_also_over_old_data() {
        const M: u64 = 1 << 20;
        // 256 MiB added.
        assert_eq!(
            estimate(Some(&snap(100 * M, 0)), &snap(356 * M, 0)),
            256 * M
        );
        // 256 MiB overwritten in place: the old blocks are only the older snapshot's now.
        assert_eq!(
            estimate(Some(&snap(356 * M, 256 * M)), &snap(356 * M, 0)),
            256 * M
        );
        // 100 MiB deleted: the increment carries little.
        let deleted = estimate(Some(&snap(356 * M, 100 * M)), &snap(256 * M, 0));
        assert_eq!(deleted, RECORD as u64 * 2);
        // A full send: what the snapshot refers to; a peer's absurd figures do not overflow.
        assert_eq!(estimate(None, &snap(7 * M, 0)), 7 * M);
        assert_eq!(
            estimate(Some(&snap(0, u64::MAX)), &snap(u64::MAX, 0)),
            u64::MAX
        );
    }
}

//! A chain of streams from the bucket into `zfs recv`: each object opened (when sealed) and
//! hashed as it arrives, its BEGIN record checked before a byte reaches ZFS, its tail held
//! back until its length and SHA-256 match the manifest — so a corrupted, truncated or
//! substituted object never commits.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::BackupError;
use super::bucket::{Bucket, BucketStream};
use crate::live::{RECORD, SendRequest, WITHHELD, check_begin};
use crate::streams::ProjectKey;
use crate::zfs::{DatasetName, Progress, RecvOptions, SnapshotInfo, Zfs};

/// The restore fault hook's file under an agent's run directory.
pub const HOLD_RESTORE: &str = "faults/hold-backup-restore";

/// What zfs recv is handed at a time, about.
const FEED: usize = 1 << 20;

/// Receives `chain` (oldest first, starting with a full stream) into `staging`, which must
/// not exist; returns the newest snapshot received. On failure `staging` may hold the part
/// of the chain that verified: the caller removes it. `hold` is the end-to-end tests' fault
/// hook: while that file exists, the chain waits after each stream it received
/// ([`HOLD_RESTORE`] under the agent's run directory).
pub async fn receive_chain(
    zfs: &Zfs,
    bucket: &Bucket,
    project: &ProjectKey,
    chain: &[BucketStream],
    staging: &DatasetName,
    progress: &Progress,
    hold: Option<&std::path::Path>,
) -> Result<SnapshotInfo, BackupError> {
    if chain.first().is_none_or(|s| s.edge.from.is_some()) {
        return Err(BackupError::Bucket(
            "the chain does not start with a full stream".into(),
        ));
    }
    if zfs.exists(staging).await? {
        return Err(BackupError::Local(format!("{staging} is in the way")));
    }
    zfs.create_parents(staging).await?;
    for s in chain {
        receive_one(zfs, bucket, project, s, staging, progress).await?;
        while hold.is_some_and(std::path::Path::exists) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let newest = zfs
        .snapshots(staging, &[])
        .await?
        .pop()
        .ok_or_else(|| BackupError::Unverified(format!("{staging} holds no snapshot")))?;
    Ok(newest)
}

/// A stream's object read back as its manifest says: the bytes stored bounded, sealed chunks
/// opened, the plaintext hashed and bounded; [`ObjectReader::check`] compares length and
/// SHA-256 at the end. Whatever does not match is `Broken`.
struct ObjectReader<'a> {
    s: &'a BucketStream,
    /// What its BEGIN record must say, and whether a raw stream is taken.
    want: SendRequest,
    raw_ok: bool,
    /// The plaintext until its first record is whole and checked.
    head: Option<BytesMut>,
    body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    opener: Option<super::seal::Opener>,
    hasher: Sha256,
    stored: u64,
    total: u64,
}

/// What the BEGIN record of stream `s` of `project` must say: its manifest's snapshots.
fn begins_with(project: &ProjectKey, s: &BucketStream) -> SendRequest {
    SendRequest {
        project: project.clone(),
        from: s.edge.from.as_ref().map(|f| f.guid),
        to: s.edge.to.guid,
        resume: None,
    }
}

fn broken(s: &BucketStream, why: String) -> BackupError {
    BackupError::Broken {
        stream: s.id.to_string(),
        why,
    }
}

impl<'a> ObjectReader<'a> {
    async fn open(
        bucket: &Bucket,
        project: &ProjectKey,
        s: &'a BucketStream,
        raw_ok: bool,
    ) -> Result<Self, BackupError> {
        let stored = s.manifest.stored_bytes;
        let (size, body) = bucket.get_stream(&s.id, stored).await?;
        if size != stored {
            return Err(broken(
                s,
                format!("the object holds {size} bytes, its manifest says {stored}"),
            ));
        }
        Ok(Self {
            s,
            want: begins_with(project, s),
            raw_ok,
            head: Some(BytesMut::new()),
            body,
            opener: bucket.opener(&s.id),
            hasher: Sha256::new(),
            stored: 0,
            total: 0,
        })
    }

    /// The next plaintext, None after the object's end (and its last chunk).
    async fn next(&mut self) -> Result<Option<Vec<Bytes>>, BackupError> {
        let s = self.s;
        let m = &s.manifest;
        let plain = match self.body.next().await {
            Some(piece) => {
                let piece = piece.map_err(BackupError::store)?;
                self.stored += piece.len() as u64;
                if self.stored > m.stored_bytes {
                    return Err(broken(
                        s,
                        format!(
                            "the object is longer than the {} bytes its manifest says",
                            m.stored_bytes
                        ),
                    ));
                }
                match &mut self.opener {
                    Some(o) => o.update(&piece).map_err(|e| broken(s, e))?,
                    None => vec![piece],
                }
            }
            None => match self.opener.take() {
                Some(o) => vec![o.finish().map_err(|e| broken(s, e))?],
                None => return Ok(None),
            },
        };
        for p in &plain {
            self.hasher.update(p);
            self.total += p.len() as u64;
        }
        // The BEGIN record is checked before any plaintext after it is handed out.
        if let Some(head) = self.head.as_mut() {
            for p in &plain {
                head.extend_from_slice(p);
            }
            if head.len() >= RECORD {
                check_begin(&head[..RECORD], &self.want, self.raw_ok).map_err(|e| broken(s, e))?;
                self.head = None;
            }
        }
        if self.total > m.stream.bytes {
            return Err(broken(
                s,
                format!("longer than the {} bytes its manifest says", m.stream.bytes),
            ));
        }
        Ok(Some(plain))
    }

    /// After the end: whether it had a BEGIN record, and length and SHA-256 are the
    /// manifest's.
    fn check(self) -> Result<(), BackupError> {
        if let Some(head) = &self.head {
            let why = format!("{} bytes hold no BEGIN record", head.len());
            return Err(broken(self.s, why));
        }
        let m = &self.s.manifest;
        let (total, stored) = (self.total, self.stored);
        if total != m.stream.bytes || stored != m.stored_bytes {
            return Err(broken(
                self.s,
                format!(
                    "{total} bytes ({stored} stored) arrived, the manifest says {} ({})",
                    m.stream.bytes, m.stored_bytes
                ),
            ));
        }
        let digest = hex::encode(self.hasher.finalize());
        if digest != m.stream.sha256 {
            return Err(broken(
                self.s,
                format!(
                    "SHA-256 {digest} differs from the manifest's {}",
                    m.stream.sha256
                ),
            ));
        }
        Ok(())
    }
}

/// Reads stream `s`'s object (of `project`) as a restore would (opened with the key, its
/// BEGIN record checked against the manifest's snapshots, hashed) without receiving it: Ok
/// when it is what its manifest says, `Broken` when not.
pub async fn check_object(
    bucket: &Bucket,
    project: &ProjectKey,
    s: &BucketStream,
) -> Result<(), BackupError> {
    // Nothing is received here: a raw stream is as good as any.
    let mut r = ObjectReader::open(bucket, project, s, true).await?;
    while r.next().await?.is_some() {}
    r.check()
}

async fn receive_one(
    zfs: &Zfs,
    bucket: &Bucket,
    project: &ProjectKey,
    s: &BucketStream,
    target: &DatasetName,
    progress: &Progress,
) -> Result<(), BackupError> {
    let raw_ok = zfs.capabilities().send_flags().raw;
    let mut object = ObjectReader::open(bucket, project, s, raw_ok).await?;
    let (w, r) = tokio::sync::mpsc::channel::<Bytes>(4);
    let feed = async move {
        let mut held = BytesMut::with_capacity(FEED + WITHHELD);
        // zfs recv failing: its own reason follows from the receive.
        let gone = || BackupError::Local(format!("{}: zfs recv stopped reading", s.id));
        // The reader checked the BEGIN record before handing out more than it.
        while let Some(plain) = object.next().await? {
            for p in plain {
                held.extend_from_slice(&p);
            }
            if held.len() >= WITHHELD + FEED {
                let pass = held.split_to(held.len() - WITHHELD).freeze();
                w.send(pass).await.map_err(|_| gone())?;
            }
        }
        object.check()?;
        // Verified: the END record may go to zfs recv now.
        w.send(held.freeze()).await.map_err(|_| gone())?;
        Ok::<(), BackupError>(())
    };
    let opts = RecvOptions {
        unmounted: true,
        resumable: false,
    };
    let recv = zfs.recv_chunks(target, opts, r, progress);
    // A feed that fails closes zfs recv's input before the END record: nothing commits.
    let (fed, received) = tokio::join!(feed, recv);
    match (fed, received) {
        // zfs recv ended first: its reason is the one to tell (this host's pool failing, or
        // what ZFS made of the stream).
        (Err(BackupError::Local(_)), Err(e)) => return Err(e.into()),
        (Err(e), _) => return Err(e),
        (Ok(()), received) => {
            received?;
        }
    }
    let have = zfs.snapshots(target, &[]).await?;
    if !have.iter().any(|h| h.guid == s.edge.to.guid) {
        return Err(broken(
            s,
            format!(
                "{target} does not hold snapshot {} after the receive",
                s.edge.to.guid
            ),
        ));
    }
    Ok(())
}

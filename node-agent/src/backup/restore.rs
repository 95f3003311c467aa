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

/// Reads stream `s`'s object as a restore would (opened with the key, hashed) without
/// receiving it: Ok when its length and SHA-256 match its manifest, `Broken` when not.
pub async fn check_object(bucket: &Bucket, s: &BucketStream) -> Result<(), BackupError> {
    let m = &s.manifest;
    let broken = |why: String| BackupError::Broken {
        stream: s.id.to_string(),
        why,
    };
    let mut body = bucket.get_stream(&s.id).await?;
    let mut opener = bucket.opener(&s.id);
    let mut hasher = Sha256::new();
    let (mut total, mut stored) = (0u64, 0u64);
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(BackupError::store)?;
        stored += piece.len() as u64;
        if stored > m.stored_bytes {
            return Err(broken(format!(
                "the object is longer than the {} bytes its manifest says",
                m.stored_bytes
            )));
        }
        match &mut opener {
            Some(o) => {
                for plain in o.update(&piece).map_err(&broken)? {
                    hasher.update(&plain);
                    total += plain.len() as u64;
                }
            }
            None => {
                hasher.update(&piece);
                total += piece.len() as u64;
            }
        }
    }
    if let Some(o) = opener {
        let last = o.finish().map_err(&broken)?;
        hasher.update(&last);
        total += last.len() as u64;
    }
    if total != m.stream.bytes || stored != m.stored_bytes {
        return Err(broken(format!(
            "{total} bytes ({stored} stored), the manifest says {} ({})",
            m.stream.bytes, m.stored_bytes
        )));
    }
    let digest = hex::encode(hasher.finalize());
    if digest != m.stream.sha256 {
        return Err(broken(format!(
            "SHA-256 {digest} differs from the manifest's {}",
            m.stream.sha256
        )));
    }
    Ok(())
}

async fn receive_one(
    zfs: &Zfs,
    bucket: &Bucket,
    project: &ProjectKey,
    s: &BucketStream,
    target: &DatasetName,
    progress: &Progress,
) -> Result<(), BackupError> {
    let want = SendRequest {
        project: project.clone(),
        from: s.edge.from.as_ref().map(|f| f.guid),
        to: s.edge.to.guid,
        resume: None,
    };
    let m = &s.manifest;
    let unverified = |why: String| BackupError::Broken {
        stream: s.id.to_string(),
        why,
    };
    let mut body = bucket.get_stream(&s.id).await?;
    let mut opener = bucket.opener(&s.id);
    let (w, r) = tokio::sync::mpsc::channel::<Bytes>(4);
    let raw_ok = zfs.capabilities().send_flags().raw;
    let feed = async move {
        let mut hasher = Sha256::new();
        let (mut total, mut stored) = (0u64, 0u64);
        let mut held = BytesMut::with_capacity(FEED + WITHHELD);
        let mut begun = false;
        // zfs recv failing is this host's matter (its reason follows from the receive).
        let gone = || BackupError::Unverified(format!("{}: zfs recv stopped reading", s.id));
        let mut take = |plain: &[u8], held: &mut BytesMut| -> Result<(), BackupError> {
            hasher.update(plain);
            total += plain.len() as u64;
            if total > m.stream.bytes {
                return Err(unverified(format!(
                    "longer than the {} bytes its manifest says",
                    m.stream.bytes
                )));
            }
            held.extend_from_slice(plain);
            Ok(())
        };
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(BackupError::store)?;
            stored += piece.len() as u64;
            if stored > m.stored_bytes {
                return Err(unverified(format!(
                    "the object is longer than the {} bytes its manifest says",
                    m.stored_bytes
                )));
            }
            match &mut opener {
                Some(o) => {
                    for plain in o.update(&piece).map_err(&unverified)? {
                        take(&plain, &mut held)?;
                    }
                }
                None => take(&piece, &mut held)?,
            }
            if !begun && held.len() >= RECORD {
                check_begin(&held[..RECORD], &want, raw_ok).map_err(&unverified)?;
                begun = true;
            }
            if begun && held.len() >= WITHHELD + FEED {
                let pass = held.split_to(held.len() - WITHHELD).freeze();
                w.send(pass).await.map_err(|_| gone())?;
            }
        }
        if let Some(o) = opener {
            let last = o.finish().map_err(&unverified)?;
            take(&last, &mut held)?;
        }
        if !begun {
            if held.len() < RECORD {
                return Err(unverified(format!("{total} bytes hold no BEGIN record")));
            }
            check_begin(&held[..RECORD], &want, raw_ok).map_err(&unverified)?;
        }
        let digest = hex::encode(hasher.finalize());
        if total != m.stream.bytes || stored != m.stored_bytes {
            return Err(unverified(format!(
                "{total} bytes ({stored} stored) arrived, the manifest says {} ({})",
                m.stream.bytes, m.stored_bytes
            )));
        }
        if digest != m.stream.sha256 {
            return Err(unverified(format!(
                "SHA-256 {digest} differs from the manifest's {}",
                m.stream.sha256
            )));
        }
        // Verified: the END record may go to zfs recv now.
        w.send(held.freeze()).await.map_err(|_| gone())?;
        Ok(())
    };
    let opts = RecvOptions {
        unmounted: true,
        resumable: false,
    };
    let recv = zfs.recv_chunks(target, opts, r, progress);
    // A feed that fails closes zfs recv's input before the END record: nothing commits.
    let (fed, received) = tokio::join!(feed, recv);
    fed?;
    received?;
    let have = zfs.snapshots(target, &[]).await?;
    if !have.iter().any(|h| h.guid == s.edge.to.guid) {
        return Err(unverified(format!(
            "{target} does not hold snapshot {} after the receive",
            s.edge.to.guid
        )));
    }
    Ok(())
}

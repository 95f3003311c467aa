//! `zfs send` to any writer and `zfs recv` from any reader, as streaming pipes with byte
//! counters. Cancelling is dropping the future: the child is killed and its pipe closed, so
//! ZFS aborts the receive and nothing partial is committed.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::names::{DatasetName, SnapshotName};
use super::{Zfs, ZfsError, args};

const BUF: usize = 1 << 20;

/// Counts bytes moved so far; share it to report progress while a transfer runs.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How a receive may treat the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvOptions {
    /// Leave the received filesystem unmounted (`-u`): secondaries are never mounted.
    pub unmounted: bool,
}

impl Zfs {
    /// Streams `snap` (incremental from `from` when given) into `out`; returns the bytes sent.
    pub async fn send<W: AsyncWrite + Unpin>(
        &self,
        snap: &SnapshotName,
        from: Option<&SnapshotName>,
        out: &mut W,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
        let what = match from {
            Some(f) => format!("send {f} -> {snap}"),
            None => format!("send {snap}"),
        };
        let mut a = args(["send"]);
        if let Some(f) = from {
            if f.dataset() != snap.dataset() {
                return Err(ZfsError::Other {
                    what,
                    stderr: "incremental source is on another dataset".into(),
                });
            }
            a.push("-i".into());
            a.push(f.full().into());
        }
        a.push(snap.full().into());
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::null(), Stdio::piped())?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| io_err(&what, "no stdout pipe"))?;
        let stderr = drain_stderr(&mut child);
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        let io_err = |source| ZfsError::Io {
            what: what.clone(),
            source,
        };
        loop {
            // A pipe hands out at most 64 KiB per read; fill the buffer so the writer (often a
            // file, where each write costs a thread hop) sees few large writes.
            let mut filled = 0;
            while filled < buf.len() {
                let n = stdout.read(&mut buf[filled..]).await.map_err(io_err)?;
                if n == 0 {
                    break;
                }
                filled += n;
                progress.add(n);
            }
            if filled == 0 {
                break;
            }
            out.write_all(&buf[..filled]).await.map_err(io_err)?;
            total += filled as u64;
        }
        out.flush().await.map_err(|source| ZfsError::Io {
            what: what.clone(),
            source,
        })?;
        finish(&what, child, stderr).await?;
        Ok(total)
    }

    /// Feeds `input` to `zfs recv TARGET`; returns the bytes received. The caller verifies the
    /// stream (checksum) before calling: ZFS only checks its own record checksums.
    pub async fn recv<R: AsyncRead + Unpin>(
        &self,
        target: &DatasetName,
        opts: RecvOptions,
        input: &mut R,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
        let what = format!("receive into {target}");
        let mut a = args(["recv"]);
        if opts.unmounted {
            a.push("-u".into());
        }
        a.push(target.as_str().into());
        // A receive that mounts holds zfs-fuse's mount lock throughout.
        let _lock = self.mount_lock(&what, super::Tool::Zfs, &a).await?;
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::piped(), Stdio::null())?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io_err(&what, "no stdin pipe"))?;
        let stderr = drain_stderr(&mut child);
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        let mut write_error = None;
        loop {
            let n = input.read(&mut buf).await.map_err(|source| ZfsError::Io {
                what: what.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            // A write error means zfs recv gave up (bad stream): its stderr says why.
            if let Err(e) = stdin.write_all(&buf[..n]).await {
                write_error = Some(e);
                break;
            }
            total += n as u64;
            progress.add(n);
        }
        drop(stdin);
        finish(&what, child, stderr).await?;
        if let Some(source) = write_error {
            return Err(ZfsError::Io { what, source });
        }
        Ok(total)
    }

    fn spawn(
        &self,
        what: &str,
        program: &std::path::Path,
        a: Vec<OsString>,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Child, ZfsError> {
        tracing::debug!(program = %program.display(), args = ?a, "exec (streaming)");
        Command::new(program)
            .args(&a)
            .env("LC_ALL", "C")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ZfsError::Spawn {
                what: what.into(),
                program: program.display().to_string(),
                source,
            })
    }
}

fn io_err(what: &str, msg: &str) -> ZfsError {
    ZfsError::Io {
        what: what.into(),
        source: std::io::Error::other(msg.to_owned()),
    }
}

/// Reads stderr concurrently so a chatty child never blocks on a full pipe.
fn drain_stderr(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s).await;
        }
        s
    })
}

async fn finish(
    what: &str,
    mut child: Child,
    stderr: tokio::task::JoinHandle<String>,
) -> Result<(), ZfsError> {
    let status = child.wait().await.map_err(|source| ZfsError::Io {
        what: what.into(),
        source,
    })?;
    let stderr = stderr.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        let msg = if stderr.trim().is_empty() {
            format!("exit status {status}")
        } else {
            stderr
        };
        Err(ZfsError::classify(what, &msg))
    }
}

/// `dmu_replay_record_t` is a fixed 312 bytes; `drr_type` is its first `u32`, and the BEGIN
/// record's magic (at byte 8) says the stream's byte order.
const DRR_LEN: usize = 312;
const DRR_MAGIC: u64 = 0x2F5B_ACBAC;
/// Record types that carry no change: BEGIN, FREEOBJECTS, FREE, END.
const DRR_QUIET: [u32; 4] = [0, 2, 4, 5];

/// A writer that reads the records of an incremental send stream and notes whether any of
/// them changes data or metadata. Only payload-free records come before the first change,
/// so walking fixed-size records is exact up to that point; after it, bytes are dropped.
#[derive(Debug, Default)]
pub(crate) struct ChangeScan {
    partial: Vec<u8>,
    swapped: Option<bool>,
    pub(crate) changed: bool,
}

impl ChangeScan {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !self.changed && !data.is_empty() {
            let take = (DRR_LEN - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < DRR_LEN {
                return;
            }
            let rec = std::mem::take(&mut self.partial);
            let word = |at: usize, n: usize| rec[at..at + n].to_vec();
            let swapped = *self.swapped.get_or_insert_with(|| {
                let m: [u8; 8] = word(8, 8).try_into().unwrap_or_default();
                u64::from_le_bytes(m) != DRR_MAGIC
            });
            let t: [u8; 4] = word(0, 4).try_into().unwrap_or_default();
            let kind = if swapped {
                u32::from_be_bytes(t)
            } else {
                u32::from_le_bytes(t)
            };
            if !DRR_QUIET.contains(&kind) {
                self.changed = true;
            }
        }
    }
}

impl AsyncWrite for ChangeScan {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().feed(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Zfs {
    /// Whether anything changed between snapshots `from` and `to` of one dataset. Uses the
    /// records of `zfs send -i` (zfs-fuse has no `written` property).
    pub async fn changed_between(
        &self,
        from: &SnapshotName,
        to: &SnapshotName,
    ) -> Result<bool, ZfsError> {
        let mut scan = ChangeScan::default();
        self.send(to, Some(from), &mut scan, &Progress::new())
            .await?;
        Ok(scan.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32) -> Vec<u8> {
        let mut r = vec![0u8; DRR_LEN];
        r[..4].copy_from_slice(&kind.to_le_bytes());
        r[8..16].copy_from_slice(&DRR_MAGIC.to_le_bytes());
        r
    }

    #[test]
    fn quiet_streams_are_unchanged_in_any_split() {
        let stream: Vec<u8> = [record(0), record(2), record(4), record(5)].concat();
        for chunk in [1, 7, 312, 313, 4096] {
            let mut s = ChangeScan::default();
            for part in stream.chunks(chunk) {
                s.feed(part);
            }
            assert!(!s.changed, "chunk {chunk}");
        }
    }

    #[test]
    fn a_write_or_object_record_is_a_change() {
        for kind in [1, 3, 6, 7, 8] {
            let mut s = ChangeScan::default();
            s.feed(&[record(0), record(kind), vec![9; 1000], record(5)].concat());
            assert!(s.changed, "kind {kind}");
        }
    }

    #[test]
    fn byte_swapped_streams_are_read_in_their_order() {
        let mut begin = vec![0u8; DRR_LEN];
        begin[8..16].copy_from_slice(&DRR_MAGIC.to_be_bytes());
        let mut end = vec![0u8; DRR_LEN];
        end[..4].copy_from_slice(&5u32.to_be_bytes());
        let mut s = ChangeScan::default();
        s.feed(&[begin, end].concat());
        assert!(!s.changed);
    }
}

//! `zfs send` to any writer or into chunks, `zfs recv` from chunks or a file, as streaming
//! pipes with byte counters. Cancelling is dropping the future: the child is killed and its
//! pipe closed, so ZFS aborts the receive and nothing partial is committed.

use std::ffi::OsString;
use std::io::Seek;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::names::{DatasetName, SnapshotName};
use super::{Zfs, ZfsError, args};

const BUF: usize = 1 << 20;
/// The pipe size asked for between the agent and a streaming `zfs send` or `zfs recv`
/// (Linux allows unprivileged pipes up to 1 MiB by default).
const PIPE: usize = 1 << 20;

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

/// The buffers of a stream's chunks, used again once nobody holds their chunk any more.
///
/// A chunk of a mebibyte handed on (to `zfs recv`, or to the connections of a send) is freed
/// by whoever drops it last, and the allocator gives such blocks back to the kernel: the next
/// chunk then takes page faults on every page it fills, a tenth of the agent's CPU on a
/// transfer. This keeps a clone of the last `keep` chunks handed on (those still in flight
/// among them) and takes a block back once its clone is the only one left. At most `SPARE`
/// such free blocks wait here for the next chunks (chunks are often let go of in bursts);
/// others go back to the allocator.
///
/// Only `Bytes::try_into_mut` hands a block back: it succeeds only for the last holder, after
/// every other holder's release (its count is read with acquire ordering), so no chunk is
/// ever written while anyone still reads it. Never replace it with `is_unique` alone.
#[derive(Debug)]
pub struct Recycled {
    sent: std::collections::VecDeque<bytes::Bytes>,
    keep: usize,
    /// Buffers handed out that were used before.
    reused: u64,
}

/// Free blocks a [`Recycled`] keeps for the next chunks, at most.
const SPARE: usize = 3;

impl Recycled {
    pub fn new(keep: usize) -> Self {
        Self {
            sent: std::collections::VecDeque::with_capacity(keep),
            keep,
            reused: 0,
        }
    }

    /// Remembers `chunk`, handed on, to take its buffer back when everyone let go of it.
    pub fn track(&mut self, chunk: &bytes::Bytes) {
        if self.keep == 0 {
            return;
        }
        if self.sent.len() == self.keep {
            self.sent.pop_front();
        }
        self.sent.push_back(chunk.clone());
    }

    /// An empty buffer with room for `capacity` bytes: the oldest chunk's that nobody else
    /// holds, else a new one.
    pub fn buffer(&mut self, capacity: usize) -> bytes::BytesMut {
        let mut found = None;
        let mut spares = 0;
        let mut i = 0;
        while i < self.sent.len() {
            if !self.sent[i].is_unique() {
                i += 1;
                continue;
            }
            if found.is_none() {
                found = self.sent.remove(i).map(bytes::Bytes::try_into_mut);
            } else if spares < SPARE {
                spares += 1;
                i += 1;
            } else {
                // One free block too many: back to the allocator.
                self.sent.remove(i);
            }
        }
        match found {
            Some(Ok(mut used)) => {
                self.reused += 1;
                used.clear();
                // Room for `capacity` already, as every block here was made for it.
                used.reserve(capacity);
                used
            }
            _ => bytes::BytesMut::with_capacity(capacity),
        }
    }
}

/// Optional `zfs send` flags, which both ends must support (OpenZFS; zfs-fuse has none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SendFlags {
    /// `-c`: blocks as compressed on disk.
    pub compressed: bool,
    /// `-L`: large records whole.
    pub large_blocks: bool,
    /// `-e`: embedded blocks as they are.
    pub embedded: bool,
    /// `-w`: raw, as encrypted on disk (an encrypted dataset is only ever sent so: its key
    /// never leaves its host). A receiver says it can take raw sends; the source sends raw
    /// exactly when the dataset is encrypted.
    pub raw: bool,
}

impl SendFlags {
    /// The flags both `self` and `other` have.
    pub fn both(self, other: Self) -> Self {
        Self {
            compressed: self.compressed && other.compressed,
            large_blocks: self.large_blocks && other.large_blocks,
            embedded: self.embedded && other.embedded,
            raw: self.raw && other.raw,
        }
    }

    /// As a send request says them: the flag letters, `cLew` or part of it.
    pub fn letters(self) -> String {
        [
            (self.compressed, 'c'),
            (self.large_blocks, 'L'),
            (self.embedded, 'e'),
            (self.raw, 'w'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }

    /// Reads [`Self::letters`]; anything else is refused.
    pub fn parse_letters(s: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for c in s.chars() {
            let slot = match c {
                'c' => &mut f.compressed,
                'L' => &mut f.large_blocks,
                'e' => &mut f.embedded,
                'w' => &mut f.raw,
                _ => return Err(format!("unknown send flag {c:?} (expected c, L, e, w)")),
            };
            if std::mem::replace(slot, true) {
                return Err(format!("send flag {c:?} given twice"));
            }
        }
        Ok(f)
    }
}

/// How a receive may treat the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvOptions {
    /// Leave the received filesystem unmounted (`-u`): secondaries are never mounted.
    pub unmounted: bool,
    /// Keep what arrived when cut off (`-s`), so the send can resume; only where the host's
    /// ZFS has resumable sends (see [`super::resume`]).
    pub resumable: bool,
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
        self.send_flagged(snap, from, SendFlags::default(), out, progress)
            .await
    }

    /// [`Zfs::send`] with `flags` (`-c`, `-L`, `-e`), as far as this host has them.
    pub async fn send_flagged<W: AsyncWrite + Unpin>(
        &self,
        snap: &SnapshotName,
        from: Option<&SnapshotName>,
        flags: SendFlags,
        out: &mut W,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
        let (what, a) = self.flagged_send_args(snap, from, flags)?;
        self.send_with(what, a, out, progress).await
    }

    fn flagged_send_args(
        &self,
        snap: &SnapshotName,
        from: Option<&SnapshotName>,
        flags: SendFlags,
    ) -> Result<(String, Vec<OsString>), ZfsError> {
        let flags = flags.both(self.capabilities().send_flags());
        let (what, mut a) = send_args(snap, from)?;
        for (on, flag) in [
            (flags.compressed, "-c"),
            (flags.large_blocks, "-L"),
            (flags.embedded, "-e"),
            (flags.raw, "-w"),
        ] {
            if on {
                a.insert(1, flag.into());
            }
        }
        Ok((what, a))
    }

    /// [`Zfs::send_flagged`] into a channel, in chunks of up to 1 MiB read straight from
    /// `zfs send` (no copy on the way). A receiver that hangs up ends the send.
    pub async fn send_chunks(
        &self,
        snap: &SnapshotName,
        from: Option<&SnapshotName>,
        flags: SendFlags,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<u64, ZfsError> {
        let (what, a) = self.flagged_send_args(snap, from, flags)?;
        self.chunks_of(what, a, out).await
    }

    /// [`Zfs::send_chunks`] of a resumed send: `zfs send -t TOKEN`, which goes on where a
    /// cut-off `zfs recv -s` stopped, with the flags of the send it resumes. The caller has
    /// checked the token ([`super::ResumeToken::check_for`]).
    pub async fn send_resumed_chunks(
        &self,
        token: &str,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<u64, ZfsError> {
        let what = "resume a send".to_owned();
        super::resume::check_token_text(token).map_err(|detail| ZfsError::Parse {
            what: what.clone(),
            detail,
        })?;
        self.chunks_of(what, args(["send", "-t", token]), out).await
    }

    async fn chunks_of(
        &self,
        what: String,
        a: Vec<OsString>,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<u64, ZfsError> {
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::null(), Stdio::piped())?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| io_err(&what, "no stdout pipe"))?;
        let stderr = drain_stderr(&mut child);
        let mut total = 0u64;
        // Chunks in flight: the channel (4), a send's receivers' queues (8, the same chunks for
        // every receiver) and their connections' write buffers.
        let mut buffers = Recycled::new(16);
        loop {
            let mut chunk = buffers.buffer(BUF);
            while chunk.len() < BUF {
                let n = stdout
                    .read_buf(&mut chunk)
                    .await
                    .map_err(|source| ZfsError::Io {
                        what: what.clone(),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            total += chunk.len() as u64;
            let chunk = chunk.freeze();
            buffers.track(&chunk);
            if out.send(chunk).await.is_err() {
                // Nobody takes it any more: dropping the child kills the send.
                return Err(io_err(&what, "the receiver went away"));
            }
        }
        finish(&what, child, stderr).await?;
        Ok(total)
    }

    /// Feeds the chunks of `input` to `zfs recv TARGET` as they come, until the channel
    /// closes; returns the bytes received. Closing the channel before a stream's END record
    /// makes `zfs recv` fail and clean up after itself.
    pub async fn recv_chunks(
        &self,
        target: &DatasetName,
        opts: RecvOptions,
        mut input: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
        let (what, a) = recv_args(target, opts);
        let _lock = self.mount_lock(&what, super::Tool::Zfs, &a).await?;
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::piped(), Stdio::null())?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io_err(&what, "no stdin pipe"))?;
        let stderr = drain_stderr(&mut child);
        let mut total = 0u64;
        let mut write_error = None;
        while let Some(chunk) = input.recv().await {
            // A write error means zfs recv gave up (bad stream): its stderr says why.
            if let Err(e) = stdin.write_all(&chunk).await {
                write_error = Some(e);
                break;
            }
            total += chunk.len() as u64;
            progress.add(chunk.len());
        }
        drop(stdin);
        finish(&what, child, stderr).await?;
        if let Some(source) = write_error {
            return Err(ZfsError::Io { what, source });
        }
        Ok(total)
    }

    async fn send_with<W: AsyncWrite + Unpin>(
        &self,
        what: String,
        a: Vec<OsString>,
        out: &mut W,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
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

    /// Runs `zfs send` with `file` as its output: ZFS writes the stream into the file itself,
    /// at the file's current offset, with no copy through this process. Meanwhile every byte
    /// that lands is read back (from the page cache, behind the writer) and handed, in order,
    /// to `each(&mut state, bytes)`. Returns the bytes read back and the state; a caller that
    /// keeps the file checks its length against them (the stream store's commit does).
    ///
    /// `file` must be open for reading and writing. Cancelling kills the send; the bytes
    /// written so far stay in the file for the caller to discard.
    pub async fn send_to_file<S: Send + 'static>(
        &self,
        snap: &SnapshotName,
        from: Option<&SnapshotName>,
        file: &std::fs::File,
        progress: &Progress,
        state: S,
        each: fn(&mut S, &[u8]),
    ) -> Result<(u64, S), ZfsError> {
        let (what, a) = send_args(snap, from)?;
        let file_err = |source| ZfsError::Io {
            what: what.clone(),
            source,
        };
        let start = (&*file).stream_position().map_err(file_err)?;
        let out = file.try_clone().map_err(file_err)?;
        let reader = file.try_clone().map_err(file_err)?;
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::null(), Stdio::from(out))?;
        let stderr = drain_stderr(&mut child);
        let done = DoneOnDrop::default();
        let finished = done.0.clone();
        let counter = progress.clone();
        let follower = tokio::task::spawn_blocking(move || {
            follow(&reader, start, &finished, &counter, state, each)
        });
        let status = finish(&what, child, stderr).await;
        drop(done);
        let followed = follower.await.map_err(|e| ZfsError::Io {
            what: what.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        status?;
        followed.map_err(file_err)
    }

    /// Runs `zfs recv TARGET` reading the stream straight from `file`, from its current
    /// offset to its end (ZFS reads the descriptor itself). Progress follows the file offset,
    /// which the receiving process shares. Returns the bytes received.
    pub async fn recv_from_file(
        &self,
        target: &DatasetName,
        opts: RecvOptions,
        file: &std::fs::File,
        progress: &Progress,
    ) -> Result<u64, ZfsError> {
        let (what, a) = recv_args(target, opts);
        let file_err = |source| ZfsError::Io {
            what: what.clone(),
            source,
        };
        let start = (&*file).stream_position().map_err(file_err)?;
        let len = file.metadata().map_err(file_err)?.len();
        let input = file.try_clone().map_err(file_err)?;
        let _lock = self.mount_lock(&what, super::Tool::Zfs, &a).await?;
        let mut child = self.spawn(&what, &self.zfs, a, Stdio::from(input), Stdio::null())?;
        let stderr = drain_stderr(&mut child);
        let mut reported = start;
        let mut report = || {
            if let Ok(pos) = (&*file).stream_position() {
                progress.add(pos.saturating_sub(reported) as usize);
                reported = reported.max(pos);
            }
        };
        // Progress is the shared offset, looked at every 25 ms while the receive runs.
        let mut every = tokio::time::interval(Duration::from_millis(25));
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = every.tick() => report(),
            }
        };
        report();
        conclude(&what, status, stderr).await?;
        let end = (&*file).stream_position().map_err(file_err)?;
        if end != len {
            return Err(ZfsError::Unverified {
                what,
                problem: format!(
                    "zfs recv stopped at byte {end} of {len} and said nothing about the rest"
                ),
            });
        }
        Ok(end - start)
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
        let child = Command::new(program)
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
            })?;
        // A stream's pipe holds a mebibyte instead of 64 KiB: both ends wake each other far
        // less often. Best effort: a smaller pipe only costs speed.
        if let Some(p) = &child.stdin {
            let _ = rustix::pipe::fcntl_setpipe_size(p, PIPE);
        }
        if let Some(p) = &child.stdout {
            let _ = rustix::pipe::fcntl_setpipe_size(p, PIPE);
        }
        Ok(child)
    }
}

/// The description and arguments of `zfs send` (`-i FROM` for an incremental).
fn send_args(
    snap: &SnapshotName,
    from: Option<&SnapshotName>,
) -> Result<(String, Vec<OsString>), ZfsError> {
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
    Ok((what, a))
}

/// The description and arguments of `zfs recv`.
fn recv_args(target: &DatasetName, opts: RecvOptions) -> (String, Vec<OsString>) {
    let mut a = args(["recv"]);
    if opts.unmounted {
        a.push("-u".into());
    }
    if opts.resumable {
        a.push("-s".into());
    }
    a.push(target.as_str().into());
    (format!("receive into {target}"), a)
}

/// Set when dropped: tells a follower thread that the writer is gone, also when the future
/// that owned the writer is cancelled.
#[derive(Default)]
struct DoneOnDrop(Arc<AtomicBool>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Reads `file` from `start` as another process appends to it, handing each piece to
/// `each`, until `done` is set and the end is reached. A read never returns bytes past the
/// file's size, which the kernel moves only after the written bytes are in place.
fn follow<S>(
    file: &std::fs::File,
    start: u64,
    done: &AtomicBool,
    progress: &Progress,
    mut state: S,
    each: fn(&mut S, &[u8]),
) -> std::io::Result<(u64, S)> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; BUF];
    let mut at = start;
    loop {
        // Read the flag before the file: once set, one more read to the end sees everything.
        let finished = done.load(Ordering::Acquire);
        let n = file.read_at(&mut buf, at)?;
        if n > 0 {
            each(&mut state, &buf[..n]);
            progress.add(n);
            at += n as u64;
        } else if finished {
            return Ok((at - start, state));
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
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
    let status = child.wait().await;
    conclude(what, status, stderr).await
}

/// A finished child's outcome: its exit status, and its stderr when that says it failed.
async fn conclude(
    what: &str,
    status: std::io::Result<std::process::ExitStatus>,
    stderr: tokio::task::JoinHandle<String>,
) -> Result<(), ZfsError> {
    let status = status.map_err(|source| ZfsError::Io {
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
    fn a_chunks_buffer_is_used_again_only_once_nobody_else_holds_it() {
        let mut buffers = Recycled::new(5 + SPARE);
        // A chunk of `len` bytes of `byte`, handed on.
        let fill = |buffers: &mut Recycled, byte: u8, len: usize| {
            let mut b = buffers.buffer(BUF);
            assert!(b.is_empty() && b.capacity() >= BUF);
            b.resize(len, byte);
            let chunk = b.freeze();
            buffers.track(&chunk);
            chunk
        };
        // A full chunk and one filled in part (a stream's last, a receiver's gathered one).
        let (first, second) = (fill(&mut buffers, 1, BUF), fill(&mut buffers, 2, 1000));
        // Both still held (by a receiver, say): the next chunk gets a block of its own.
        let third = fill(&mut buffers, 3, BUF);
        assert_eq!(buffers.reused, 0);
        // A part of the first still held keeps its block from being used again.
        let part = first.slice(10..20);
        drop(first);
        let fourth = fill(&mut buffers, 4, BUF);
        assert_eq!(buffers.reused, 0);
        assert!(
            part.iter().all(|&b| b == 1),
            "a held chunk is never written over"
        );
        // Let go of: the oldest free block is the next chunk's, emptied.
        drop(part);
        drop(second);
        let fifth = fill(&mut buffers, 5, BUF);
        assert_eq!(buffers.reused, 1);
        let sixth = fill(&mut buffers, 6, 1000);
        assert_eq!(buffers.reused, 2);
        for (chunk, byte, len) in [(&third, 3, BUF), (&fourth, 4, BUF), (&fifth, 5, BUF)] {
            assert_eq!(chunk.len(), len);
            assert!(chunk.iter().all(|&b| b == byte));
        }
        assert!(sixth.len() == 1000 && sixth.iter().all(|&b| b == 6));
        // Free blocks beyond SPARE wait here no longer: they go back to the allocator.
        let more: Vec<bytes::Bytes> = (0..SPARE as u8)
            .map(|i| fill(&mut buffers, 7 + i, 10))
            .collect();
        drop((third, fourth, fifth, sixth, more));
        let _next = buffers.buffer(BUF);
        assert_eq!(buffers.reused, 3);
        assert_eq!(buffers.sent.iter().filter(|c| c.is_unique()).count(), SPARE);
        // Beyond `keep`, chunks are forgotten, not held back: their blocks go when dropped.
        let mut keep_none = Recycled::new(0);
        let b = keep_none.buffer(16);
        keep_none.track(&b.freeze());
        assert!(keep_none.sent.is_empty());
    }

    #[test]
    fn a_follower_reads_every_byte_another_writer_appends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let done = DoneOnDrop::default();
        let flag = done.0.clone();
        let progress = Progress::new();
        let counted = progress.clone();
        let reader = file.try_clone().unwrap();
        let follower = std::thread::spawn(move || {
            let keep: fn(&mut Vec<u8>, &[u8]) = |all, piece| all.extend_from_slice(piece);
            follow(&reader, 0, &flag, &counted, Vec::new(), keep)
        });
        let mut writer = file;
        for piece in data.chunks(77_777) {
            std::io::Write::write_all(&mut writer, piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(done);
        let (n, seen) = follower.join().unwrap().unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(
            seen == data,
            "the follower saw other bytes than were written"
        );
        assert_eq!(progress.bytes(), n);
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

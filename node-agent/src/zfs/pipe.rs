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

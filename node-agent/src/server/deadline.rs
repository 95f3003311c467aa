//! A connection's socket that gives up on a write its peer has not taken for a while.
//!
//! A peer that stops reading leaves the stream server's writes pending forever (hyper has no
//! write timeout), and with them everything the answer holds: a live send's queued chunks, or
//! what a joiner of a shared send was handed. With this, such a connection fails once a write
//! has waited [`crate::live::STALL`] (the time either end of a send waits for the other), and
//! what it held is freed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct WriteDeadline<T> {
    io: T,
    limit: Duration,
    /// Since when writes wait (the peer took nothing), while they do.
    waiting: Option<tokio::time::Instant>,
    /// Fires at the latest `limit` into a wait; moved on when it fires early (set for an earlier
    /// wait), never made anew: a bulk send finds the socket full all the time.
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            io,
            limit,
            waiting: None,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// What a write that went (or failed) says; a pending one fails once nothing went for
    /// `limit`.
    fn after<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.waiting = None;
            return r;
        }
        let since = *self.waiting.get_or_insert_with(tokio::time::Instant::now);
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = since + self.limit;
            if tokio::time::Instant::now() >= due {
                tracing::debug!(limit = ?self.limit, "a peer took nothing: its connection dropped");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer took nothing for {:?}", self.limit),
                )));
            }
            // Set for an earlier wait (writes went since): it fires `limit` into this one.
            self.timer.as_mut().reset(due);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.after(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Our end of a pipe that holds one block (its writes limited to 60 s), the peer's, a block.
    fn pipe() -> (
        WriteDeadline<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Vec<u8>,
    ) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let w = WriteDeadline::new(ours, Duration::from_secs(60));
        (w, theirs, vec![7u8; 1024])
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_take_fails_after_the_limit_and_one_it_takes_goes() {
        let (mut w, mut theirs, block) = pipe();
        // The peer reads, slowly but within the limit: every write goes.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1024];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                theirs.read_exact(&mut got).await.unwrap();
            }
            theirs // then it stops reading
        });
        for _ in 0..5 {
            w.write_all(&block).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        let e = w.write_all(&block).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = tokio::time::Instant::now() - started;
        assert!(waited >= Duration::from_secs(60) && waited < Duration::from_secs(61));
        drop(reader.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_longer_than_the_limit_still_writes() {
        let (mut w, mut theirs, block) = pipe();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1024];
            // Takes the first block after a long idle, the next one 30 s into the wait for it.
            tokio::time::sleep(Duration::from_secs(630)).await;
            theirs.read_exact(&mut got).await.unwrap();
            theirs.read_exact(&mut got).await.unwrap();
        });
        w.write_all(&block).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        w.write_all(&block).await.unwrap();
        reader.await.unwrap();
    }
}

//! One `zfs send` for every receiver that asks for the same stream at about the same time.
//!
//! A project's copies ask its primary for the same increment within milliseconds of each
//! other (they all follow its status). While a send has produced at most [`JOIN_WINDOW`]
//! bytes it keeps them, and a receiver asking for exactly that stream (same snapshot, base and
//! flags) joins it: it is given what was produced so far, then the rest as it comes, with the
//! same digest in the trailers. The source then reads and hashes the snapshot once, not once
//! per copy. A receiver that asks later gets a send of its own; a resumed send is never shared.
//!
//! A shared send goes at the pace of its slowest receiver. A receiver that hangs up, or takes
//! nothing for [`STALL`], is dropped and the others go on; when none is left the send ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;

use super::{Body, STALL};
use crate::zfs::SendFlags;

/// How much of a send is kept for receivers that may still join it: a send that produced more
/// takes no more receivers.
pub const JOIN_WINDOW: usize = 16 << 20;

/// What makes two sends the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    /// The snapshot sent, by its full name.
    pub snapshot: String,
    pub to: u64,
    pub from: Option<u64>,
    pub flags: SendFlags,
}

type Frames = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A receiver of a send: where its frames go, and what it was given.
struct Receiver {
    id: u64,
    peer: String,
    frames: Frames,
    bytes: u64,
    started: std::time::Instant,
}

impl Receiver {
    fn record(&self, ok: bool) {
        crate::metrics::record_transfer(
            &self.peer,
            crate::metrics::Direction::Sent,
            self.bytes,
            self.started.elapsed().as_secs_f64(),
            ok,
        );
    }
}

#[derive(Default)]
struct Receivers {
    /// What the send produced so far, while receivers may join it; None once they may not.
    prefix: Option<Vec<Bytes>>,
    prefix_len: usize,
    list: Vec<Receiver>,
    next_id: u64,
}

impl Receivers {
    /// A new receiver: the body it is answered with, given `prefix` first.
    fn add(&mut self, peer: &str, prefix: Vec<Bytes>, bytes: u64) -> Body {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        self.next_id += 1;
        self.list.push(Receiver {
            id: self.next_id,
            peer: peer.to_owned(),
            frames: tx,
            bytes,
            started: std::time::Instant::now(),
        });
        let prefix = futures_util::stream::iter(prefix.into_iter().map(|b| Ok(Frame::data(b))));
        let rest = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        BodyExt::boxed(StreamBody::new(prefix.chain(rest)))
    }
}

/// The sends that receivers may still join, on this host.
#[derive(Default)]
pub struct Fanout {
    open: Mutex<HashMap<SendKey, Arc<Mutex<Receivers>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fanout {
    /// Joins `peer` to a running send of `key` that still takes receivers: the body to answer
    /// it with, or None when there is none.
    pub fn join(&self, key: &SendKey, peer: &str) -> Option<Body> {
        let open = lock(&self.open);
        let group = open.get(key)?;
        let mut g = lock(group);
        let prefix = g.prefix.clone()?;
        let bytes = g.prefix_len as u64;
        tracing::debug!(peer, snapshot = %key.snapshot, bytes, "joined a running send");
        crate::metrics::add(&crate::metrics::METRICS.live_send_joins, 1);
        Some(g.add(peer, prefix, bytes))
    }

    /// A new send for `peer`, which others may join when `key` is given: the body to answer
    /// `peer` with, and the handle its producer hands what it sends to.
    pub fn start(self: &Arc<Self>, key: Option<SendKey>, peer: &str) -> (Body, Fan) {
        let mut g = Receivers {
            prefix: key.as_ref().map(|_| Vec::new()),
            ..Receivers::default()
        };
        let body = g.add(peer, Vec::new(), 0);
        crate::metrics::add(&crate::metrics::METRICS.live_sends, 1);
        let group = Arc::new(Mutex::new(g));
        if let Some(k) = &key {
            lock(&self.open).insert(k.clone(), group.clone());
        }
        let fan = Fan {
            fanout: self.clone(),
            key,
            group,
        };
        (body, fan)
    }
}

/// A running send's receivers, as its producer sees them.
pub struct Fan {
    fanout: Arc<Fanout>,
    key: Option<SendKey>,
    group: Arc<Mutex<Receivers>>,
}

impl Fan {
    /// Takes no more receivers.
    fn close(&self) {
        lock(&self.group).prefix = None;
        self.forget();
    }

    fn forget(&self) {
        if let Some(k) = &self.key {
            let mut open = lock(&self.fanout.open);
            if open.get(k).is_some_and(|g| Arc::ptr_eq(g, &self.group)) {
                open.remove(k);
            }
        }
    }

    /// Hands `chunk` to every receiver (the first gets `flipped` instead, when given); drops
    /// those that hung up or took nothing for [`STALL`]. False when none is left.
    pub async fn deliver(&self, chunk: Bytes, flipped: Option<Bytes>) -> bool {
        let (targets, full) = {
            let mut g = lock(&self.group);
            let mut full = false;
            let n = chunk.len();
            if let Some(prefix) = &mut g.prefix {
                prefix.push(chunk.clone());
                full = g.prefix_len + n > JOIN_WINDOW;
                g.prefix_len += n;
            }
            if full {
                g.prefix = None;
            }
            let targets: Vec<(u64, Frames)> =
                g.list.iter().map(|r| (r.id, r.frames.clone())).collect();
            (targets, full)
        };
        if full {
            self.forget();
        }
        let mut flipped = flipped;
        let sends = targets.into_iter().map(|(id, frames)| {
            let data = flipped.take().unwrap_or_else(|| chunk.clone());
            async move {
                let ok = matches!(
                    tokio::time::timeout(STALL, frames.send(Ok(Frame::data(data)))).await,
                    Ok(Ok(()))
                );
                (id, ok)
            }
        });
        let delivered = futures_util::future::join_all(sends).await;
        let n = chunk.len() as u64;
        let mut g = lock(&self.group);
        for (id, ok) in delivered {
            let Some(at) = g.list.iter().position(|r| r.id == id) else {
                continue;
            };
            if ok {
                g.list[at].bytes += n;
                crate::metrics::add(&crate::metrics::METRICS.bytes_sent, n);
            } else {
                g.list.remove(at).record(false);
            }
        }
        if g.list.is_empty() {
            g.prefix = None;
            drop(g);
            self.forget();
            return false;
        }
        true
    }

    /// Ends the send for every receiver with `trailers` (`ok`: a complete send).
    pub async fn finish(&self, trailers: HeaderMap, ok: bool) {
        self.close();
        let list = std::mem::take(&mut lock(&self.group).list);
        let ends = list.into_iter().map(|r| {
            let trailers = trailers.clone();
            async move {
                r.record(ok);
                let _ =
                    tokio::time::timeout(STALL, r.frames.send(Ok(Frame::trailers(trailers)))).await;
            }
        });
        futures_util::future::join_all(ends).await;
    }

    /// Ends the send for every receiver without trailers (their receive fails as cut off).
    pub fn abandon(&self) {
        self.close();
        for r in std::mem::take(&mut lock(&self.group).list) {
            r.record(false);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(to: u64) -> SendKey {
        SendKey {
            snapshot: format!("pool/live@s{to}"),
            to,
            from: None,
            flags: SendFlags::default(),
        }
    }

    /// Reads `body` to its end in a task: its data, and its trailers if it had any.
    fn collect(body: Body) -> tokio::task::JoinHandle<(Vec<u8>, Option<HeaderMap>)> {
        tokio::spawn(async move {
            let all = body.collect().await.unwrap();
            let trailers = all.trailers().cloned();
            (all.to_bytes().to_vec(), trailers)
        })
    }

    fn chunk(i: u8, len: usize) -> Bytes {
        Bytes::from(vec![i; len])
    }

    fn done() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert(super::super::DIGEST_TRAILER, "d".parse().unwrap());
        t
    }

    #[tokio::test]
    async fn a_receiver_joining_in_the_window_gets_the_whole_stream_and_later_ones_do_not_join() {
        let fanout = Arc::new(Fanout::default());
        let (first, fan) = fanout.start(Some(key(1)), "host-b");
        let first = collect(first);
        let mut want = Vec::new();
        for i in 0..3u8 {
            let c = chunk(i, 1 << 20);
            want.extend_from_slice(&c);
            assert!(fan.deliver(c, None).await);
        }
        // Another stream is not this one.
        assert!(fanout.join(&key(2), "host-c").is_none());
        let second = collect(fanout.join(&key(1), "host-c").unwrap());
        // Past the window, no one joins any more, and the send goes on for those it has.
        let mut i = 3u8;
        while want.len() <= JOIN_WINDOW {
            let c = chunk(i, 1 << 20);
            want.extend_from_slice(&c);
            assert!(fan.deliver(c, None).await);
            i = i.wrapping_add(1);
        }
        assert!(fanout.join(&key(1), "host-d").is_none());
        fan.finish(done(), true).await;
        for got in [first.await.unwrap(), second.await.unwrap()] {
            assert!(got.0 == want, "a receiver got other bytes");
            assert_eq!(got.1, Some(done()));
        }
        assert!(fanout.join(&key(1), "host-d").is_none());
    }

    #[tokio::test]
    async fn a_receiver_that_hangs_up_leaves_the_others_their_send_and_the_last_ends_it() {
        let fanout = Arc::new(Fanout::default());
        let (first, fan) = fanout.start(Some(key(1)), "host-b");
        let second = fanout.join(&key(1), "host-c").unwrap();
        let second = collect(second);
        assert!(fan.deliver(chunk(1, 4096), None).await);
        drop(first);
        assert!(fan.deliver(chunk(2, 4096), None).await);
        fan.finish(done(), true).await;
        let (data, trailers) = second.await.unwrap();
        assert_eq!(data.len(), 8192);
        assert_eq!(trailers, Some(done()));

        let (only, fan) = fanout.start(Some(key(3)), "host-b");
        drop(only);
        assert!(!fan.deliver(chunk(1, 4096), None).await, "no one is left");
        assert!(
            fanout.join(&key(3), "host-c").is_none(),
            "an ended send takes no one"
        );
    }

    #[tokio::test]
    async fn only_the_first_receiver_gets_the_flipped_chunk_and_a_resumed_send_is_never_joined() {
        let fanout = Arc::new(Fanout::default());
        let (first, fan) = fanout.start(Some(key(1)), "host-b");
        let second = collect(fanout.join(&key(1), "host-c").unwrap());
        let first = collect(first);
        assert!(fan.deliver(chunk(1, 10), Some(chunk(9, 10))).await);
        fan.finish(done(), true).await;
        assert_eq!(first.await.unwrap().0, vec![9; 10]);
        assert_eq!(second.await.unwrap().0, vec![1; 10]);

        let (resumed, fan) = fanout.start(None, "host-b");
        let resumed = collect(resumed);
        assert!(fanout.join(&key(1), "host-c").is_none());
        fan.abandon();
        let (data, trailers) = resumed.await.unwrap();
        assert!(
            data.is_empty() && trailers.is_none(),
            "abandoned: no trailers"
        );
    }
}

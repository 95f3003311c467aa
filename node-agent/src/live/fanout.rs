//! One `zfs send` for every receiver that asks for the same stream at about the same time.
//!
//! A project's copies ask its primary for the same increment within milliseconds of each
//! other (they all follow its status). For [`JOIN_TIME`] after it started, a send keeps what
//! it produced, and a receiver asking for exactly that stream (same snapshot, base and flags)
//! joins it: it is given what was produced so far, then the rest as it comes, with the same
//! digest in the trailers. The source then reads and hashes the snapshot once, not once per
//! copy. A receiver that asks later gets a send of its own; a resumed send is never shared.
//! What is kept is bounded: a send that produced [`JOIN_WINDOW`] bytes before its joining time
//! is up waits for it (its receivers still have those bytes to take meanwhile).
//!
//! A shared send goes at the pace of its slowest receiver, within bounds. A receiver that
//! hangs up is dropped. A node with a receiver that has not taken a chunk [`LAG`] after
//! another receiver took it (or [`STALL`] after it was offered, when it is the only one) is
//! dropped from the send, all its receivers. And the time the other nodes' receivers starve
//! (ask for data with none queued) after they took a chunk and until one of a node's takes
//! it is counted against that node, for the whole send: once that adds up to more than
//! [`LAG`] plus half the time since the node joined, it is dropped. A copy a little slower
//! than another costs it only the difference and stays; one that holds the others to less
//! than half their pace goes, however it spreads its delays over chunks or connections,
//! and a node dropped from a send does not join it again: it asks again and gets a send of
//! its own (resumed where ZFS can). When no receiver is left the send ends.
//!
//! Each receiver holds a seat its caller gave it (a per-node share of the host's sends) until
//! it is dropped or the send ends: joining is not free.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;

use super::{Body, STALL};
use crate::zfs::SendFlags;

/// How long after its start a send takes receivers that ask for the same stream.
pub const JOIN_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// The most of a send kept for receivers that may join it.
pub const JOIN_WINDOW: usize = 16 << 20;

/// How long a receiver of a shared send may take a chunk longer than the fastest one.
pub const LAG: std::time::Duration = std::time::Duration::from_secs(10);

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

/// What a receiver holds while it receives (see the module's documentation).
pub type Seat = Box<dyn std::any::Any + Send>;

/// How long a receiver went asking for data with nothing queued for it.
#[derive(Default)]
struct Hunger {
    since: Option<tokio::time::Instant>,
    total: std::time::Duration,
}

impl Hunger {
    /// Its queue answered: `pending` (empty) or with data.
    fn note(&mut self, pending: bool) {
        let now = tokio::time::Instant::now();
        match (pending, self.since) {
            (true, None) => self.since = Some(now),
            (false, Some(s)) => {
                self.total += now - s;
                self.since = None;
            }
            _ => {}
        }
    }

    /// In all, as of `at`.
    fn until(&self, at: tokio::time::Instant) -> std::time::Duration {
        self.total
            + self.since.map_or(std::time::Duration::ZERO, |s| {
                at.saturating_duration_since(s)
            })
    }
}

/// A receiver of a send: where its frames go, and what it was given.
struct Receiver {
    id: u64,
    peer: String,
    frames: Frames,
    bytes: u64,
    started: std::time::Instant,
    hunger: Arc<Mutex<Hunger>>,
    _seat: Seat,
}

/// A node's account in one send, kept while the send runs (also once its receivers left).
struct Node {
    /// When its first receiver joined.
    joined: tokio::time::Instant,
    /// How long in all the other nodes' receivers starved waiting for its receivers.
    held_back: std::time::Duration,
    /// Dropped from this send: it does not join it again.
    dropped: bool,
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

struct Receivers {
    /// What the send produced so far, while receivers may join it; None once they may not.
    prefix: Option<Vec<Bytes>>,
    /// Until when they may join.
    joinable_until: tokio::time::Instant,
    list: Vec<Receiver>,
    nodes: HashMap<String, Node>,
    next_id: u64,
}

impl Receivers {
    /// The bytes kept for joiners.
    fn kept(&self) -> usize {
        self.prefix.iter().flatten().map(Bytes::len).sum()
    }

    /// Whether `peer` may join now.
    fn takes(&self, peer: &str) -> bool {
        self.prefix.is_some()
            && tokio::time::Instant::now() < self.joinable_until
            && !self.nodes.get(peer).is_some_and(|n| n.dropped)
    }

    /// A new receiver holding `seat`: the body it is answered with, given `prefix` first.
    fn add(&mut self, peer: &str, seat: Seat, prefix: Vec<Bytes>, bytes: u64) -> Body {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let hunger = Arc::new(Mutex::new(Hunger::default()));
        self.next_id += 1;
        self.nodes.entry(peer.to_owned()).or_insert_with(|| Node {
            joined: tokio::time::Instant::now(),
            held_back: std::time::Duration::ZERO,
            dropped: false,
        });
        self.list.push(Receiver {
            id: self.next_id,
            peer: peer.to_owned(),
            frames: tx,
            bytes,
            started: std::time::Instant::now(),
            hunger: hunger.clone(),
            _seat: seat,
        });
        let prefix = futures_util::stream::iter(prefix.into_iter().map(|b| Ok(Frame::data(b))));
        let rest = futures_util::stream::poll_fn(move |cx| {
            let next = rx.poll_recv(cx);
            lock(&hunger).note(next.is_pending());
            next
        });
        BodyExt::boxed(StreamBody::new(prefix.chain(rest)))
    }
}

/// The sends that receivers may still join, on this host.
pub struct Fanout {
    open: Mutex<HashMap<SendKey, Arc<Mutex<Receivers>>>>,
    /// How long after its start a send takes receivers: [`JOIN_TIME`], but for tests.
    join_time: std::time::Duration,
    /// The sends started (joins not counted).
    started: std::sync::atomic::AtomicU64,
}

impl Default for Fanout {
    fn default() -> Self {
        Self::with_join_time(JOIN_TIME)
    }
}

impl Fanout {
    pub fn with_join_time(join_time: std::time::Duration) -> Self {
        Self {
            open: Mutex::default(),
            join_time,
            started: std::sync::atomic::AtomicU64::default(),
        }
    }

    /// How many sends were started here (a receiver that joined one started none).
    pub fn sends_started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Fanout::join_or_start`] did.
pub enum Started<P> {
    /// Joined a running send: the body to answer with.
    Joined(Body),
    /// A new send: the body to answer with, the handle its producer hands what it sends to,
    /// and what `slot` gave it.
    New(Body, Fan, P),
    /// No send runs that could be joined, and `slot` gave nothing.
    Busy,
}

impl Fanout {
    /// Joins `peer` to a running send of `key` that still takes receivers; else starts a new
    /// send for it (others may join it when `key` is given, never otherwise) if `slot` gives
    /// one. At once: two receivers asking together share one send. The receiver holds `seat`
    /// while it receives.
    pub fn join_or_start<P>(
        self: &Arc<Self>,
        key: Option<SendKey>,
        peer: &str,
        seat: Seat,
        slot: impl FnOnce() -> Option<P>,
    ) -> Started<P> {
        let mut open = lock(&self.open);
        if let Some(k) = &key
            && let Some(group) = open.get(k)
        {
            let mut g = lock(group);
            if g.takes(peer)
                && let Some(prefix) = g.prefix.clone()
            {
                let bytes = g.kept() as u64;
                tracing::debug!(peer, snapshot = %k.snapshot, bytes, "joined a running send");
                crate::metrics::add(&crate::metrics::METRICS.live_send_joins, 1);
                crate::metrics::add(&crate::metrics::METRICS.bytes_sent, bytes);
                return Started::Joined(g.add(peer, seat, prefix, bytes));
            }
        }
        let Some(slot) = slot() else {
            return Started::Busy;
        };
        let joinable_until = tokio::time::Instant::now() + self.join_time;
        let mut g = Receivers {
            prefix: key.as_ref().map(|_| Vec::new()),
            joinable_until,
            list: Vec::new(),
            nodes: HashMap::new(),
            next_id: 0,
        };
        let body = g.add(peer, seat, Vec::new(), 0);
        crate::metrics::add(&crate::metrics::METRICS.live_sends, 1);
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let group = Arc::new(Mutex::new(g));
        if let Some(k) = &key {
            open.insert(k.clone(), group.clone());
        }
        drop(open);
        let fan = Fan {
            fanout: self.clone(),
            key,
            group,
        };
        Started::New(body, fan, slot)
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
    /// those that hung up or fell behind (see the module's documentation). False when none is
    /// left.
    pub async fn deliver(&self, chunk: Bytes, flipped: Option<Bytes>) -> bool {
        let n = chunk.len();
        let (full, joinable_until) = {
            let g = lock(&self.group);
            let full = g.prefix.is_some()
                && (g.kept() + n > JOIN_WINDOW || tokio::time::Instant::now() >= g.joinable_until);
            (full, g.joinable_until)
        };
        if full {
            // Receivers may still join until the joining time is up, and nothing more is kept.
            tokio::time::sleep_until(joinable_until).await;
            self.close();
        }
        let watched: Vec<(u64, String, Arc<Mutex<Hunger>>, Frames)> = {
            let mut g = lock(&self.group);
            if let Some(prefix) = &mut g.prefix {
                prefix.push(chunk.clone());
            }
            g.list
                .iter()
                .map(|r| (r.id, r.peer.clone(), r.hunger.clone(), r.frames.clone()))
                .collect()
        };
        let mut flipped = flipped;
        let ids: Vec<u64> = watched.iter().map(|w| w.0).collect();
        let mut sends: futures_util::stream::FuturesUnordered<_> = watched
            .iter()
            .map(|(id, _, _, frames)| (*id, frames.clone()))
            .map(|(id, frames)| {
                let data = flipped.take().unwrap_or_else(|| chunk.clone());
                async move { (id, frames.send(Ok(Frame::data(data))).await.is_ok()) }
            })
            .collect();
        // How long each had starved, as of `at`.
        let hungry = |at| -> Vec<std::time::Duration> {
            watched
                .iter()
                .map(|(_, _, h, _)| lock(h).until(at))
                .collect()
        };
        let peer_of = |id: u64| watched.iter().find(|w| w.0 == id).map(|w| w.1.as_str());
        // What the receivers of other nodes that already took the chunk (and are still there)
        // starved since the first took it, the most any of them did, as of `at`: what waiting
        // for `peer` cost.
        let cost = |took: &[u64], before: &[std::time::Duration], at, peer: &str| {
            watched
                .iter()
                .zip(hungry(at))
                .zip(before)
                .filter(|(((id, p, _, frames), _), _)| {
                    p != peer && took.contains(id) && !frames.is_closed()
                })
                .map(|((_, after), before)| after.saturating_sub(*before))
                .max()
                .unwrap_or_default()
        };
        // Up to STALL for the first receiver to take it, then LAG for the others.
        let mut took = Vec::new();
        let mut hung_up = Vec::new();
        let mut charged: Vec<(&str, std::time::Duration)> = Vec::new();
        let mut before = None;
        let mut until = tokio::time::Instant::now() + STALL;
        while let Ok(Some((id, ok))) = tokio::time::timeout_at(until, sends.next()).await {
            let now = tokio::time::Instant::now();
            if !ok {
                hung_up.push(id);
                continue;
            }
            let before = before.get_or_insert_with(|| hungry(now));
            if let Some(peer) = peer_of(id) {
                charged.push((peer, cost(&took, before, now, peer)));
            }
            took.push(id);
            until = until.min(now + LAG);
        }
        drop(sends);
        let n = n as u64;
        let now = tokio::time::Instant::now();
        // Who did not take it in time is charged the whole wait, and its node is dropped.
        let late: Vec<&str> = ids
            .iter()
            .filter(|id| !took.contains(id) && !hung_up.contains(id))
            .filter_map(|&id| peer_of(id))
            .collect();
        if let Some(before) = &before {
            for peer in &late {
                charged.push((peer, cost(&took, before, now, peer)));
            }
        }
        let mut g = lock(&self.group);
        // A node with several receivers is charged once per chunk: the most of them.
        let mut per_node: HashMap<&str, std::time::Duration> = HashMap::new();
        for (peer, cost) in charged {
            let c = per_node.entry(peer).or_default();
            *c = (*c).max(cost);
        }
        for (peer, cost) in per_node {
            if let Some(node) = g.nodes.get_mut(peer) {
                node.held_back += cost;
            }
        }
        for (peer, node) in &mut g.nodes {
            if late.contains(&peer.as_str()) || node.held_back > LAG + (now - node.joined) / 2 {
                node.dropped = true;
            }
        }
        let dropped: Vec<String> = g
            .nodes
            .iter()
            .filter(|(_, node)| node.dropped)
            .map(|(peer, _)| peer.clone())
            .collect();
        let mut i = 0;
        while i < g.list.len() {
            let r = &g.list[i];
            if dropped.contains(&r.peer) || hung_up.contains(&r.id) {
                g.list.remove(i).record(false);
                continue;
            }
            if took.contains(&r.id) {
                g.list[i].bytes += n;
                crate::metrics::add(&crate::metrics::METRICS.bytes_sent, n);
            }
            i += 1;
        }
        let left = !g.list.is_empty();
        drop(g);
        if !left {
            self.close();
        }
        left
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
}

/// A send that ends without [`Fan::finish`] (every receiver gone, or its producer failed)
/// takes no more receivers, and those it has get no trailers: their receive fails as cut off.
impl Drop for Fan {
    fn drop(&mut self) {
        self.close();
        for r in std::mem::take(&mut lock(&self.group).list) {
            r.record(false);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
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

    /// A new send of `key` for `peer` (it must not find one to join).
    fn start(f: &Arc<Fanout>, key: Option<SendKey>, peer: &str) -> (Body, Fan) {
        match f.join_or_start(key, peer, Box::new(()), || Some(())) {
            Started::New(body, fan, ()) => (body, fan),
            _ => panic!("joined a send instead of starting one"),
        }
    }

    /// Joins a running send of `key`, if there is one that takes receivers.
    fn join(f: &Arc<Fanout>, key: &SendKey, peer: &str) -> Option<Body> {
        match f.join_or_start(Some(key.clone()), peer, Box::new(()), || None::<()>) {
            Started::Joined(body) => Some(body),
            Started::Busy => None,
            Started::New(..) => panic!("started a send without a slot"),
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
        let (first, fan) = start(&fanout, Some(key(1)), "host-b");
        let first = collect(first);
        let mut want = Vec::new();
        for i in 0..3u8 {
            let c = chunk(i, 1 << 20);
            want.extend_from_slice(&c);
            assert!(fan.deliver(c, None).await);
        }
        // Another stream is not this one.
        assert!(join(&fanout, &key(2), "host-c").is_none());
        let second = collect(join(&fanout, &key(1), "host-c").unwrap());
        // Past the window (what is kept, then the time), no one joins any more, and the send
        // goes on for those it has.
        let mut i = 3u8;
        while want.len() <= JOIN_WINDOW {
            let c = chunk(i, 1 << 20);
            want.extend_from_slice(&c);
            assert!(fan.deliver(c, None).await);
            i = i.wrapping_add(1);
        }
        assert!(join(&fanout, &key(1), "host-d").is_none());
        fan.finish(done(), true).await;
        for got in [first.await.unwrap(), second.await.unwrap()] {
            assert!(got.0 == want, "a receiver got other bytes");
            assert_eq!(got.1, Some(done()));
        }
        assert!(join(&fanout, &key(1), "host-d").is_none());
    }

    #[tokio::test]
    async fn a_receiver_that_hangs_up_leaves_the_others_their_send_and_the_last_ends_it() {
        let fanout = Arc::new(Fanout::default());
        let (first, fan) = start(&fanout, Some(key(1)), "host-b");
        let second = collect(join(&fanout, &key(1), "host-c").unwrap());
        assert!(fan.deliver(chunk(1, 4096), None).await);
        drop(first);
        assert!(fan.deliver(chunk(2, 4096), None).await);
        fan.finish(done(), true).await;
        let (data, trailers) = second.await.unwrap();
        assert_eq!(data.len(), 8192);
        assert_eq!(trailers, Some(done()));

        let (only, fan) = start(&fanout, Some(key(3)), "host-b");
        drop(only);
        assert!(!fan.deliver(chunk(1, 4096), None).await, "no one is left");
        assert!(
            join(&fanout, &key(3), "host-c").is_none(),
            "an ended send takes no one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_takes_nothing_holds_the_others_back_by_lag_once_then_is_dropped() {
        let fanout = Arc::new(Fanout::default());
        let (reading, fan) = start(&fanout, Some(key(1)), "host-b");
        let _stuck = join(&fanout, &key(1), "host-c").unwrap();
        let reading = collect(reading);
        let t = tokio::time::Instant::now();
        let mut n = 0;
        // The stuck receiver's queue fills, then it has LAG to take the next chunk.
        while tokio::time::Instant::now() - t < LAG {
            assert!(fan.deliver(chunk(1, 1000), None).await);
            n += 1000;
            assert!(n < 100_000, "the stuck receiver was never dropped");
        }
        assert!(
            tokio::time::Instant::now() - t < LAG + std::time::Duration::from_secs(1),
            "held back longer than LAG"
        );
        // From then on, the send goes at the pace of the one that reads.
        let t = tokio::time::Instant::now();
        for _ in 0..100 {
            assert!(fan.deliver(chunk(2, 1000), None).await);
            n += 1000;
        }
        assert!(tokio::time::Instant::now() - t < std::time::Duration::from_secs(1));
        fan.finish(done(), true).await;
        assert_eq!(reading.await.unwrap().0.len(), n);
    }

    /// Reads `body` one frame every `pause`: the data frames it got, and whether its
    /// trailers came (else it was dropped).
    fn read_at(body: Body, pause: std::time::Duration) -> tokio::task::JoinHandle<(u32, bool)> {
        read_after(body, std::time::Duration::ZERO, pause)
    }

    /// [`read_at`], beginning `first` later.
    fn read_after(
        mut body: Body,
        first: std::time::Duration,
        pause: std::time::Duration,
    ) -> tokio::task::JoinHandle<(u32, bool)> {
        tokio::spawn(async move {
            tokio::time::sleep(first).await;
            let mut chunks = 0;
            loop {
                tokio::time::sleep(pause).await;
                match body.frame().await {
                    Some(Ok(f)) if f.is_data() => chunks += 1,
                    Some(_) => return (chunks, true),
                    None => return (chunks, false),
                }
            }
        })
    }

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_keeps_lagging_just_under_lag_is_dropped_once_its_delays_add_up() {
        let fanout = Arc::new(Fanout::default());
        let (reading, fan) = start(&fanout, Some(key(1)), "host-b");
        let slow = join(&fanout, &key(1), "host-c").unwrap();
        let reading = collect(reading);
        // Takes each chunk 9 s after it could: within LAG every time.
        let slow = read_at(slow, LAG - SECOND);
        let t = tokio::time::Instant::now();
        for _ in 0..50 {
            assert!(fan.deliver(chunk(1, 1000), None).await);
        }
        // At its pace the 50 chunks would have taken over 6 minutes.
        assert!(
            tokio::time::Instant::now() - t < 120 * SECOND,
            "the slow receiver set the pace of the whole send"
        );
        fan.finish(done(), true).await;
        assert_eq!(reading.await.unwrap().0.len(), 50_000);
        let (chunks, ended) = slow.await.unwrap();
        assert!(!ended && chunks < 50, "the slow receiver was never dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_a_little_slower_than_another_keeps_its_place_in_the_send() {
        let fanout = Arc::new(Fanout::default());
        let (fast, fan) = start(&fanout, Some(key(1)), "host-b");
        let slower = join(&fanout, &key(1), "host-c").unwrap();
        let (fast, slower) = (read_at(fast, SECOND), read_at(slower, SECOND * 11 / 10));
        for _ in 0..200 {
            assert!(fan.deliver(chunk(1, 1000), None).await);
        }
        fan.finish(done(), true).await;
        assert_eq!(fast.await.unwrap(), (200, true));
        assert_eq!(
            slower.await.unwrap(),
            (200, true),
            "the slower copy was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_with_two_slow_connections_is_dropped_with_both() {
        let fanout = Arc::new(Fanout::default());
        let (fast, fan) = start(&fanout, Some(key(1)), "host-b");
        // Its two receivers, a little apart, take turns being the last to take a chunk.
        let slow = [
            read_at(join(&fanout, &key(1), "host-h").unwrap(), SECOND * 9 / 2),
            read_after(
                join(&fanout, &key(1), "host-h").unwrap(),
                SECOND * 2,
                SECOND * 9 / 2,
            ),
        ];
        let fast = read_at(fast, SECOND);
        let t = tokio::time::Instant::now();
        for _ in 0..50 {
            assert!(fan.deliver(chunk(1, 1000), None).await);
        }
        assert!(
            tokio::time::Instant::now() - t < 120 * SECOND,
            "the node set the pace of the whole send"
        );
        fan.finish(done(), true).await;
        assert_eq!(fast.await.unwrap(), (50, true));
        for s in slow {
            assert!(!s.await.unwrap().1, "a receiver of the slow node was kept");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_with_a_stuck_receiver_loses_the_others_and_joins_no_more() {
        let fanout = Arc::new(Fanout::with_join_time(3600 * SECOND));
        let (fast, fan) = start(&fanout, Some(key(1)), "host-b");
        let fast = read_at(fast, SECOND);
        // One receiver that reads slowly, one that stops reading: the node goes, both.
        let slow = read_at(join(&fanout, &key(1), "host-h").unwrap(), SECOND * 3);
        let _stuck = join(&fanout, &key(1), "host-h").unwrap();
        for _ in 0..30 {
            assert!(fan.deliver(chunk(1, 1000), None).await);
        }
        assert!(
            join(&fanout, &key(1), "host-h").is_none(),
            "a dropped node joined again"
        );
        assert!(
            join(&fanout, &key(1), "host-c").is_some(),
            "another node could not join"
        );
        fan.finish(done(), true).await;
        assert_eq!(fast.await.unwrap(), (30, true));
        assert!(!slow.await.unwrap().1, "the node's other receiver was kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_blame_outlives_the_receivers_it_abandons() {
        let fanout = Arc::new(Fanout::with_join_time(3600 * SECOND));
        let (fast, fan) = start(&fanout, Some(key(1)), "host-b");
        let fast = read_at(fast, SECOND);
        // A receiver that lags, then hangs up before its node is dropped.
        let mut lagging = join(&fanout, &key(1), "host-h").unwrap();
        let lagging = tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(SECOND * 2).await;
                lagging.frame().await;
            }
        });
        let blame = |f: &Fan| {
            let g = lock(&f.group);
            let h = &g.nodes["host-h"];
            (
                h.held_back,
                h.dropped,
                g.list.iter().any(|r| r.peer == "host-h"),
            )
        };
        while !lagging.is_finished() || blame(&fan).2 {
            assert!(fan.deliver(chunk(1, 1000), None).await);
        }
        let (held_back, dropped, _) = blame(&fan);
        assert!(!dropped && held_back > 5 * SECOND, "{held_back:?}");
        // The node's next receiver starts from there.
        let _next = join(&fanout, &key(1), "host-h").unwrap();
        assert_eq!(blame(&fan).0, held_back);
        fan.finish(done(), true).await;
        assert!(fast.await.unwrap().1);
    }

    #[tokio::test]
    async fn a_receiver_holds_its_seat_until_it_is_dropped_or_the_send_ends() {
        let fanout = Arc::new(Fanout::default());
        let seat = Arc::new(());
        let seated = |f: &Arc<Fanout>, key| {
            f.join_or_start(Some(key), "host-b", Box::new(seat.clone()), || Some(()))
        };
        let Started::New(first, fan, ()) = seated(&fanout, key(1)) else {
            panic!("no send started")
        };
        let Started::Joined(second) = seated(&fanout, key(1)) else {
            panic!("not joined")
        };
        assert_eq!(Arc::strong_count(&seat), 3);
        // The first hangs up: dropped at the next chunk, and its seat given back.
        drop(first);
        let second = collect(second);
        assert!(fan.deliver(chunk(1, 10), None).await);
        assert_eq!(Arc::strong_count(&seat), 2);
        fan.finish(done(), true).await;
        second.await.unwrap();
        assert_eq!(Arc::strong_count(&seat), 1);
        // Refused as busy: the seat is given back at once.
        assert!(matches!(
            fanout.join_or_start(
                Some(key(2)),
                "host-b",
                Box::new(seat.clone()),
                || None::<()>
            ),
            Started::Busy
        ));
        assert_eq!(Arc::strong_count(&seat), 1);
    }

    #[tokio::test]
    async fn two_asking_together_share_one_send_and_a_busy_host_says_so() {
        let fanout = Arc::new(Fanout::default());
        let (_first, _fan) = start(&fanout, Some(key(1)), "host-b");
        // A slot is only asked for when there is nothing to join.
        assert!(matches!(
            fanout.join_or_start(Some(key(1)), "host-c", Box::new(()), || -> Option<()> {
                panic!("asked for a slot")
            }),
            Started::Joined(_)
        ));
        assert!(matches!(
            fanout.join_or_start(Some(key(2)), "host-c", Box::new(()), || None::<()>),
            Started::Busy
        ));
    }

    #[tokio::test]
    async fn only_the_first_receiver_gets_the_flipped_chunk_and_a_resumed_send_is_never_joined() {
        let fanout = Arc::new(Fanout::default());
        let (first, fan) = start(&fanout, Some(key(1)), "host-b");
        let second = collect(join(&fanout, &key(1), "host-c").unwrap());
        let first = collect(first);
        assert!(fan.deliver(chunk(1, 10), Some(chunk(9, 10))).await);
        fan.finish(done(), true).await;
        assert_eq!(first.await.unwrap().0, vec![9; 10]);
        assert_eq!(second.await.unwrap().0, vec![1; 10]);

        let (resumed, fan) = start(&fanout, None, "host-b");
        let resumed = collect(resumed);
        assert!(join(&fanout, &key(1), "host-c").is_none());
        drop(fan);
        let (data, trailers) = resumed.await.unwrap();
        assert!(
            data.is_empty() && trailers.is_none(),
            "ended without finish: no trailers"
        );
    }
}

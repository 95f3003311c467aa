//! The stream server (DESIGN §5.4): peers fetch manifests and stream files over mutual TLS;
//! `Range` resumes a download. A request for a project's data names the asking node
//! (`X-Projstore-Node`), its client certificate must name that node, and the node must hold a
//! StreamReplica of the project (asked of the API through [`Authorize`]). Every path is
//! validated before the file system is touched: only `<namespace>/<name>[/<id>.zstream|.json]`
//! of the store is ever served. Plain HTTP gets no answer, and no TLS handshake completes
//! without a client certificate of the cluster CA. Health, readiness and metrics are served
//! on a port of their own, in plain HTTP (`serve_health`): kubelet probes present no
//! certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::streams::{ProjectKey, StoreError, StreamId, StreamStore};

mod deadline;
use deadline::WriteDeadline;

type Body = BoxBody<Bytes, Infallible>;

/// Whether node (second argument) holds a copy of project (first), i.e. may read its data.
pub type Authorize = Arc<
    dyn Fn(ProjectKey, String) -> futures::future::BoxFuture<'static, Result<bool, String>>
        + Send
        + Sync,
>;

/// Restores a project's newest offsite backup into a scratch dataset of a spare pool of this
/// host (one that holds no copy of it), checks it, removes it, and says what it found (or
/// why not), counting the bytes received in the `Progress`.
pub type VerifyBackup = Arc<
    dyn Fn(
            ProjectKey,
            crate::zfs::Progress,
        ) -> futures::future::BoxFuture<'static, Result<BackupVerified, VerifyFailed>>
        + Send
        + Sync,
>;

/// Why a verification on a spare pool failed, and the stream whose object it found broken
/// (which the copy that uploads may then upload again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyFailed {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// It could not run here now (another verification runs, too little space): the asker
    /// tries another spare pool, or later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
    /// It failed for this host's own reasons (its pool, its ZFS, its way to the bucket), not
    /// the backup's: the asker tries another spare pool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
}

/// What a verification on a spare pool found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupVerified {
    /// The spare pool (StoragePool name) it was restored into.
    pub pool: String,
    /// The newest snapshot restored, and its GUID (decimal).
    pub snapshot: String,
    pub guid: String,
    /// How many streams the chain had.
    pub streams: usize,
}

/// One line of a verification's answer (JSON lines): progress while it runs, then the
/// outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VerifyLine {
    Bytes(u64),
    Verified(BackupVerified),
    Failed(VerifyFailed),
}

/// The request header naming the asking node; its client certificate must name it too.
pub const NODE_HEADER: &str = "x-projstore-node";

/// What the server needs.
pub struct StreamServer {
    pub store: StreamStore,
    pub authorize: Authorize,
    /// Live sends from this host's datasets (DESIGN §5.4); none: only stored streams.
    pub sources: Option<crate::live::Sources>,
    /// Verifications of offsite backups on this host's spare pools; none: not offered.
    pub verify: Option<VerifyBackup>,
}

/// What a request asks for.
enum Endpoint {
    /// `/v1/streams/<ns>/<name>[/<file>]`: stored streams.
    Streams,
    /// `/v1/snapshots/<ns>/<name>`: the live copy's snapshots.
    Snapshots,
    /// `/v1/send/<ns>/<name>?to=…`: a live send.
    Send,
    /// `/v1/verify-backup/<ns>/<name>`: the project's newest backup restored on a spare pool
    /// here and checked.
    VerifyBackup,
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).boxed());
    *r.status_mut() = code;
    r
}

/// Parses `bytes=N-` or `bytes=N-M` (one range; M inclusive).
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end && start < len).then_some((start, end))
}

impl StreamServer {
    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: Option<CertificateDer<'static>>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        // The asking node: named in a header, proven by its client certificate.
        let node = req
            .headers()
            .get(NODE_HEADER)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let proven = peer
            .as_ref()
            .is_some_and(|cert| !node.is_empty() && crate::tls::names_node(cert, &node));
        if !proven {
            return Ok(text(
                StatusCode::UNAUTHORIZED,
                format!(
                    "a client certificate of the cluster CA naming the node in {NODE_HEADER} is required"
                ),
            ));
        }
        if req.method() != Method::GET {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET"));
        }
        let routes = [
            ("/v1/streams/", Endpoint::Streams),
            ("/v1/snapshots/", Endpoint::Snapshots),
            ("/v1/send/", Endpoint::Send),
            ("/v1/verify-backup/", Endpoint::VerifyBackup),
        ];
        let Some((endpoint, rest)) = routes
            .into_iter()
            .find_map(|(prefix, e)| path.strip_prefix(prefix).map(|r| (e, r)))
        else {
            return Ok(text(StatusCode::NOT_FOUND, "no such endpoint"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (project, file) = match (&endpoint, parts.as_slice()) {
            (_, [ns, name]) => (ProjectKey::new(ns, name), None),
            (Endpoint::Streams, [ns, name, file]) => (ProjectKey::new(ns, name), Some(*file)),
            (Endpoint::Streams, _) => {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "expected /v1/streams/<namespace>/<name>[/<file>]",
                ));
            }
            _ => {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "expected /v1/snapshots/<namespace>/<name> or /v1/send/<namespace>/<name>?to=<guid>",
                ));
            }
        };
        let project = match project {
            Ok(p) => p,
            Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
        };
        match (self.authorize)(project.clone(), node.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(text(
                    StatusCode::FORBIDDEN,
                    format!("node {node} holds no copy of {project}"),
                ));
            }
            Err(e) => return Ok(text(StatusCode::SERVICE_UNAVAILABLE, e)),
        }
        if let Endpoint::VerifyBackup = endpoint {
            return Ok(match &self.verify {
                None => text(StatusCode::NOT_FOUND, "this agent verifies no backups"),
                Some(verify) => verify_answer(verify, project),
            });
        }
        match (&endpoint, &self.sources) {
            (Endpoint::Streams, _) | (Endpoint::VerifyBackup, _) => {}
            (_, None) => {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    "this agent serves no live sends",
                ));
            }
            (Endpoint::Snapshots, Some(src)) => return Ok(src.snapshots(project).await),
            (Endpoint::Send, Some(src)) => {
                return Ok(src
                    .send(project, &node, req.uri().query().unwrap_or_default())
                    .await);
            }
        }
        let Some(file) = file else {
            return Ok(match self.store.list(&project).await {
                Ok(list) => {
                    let items: Vec<serde_json::Value> = list
                        .iter()
                        .map(|s| serde_json::json!({"id": s.id.as_str(), "manifest": s.manifest}))
                        .collect();
                    let mut r = Response::new(
                        Full::new(Bytes::from(serde_json::to_vec(&items).unwrap_or_default()))
                            .boxed(),
                    );
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            });
        };
        if let Some(stem) = file.strip_suffix(".json") {
            let id = match StreamId::parse(stem) {
                Ok(id) => id,
                Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
            };
            return Ok(match self.store.manifest(&project, &id).await {
                Ok(m) => text(
                    StatusCode::OK,
                    serde_json::to_string(&m).unwrap_or_default(),
                ),
                Err(StoreError::NotFound { .. }) => text(StatusCode::NOT_FOUND, "no such stream"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            });
        }
        let id = match StreamId::from_file_name(file) {
            Ok(id) => id,
            Err(e) => return Ok(text(StatusCode::BAD_REQUEST, e)),
        };
        let (_, len) = match self.store.open_at(&project, &id, 0).await {
            Ok(x) => x,
            Err(StoreError::NotFound { .. }) => {
                return Ok(text(StatusCode::NOT_FOUND, "no such stream"));
            }
            Err(e) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        let range = req
            .headers()
            .get("range")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let (start, end, partial) = match range {
            None => (0, len.saturating_sub(1), false),
            Some(h) => match parse_range(&h, len) {
                Some((s, e)) => (s, e, true),
                None => {
                    let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
                    r.headers_mut().insert(
                        "content-range",
                        format!("bytes */{len}")
                            .parse()
                            .unwrap_or(hyper::header::HeaderValue::from_static("bytes */0")),
                    );
                    return Ok(r);
                }
            },
        };
        let (mut f, _) = match self.store.open_at(&project, &id, start).await {
            Ok(x) => x,
            Err(e) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        let count = if len == 0 { 0 } else { end - start + 1 };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
        tokio::spawn(async move {
            let mut left = count;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let n = match f.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                left -= n as u64;
                crate::metrics::add(&crate::metrics::METRICS.bytes_sent, n as u64);
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let body = StreamBody::new(tokio_stream_compat(rx)).boxed();
        let mut r = Response::new(body);
        r.headers_mut().insert("content-length", count.into());
        r.headers_mut().insert(
            "accept-ranges",
            hyper::header::HeaderValue::from_static("bytes"),
        );
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = format!("bytes {start}-{end}/{len}").parse() {
                r.headers_mut().insert("content-range", v);
            }
        }
        Ok(r)
    }
}

/// An mpsc receiver as a stream of frames.
/// Runs a verification, answering with a JSON line of the bytes received every two seconds
/// (which also tells the asker the work goes on) and a last line with the outcome.
fn verify_answer(verify: &VerifyBackup, project: ProjectKey) -> Response<Body> {
    let progress = crate::zfs::Progress::new();
    let mut work = verify(project, progress.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let line = |l: &VerifyLine| {
        let mut b = serde_json::to_vec(l).unwrap_or_default();
        b.push(b'\n');
        Ok(Frame::data(Bytes::from(b)))
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let last = loop {
            tokio::select! {
                outcome = &mut work => break match outcome {
                    Ok(v) => VerifyLine::Verified(v),
                    Err(e) => VerifyLine::Failed(e),
                },
                // The asker gone: the verification stops (dropped, it clears its scratch
                // dataset).
                () = tx.closed() => return,
                _ = tick.tick() => {
                    // An asker that does not read gets no more lines, and does not hold the
                    // work up (the outcome still goes out, or the timeout ends it).
                    let _ = tx.try_send(line(&VerifyLine::Bytes(progress.bytes())));
                }
            }
        };
        let _ = tokio::time::timeout(crate::live::STALL, tx.send(line(&last))).await;
    });
    let mut r = Response::new(StreamBody::new(tokio_stream_compat(rx)).boxed());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/jsonl"),
    );
    r
}

fn tokio_stream_compat(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How long a client may take to send a request's headers, and may stay connected without
/// sending one (hyper's header-read timeout also covers an idle kept-alive connection).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections served at once, in all and from one peer address: an unauthenticated client
/// opening thousands of idle connections gets refused, and cannot exhaust the agent's file
/// descriptors (which `zfs` and the health checks need).
pub const MAX_CONNECTIONS: usize = 512;
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;

/// Counts what each peer (an address, a node) has running; a slot is given back when its
/// guard drops.
pub(crate) struct PeerSlots<K: Eq + std::hash::Hash>(
    std::sync::Mutex<std::collections::HashMap<K, usize>>,
);

impl<K: Eq + std::hash::Hash> Default for PeerSlots<K> {
    fn default() -> Self {
        Self(std::sync::Mutex::default())
    }
}

pub(crate) struct PeerSlot<K: Eq + std::hash::Hash>(Arc<PeerSlots<K>>, K);

impl PeerSlots<std::net::IpAddr> {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PeerSlot<std::net::IpAddr>> {
        self.take_up_to(ip, MAX_CONNECTIONS_PER_PEER)
    }
}

impl<K: Eq + std::hash::Hash + Clone> PeerSlots<K> {
    /// One of `peer`'s `limit` slots, if it has one left.
    pub(crate) fn take_up_to(self: &Arc<Self>, peer: K, limit: usize) -> Option<PeerSlot<K>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer.clone()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), peer))
    }
}

impl<K: Eq + std::hash::Hash> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves TLS until the task is dropped, within the connection limits and timeouts above; a
/// peer that takes nothing of an answer for [`crate::live::STALL`] loses its connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<StreamServer>,
    tls: Arc<crate::tls::NodeTls>,
) {
    serve_with_write_stall(listener, server, tls, crate::live::STALL).await;
}

/// [`serve`], with `stall` instead of [`crate::live::STALL`] (tests).
pub async fn serve_with_write_stall(
    listener: tokio::net::TcpListener,
    server: Arc<StreamServer>,
    tls: Arc<crate::tls::NodeTls>,
    stall: std::time::Duration,
) {
    let total = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers = Arc::new(PeerSlots::default());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of descriptors, for example: wait a little instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (Ok(permit), Some(slot)) = (total.clone().try_acquire_owned(), peers.take(peer.ip()))
        else {
            crate::metrics::add(&crate::metrics::METRICS.connections_refused, 1);
            drop(tcp);
            continue;
        };
        // Per connection: a renewed certificate serves the next handshake.
        let (server, acceptor) = (server.clone(), tls.acceptor());
        tokio::spawn(async move {
            // A peer that stops reading loses its connection, and what its answer held.
            let tcp = WriteDeadline::new(tcp, stall);
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return; // not TLS (plain HTTP, say), too slow, or a certificate of another CA
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let svc = service_fn(move |req| server.clone().handle(req, peer.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            drop((permit, slot));
        });
    }
}

/// At most this many connections to the health port at once from other hosts (a scraper
/// needs one or two), and this many from one address.
pub const MAX_HEALTH_CONNECTIONS: usize = 32;
pub const MAX_HEALTH_CONNECTIONS_PER_PEER: usize = 4;

/// Serves `/healthz` (the agent runs), `/readyz` (its sanity checks passed: `ready`) and
/// `/metrics` in plain HTTP until the task is dropped, with the header-read timeout and
/// connection limits; nothing else. Connections from this host itself (the kubelet's
/// probes, with host networking) have slots of their own, which no other host can take.
pub async fn serve_health(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>) {
    let others = Arc::new(tokio::sync::Semaphore::new(MAX_HEALTH_CONNECTIONS));
    let local = Arc::new(tokio::sync::Semaphore::new(MAX_HEALTH_CONNECTIONS));
    let peers = Arc::new(PeerSlots::default());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // A connection from the address it reached: this host (kubelet probes the node's own
        // address with host networking).
        let from_here = tcp.local_addr().is_ok_and(|me| me.ip() == peer.ip());
        let admitted = if from_here {
            local.clone().try_acquire_owned().ok().map(|p| (p, None))
        } else {
            others.clone().try_acquire_owned().ok().and_then(|p| {
                let slot = peers.take_up_to(peer.ip(), MAX_HEALTH_CONNECTIONS_PER_PEER)?;
                Some((p, Some(slot)))
            })
        };
        let Some(permit) = admitted else {
            drop(tcp);
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/healthz" => text(StatusCode::OK, "ok"),
                        "/readyz" if ready => text(StatusCode::OK, "ok"),
                        "/readyz" => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "sanity checks have not passed",
                        ),
                        "/metrics" => {
                            let mut all = crate::metrics::render(&crate::metrics::METRICS);
                            if let Ok(peers) = crate::metrics::PEERS.lock() {
                                all.push_str(&crate::metrics::render_peers(&peers));
                            }
                            text(StatusCode::OK, all)
                        }
                        _ => text(StatusCode::NOT_FOUND, "health, readiness and metrics only"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(permit);
        });
    }
}

/// Binds the stream server's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=4-100", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=6-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}

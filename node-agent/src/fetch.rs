//! Fetching streams from a peer's stream server over mutual TLS: the manifest list, and
//! stream files with `Range` resume into the local store, verified against the peer's
//! manifest. The peer's certificate must name the node the caller meant to reach; the list
//! is read up to a bound, and a download stops at the manifest's size.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::streams::{Manifest, ProjectKey, StoreError, StreamId, StreamStore};
use crate::tls::NodeTls;
use crate::zfs::Progress;

/// The largest stream list read from a peer.
const MAX_LIST_BYTES: usize = 16 << 20;
/// Connecting and the TLS handshake each get this long.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// What the socket under TLS is read ahead by (see [`Peer`]'s connection).
const READ_AHEAD: usize = 256 << 10;

/// What went wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("peer {endpoint}: {reason}")]
    Peer { endpoint: String, reason: String },
    /// The peer does not have what was asked for (HTTP 404), and says why.
    #[error("peer {endpoint}: {reason}")]
    NotFound { endpoint: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a small answer (a refusal's reason, a list) may take to arrive once its headers
/// did: a peer that sends headers and then nothing must not hold a replica pass for good.
const SMALL_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(120);

/// The least a streamed answer (a live send, a stream file) must bring in every
/// [`crate::live::STALL`]: a peer that trickles a byte now and then is cut off like a silent one.
pub const MIN_PACE: u64 = 1 << 20;

/// The first 4 KiB of a refusal's body, the peer's reason; what came within
/// [`SMALL_BODY_TIME`].
pub(crate) async fn refusal_text(resp: hyper::Response<hyper::body::Incoming>) -> String {
    tokio::time::timeout(
        SMALL_BODY_TIME,
        Limited::new(resp.into_body(), 4096).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
    .unwrap_or_default()
}

/// Whether a streamed answer keeps its pace: at least [`MIN_PACE`] bytes in every
/// [`crate::live::STALL`].
#[derive(Debug)]
pub struct Pace {
    since: tokio::time::Instant,
    bytes: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            bytes: 0,
        }
    }
}

impl Pace {
    /// When the next bytes must have come by.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.since + crate::live::STALL
    }

    /// `n` more bytes came: once they add up to [`MIN_PACE`], the next [`crate::live::STALL`]
    /// starts now.
    pub fn took(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes >= MIN_PACE {
            *self = Self::default();
        }
    }

    /// The reader itself waited `d` (on what it hands the bytes to): that time does not count.
    pub fn paused(&mut self, d: std::time::Duration) {
        self.since += d;
    }

    /// The next frame of `body`, or None when the pace was not kept.
    pub async fn next<B: hyper::body::Body + Unpin>(
        &self,
        body: &mut B,
    ) -> Option<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        tokio::time::timeout_at(self.deadline(), body.frame())
            .await
            .ok()
    }

    /// Why a stream was cut off for its pace.
    pub fn too_slow() -> String {
        format!(
            "less than {} KiB came in {:?}",
            MIN_PACE >> 10,
            crate::live::STALL
        )
    }
}

/// A peer's stream server: `https://host:port` of the agent of `node`.
#[derive(Clone)]
pub struct Peer {
    pub endpoint: String,
    /// The node it proves to be.
    pub node: String,
    authority: String,
    server_name: ServerName<'static>,
    tls: Arc<NodeTls>,
}

impl Peer {
    /// `endpoint` is the peer's advertised stream endpoint; `node` the node it must prove to
    /// be (its certificate's name).
    pub fn new(endpoint: &str, node: &str, tls: Arc<NodeTls>) -> Result<Self, FetchError> {
        let bad = |reason: &str| FetchError::Peer {
            endpoint: endpoint.into(),
            reason: reason.into(),
        };
        let authority = endpoint
            .strip_prefix("https://")
            .map(|r| r.trim_end_matches('/'))
            .filter(|a| {
                !a.is_empty()
                    && !a.contains(['/', '@', '?', '#'])
                    && !a.contains(char::is_whitespace)
            })
            .ok_or_else(|| bad("not an https://host:port endpoint (agents speak TLS only)"))?;
        let server_name = ServerName::try_from(node.to_owned())
            .map_err(|_| bad("the node name is not a DNS name"))?;
        Ok(Self {
            endpoint: format!("https://{authority}"),
            node: node.to_owned(),
            authority: authority.to_owned(),
            server_name,
            tls,
        })
    }

    pub(crate) fn err(&self, reason: impl std::fmt::Display) -> FetchError {
        FetchError::Peer {
            endpoint: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    async fn get(
        &self,
        path: &str,
        range_from: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        self.request(path, range_from, false).await
    }

    /// A GET whose answer may end in trailers (a live send's digest).
    pub(crate) async fn get_streaming(
        &self,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        self.request(path, 0, true).await
    }

    /// A GET of a JSON document of at most `limit` bytes.
    pub(crate) async fn get_json(
        &self,
        path: &str,
        limit: usize,
        what: &str,
    ) -> Result<Bytes, FetchError> {
        let resp = self.get(path, 0).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let why = refusal_text(resp).await;
            let reason = format!("{what}: HTTP {status}: {why}");
            if status == hyper::StatusCode::NOT_FOUND {
                return Err(FetchError::NotFound {
                    endpoint: self.endpoint.clone(),
                    reason,
                });
            }
            return Err(self.err(reason));
        }
        Ok(tokio::time::timeout(
            SMALL_BODY_TIME,
            Limited::new(resp.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| self.err(format!("{what}: not sent within {SMALL_BODY_TIME:?}")))?
        .map_err(|e| self.err(format!("{what}: {e}")))?
        .to_bytes())
    }

    async fn request(
        &self,
        path: &str,
        range_from: u64,
        trailers: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| self.err("connect timed out"))?
        .map_err(|e| self.err(e))?;
        // rustls reads the socket 4 KiB at a time: a buffer in front of it turns a stream's
        // many small reads into few large ones (one system call per READ_AHEAD, not per 4 KiB).
        let tcp = tokio::io::BufReader::with_capacity(READ_AHEAD, tcp);
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connector().connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| self.err("TLS handshake timed out"))?
        .map_err(|e| self.err(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.err(e))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header("host", &self.authority)
            .header(crate::server::NODE_HEADER, &self.tls.node);
        if range_from > 0 {
            req = req.header("range", format!("bytes={range_from}-"));
        }
        if trailers {
            req = req.header("te", "trailers");
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| self.err(e))?;
        tokio::time::timeout(crate::live::STALL, sender.send_request(req))
            .await
            .map_err(|_| self.err("no answer"))?
            .map_err(|e| self.err(e))
    }

    /// The complete streams the peer holds for `project`.
    pub async fn list(
        &self,
        project: &ProjectKey,
    ) -> Result<Vec<(StreamId, Manifest)>, FetchError> {
        let body = self
            .get_json(
                &format!("/v1/streams/{}/{}", project.namespace, project.name),
                MAX_LIST_BYTES,
                "listing streams",
            )
            .await?;
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| self.err(format!("bad stream list: {e}")))?;
        items
            .into_iter()
            .map(|i| {
                let id = StreamId::parse(i["id"].as_str().unwrap_or_default())
                    .map_err(|e| self.err(e))?;
                let m: Manifest = serde_json::from_value(i["manifest"].clone())
                    .map_err(|e| self.err(format!("bad manifest: {e}")))?;
                Ok((id, m))
            })
            .collect()
    }

    /// Asks the peer to restore `project`'s newest offsite backup on a spare pool of its
    /// host and check it (the answer's progress lines count into `progress`): what it found,
    /// or why the backup failed there; an error when the peer could not be asked or gave no
    /// outcome.
    pub async fn verify_backup(
        &self,
        project: &ProjectKey,
        progress: &Progress,
    ) -> Result<Result<crate::server::BackupVerified, crate::server::VerifyFailed>, FetchError>
    {
        use crate::server::VerifyLine;
        let path = format!("/v1/verify-backup/{}/{}", project.namespace, project.name);
        let resp = self.get(&path, 0).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let why = refusal_text(resp).await;
            return Err(self.err(format!("verifying the backup: HTTP {status}: {why}")));
        }
        let mut body = resp.into_body();
        let mut line = Vec::new();
        let mut seen = 0u64;
        let mut moved = std::time::Instant::now();
        loop {
            // A line comes every two seconds while the peer works, and its count must grow
            // (a restore of many small streams from object storage may go slowly: any growth).
            if moved.elapsed() > crate::live::STALL {
                return Err(self.err("the verification made no progress"));
            }
            let frame = tokio::time::timeout(crate::live::STALL, body.frame())
                .await
                .map_err(|_| self.err("the verification stalled"))?;
            let Some(frame) = frame else {
                return Err(self.err("the verification ended without an outcome"));
            };
            let frame = frame.map_err(|e| self.err(e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for &b in data.iter() {
                if b != b'\n' {
                    if line.len() >= 64 << 10 {
                        return Err(self.err("an answer line longer than 64 KiB"));
                    }
                    line.push(b);
                    continue;
                }
                let parsed: VerifyLine = serde_json::from_slice(&line)
                    .map_err(|e| self.err(format!("bad verification answer: {e}")))?;
                line.clear();
                match parsed {
                    VerifyLine::Bytes(n) => {
                        if n > seen {
                            progress.add(usize::try_from(n - seen).unwrap_or(0));
                            seen = n;
                            moved = std::time::Instant::now();
                        }
                    }
                    VerifyLine::Verified(v) => return Ok(Ok(v)),
                    VerifyLine::Failed(why) => return Ok(Err(why)),
                }
            }
        }
    }

    /// Downloads stream `id` into `store`, resuming a download cut off before, and completes
    /// it only when size and SHA-256 match `manifest`.
    pub async fn download(
        &self,
        store: &StreamStore,
        project: &ProjectKey,
        id: &StreamId,
        manifest: &Manifest,
        progress: &Progress,
    ) -> Result<(), FetchError> {
        let have = store.download_len(project, id).await;
        if have < manifest.bytes {
            let resp = self
                .get(
                    &format!(
                        "/v1/streams/{}/{}/{}",
                        project.namespace,
                        project.name,
                        id.file_name()
                    ),
                    have,
                )
                .await?;
            let status = resp.status();
            let expected = if have > 0 {
                hyper::StatusCode::PARTIAL_CONTENT
            } else {
                hyper::StatusCode::OK
            };
            if status != expected {
                return Err(self.err(format!("fetching {id}: HTTP {status}")));
            }
            let mut file = store.download_file(project, id).await?;
            let mut body = resp.into_body();
            let mut at = have;
            let mut pace = Pace::default();
            loop {
                let Some(frame) = pace.next(&mut body).await else {
                    return Err(self.err(format!("fetching {id}: {}", Pace::too_slow())));
                };
                let Some(frame) = frame else {
                    break;
                };
                let frame = frame.map_err(|e| self.err(e))?;
                if let Some(data) = frame.data_ref() {
                    pace.took(data.len());
                    at += data.len() as u64;
                    if at > manifest.bytes {
                        return Err(self.err(format!(
                            "sent more than the {} bytes of {id}'s manifest",
                            manifest.bytes
                        )));
                    }
                    file.write_all(data).await.map_err(|e| self.err(e))?;
                    progress.add(data.len());
                    crate::metrics::add(&crate::metrics::METRICS.bytes_received, data.len() as u64);
                }
            }
            file.sync_all().await.map_err(|e| self.err(e))?;
        }
        store.finish_download(project, id, manifest).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::live::STALL;

    /// A body whose data comes as `feed` sends it.
    fn body_of(
        feed: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let mut feed = feed;
        http_body_util::StreamBody::new(futures::stream::poll_fn(move |cx| {
            feed.poll_recv(cx)
                .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
        }))
    }

    /// Reads `body` at its pace: the bytes taken, and whether it ended (else it was too slow).
    async fn read_paced(mut body: impl hyper::body::Body<Data = Bytes> + Unpin) -> (usize, bool) {
        let (mut pace, mut got) = (Pace::default(), 0);
        loop {
            match pace.next(&mut body).await {
                None => return (got, false),
                Some(None) => return (got, true),
                Some(Some(frame)) => {
                    let n = frame
                        .ok()
                        .and_then(|f| f.into_data().ok())
                        .map_or(0, |d| d.len());
                    pace.took(n);
                    got += n;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_trickles_is_cut_off_and_one_that_keeps_the_pace_is_not() {
        // A byte just within every STALL: cut off at the first STALL without MIN_PACE.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let trickle = tokio::spawn(async move {
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(STALL - std::time::Duration::from_secs(1)).await;
            }
        });
        let t = tokio::time::Instant::now();
        assert_eq!(read_paced(body_of(rx)).await, (2, false));
        assert!(tokio::time::Instant::now() - t <= STALL);
        trickle.abort();

        // MIN_PACE in every STALL, slowly, for three STALLs: read to its end.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(STALL / 2 - std::time::Duration::from_secs(1)).await;
                let half = usize::try_from(MIN_PACE / 2).unwrap();
                tx.send(Bytes::from(vec![0u8; half])).await.unwrap();
            }
        });
        let want = usize::try_from(3 * MIN_PACE).unwrap();
        assert_eq!(read_paced(body_of(rx)).await, (want, true));
    }
}

//! Fetching streams from a peer's stream server: the manifest list, and stream files with
//! `Range` resume into the local store, verified against the peer's manifest.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

use crate::streams::{Manifest, ProjectKey, StoreError, StreamId, StreamStore};
use crate::zfs::Progress;

/// What went wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("peer {endpoint}: {reason}")]
    Peer { endpoint: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A peer's stream server.
#[derive(Clone)]
pub struct Peer {
    pub endpoint: String,
    pub token: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Peer {
    pub fn new(endpoint: &str, token: &str) -> Result<Self, FetchError> {
        let ok = endpoint.starts_with("http://") && !endpoint.contains(char::is_whitespace);
        if !ok {
            return Err(FetchError::Peer {
                endpoint: endpoint.into(),
                reason: "not an http:// endpoint".into(),
            });
        }
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    fn err(&self, reason: impl std::fmt::Display) -> FetchError {
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
        let mut req = hyper::Request::get(format!("{}{path}", self.endpoint))
            .header("authorization", format!("Bearer {}", self.token));
        if range_from > 0 {
            req = req.header("range", format!("bytes={range_from}-"));
        }
        let req = req.body(Empty::new()).map_err(|e| self.err(e))?;
        self.client.request(req).await.map_err(|e| self.err(e))
    }

    /// The complete streams the peer holds for `project`.
    pub async fn list(
        &self,
        project: &ProjectKey,
    ) -> Result<Vec<(StreamId, Manifest)>, FetchError> {
        let resp = self
            .get(
                &format!("/v1/streams/{}/{}", project.namespace, project.name),
                0,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("listing streams: HTTP {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.err(e))?
            .to_bytes();
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
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| self.err(e))?;
                if let Some(data) = frame.data_ref() {
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

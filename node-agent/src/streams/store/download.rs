//! Downloads from a peer into the store: resumable, checked against the peer's manifest.

use super::*;

impl StreamStore {
    /// Bytes of stream `id` downloaded so far (`<id>.zstream.download`), to resume from.
    pub async fn download_len(&self, p: &ProjectKey, id: &StreamId) -> u64 {
        fs::metadata(self.dir(p).join(format!("{}.download", id.file_name())))
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The file a download of `id` appends to (created with its directory when missing).
    pub async fn download_file(&self, p: &ProjectKey, id: &StreamId) -> Result<File, StoreError> {
        let dir = self.dir(p);
        private_dir(&self.root, &dir).await?;
        let path = dir.join(format!("{}.download", id.file_name()));
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&path)
            .await
            .map_err(io(&path))
    }

    /// Completes a download: the bytes must have the size and SHA-256 the peer's manifest
    /// states; then the stream is renamed into place and the manifest written last. A
    /// download that does not match is deleted (fetch it again) and reported corrupt.
    pub async fn finish_download(
        &self,
        p: &ProjectKey,
        id: &StreamId,
        manifest: &Manifest,
    ) -> Result<(), StoreError> {
        let dir = self.dir(p);
        let partial = dir.join(format!("{}.download", id.file_name()));
        let corrupt = |reason: String| StoreError::Corrupt {
            project: p.to_string(),
            id: id.to_string(),
            reason,
        };
        if manifest.project != p.to_string() {
            return Err(corrupt(format!(
                "the manifest belongs to {}",
                manifest.project
            )));
        }
        let mut f = open_read(&partial).await.map_err(io(&partial))?;
        let len = f.metadata().await.map_err(io(&partial))?.len();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(io(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sum = hex::encode(hasher.finalize());
        if len != manifest.bytes || sum != manifest.sha256 {
            let _ = fs::remove_file(&partial).await;
            return Err(corrupt(format!(
                "downloaded {len} bytes with sha256 {sum}; the peer's manifest says {} bytes, {}",
                manifest.bytes, manifest.sha256
            )));
        }
        open_read(&partial)
            .await
            .map_err(io(&partial))?
            .sync_all()
            .await
            .map_err(io(&partial))?;
        let final_path = dir.join(id.file_name());
        fs::rename(&partial, &final_path)
            .await
            .map_err(io(&final_path))?;
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::BadManifest {
            path: final_path.clone(),
            reason: e.to_string(),
        })?;
        let manifest_partial = dir.join(format!("{}.partial", id.manifest_name()));
        let mut mf = create_private(&manifest_partial)
            .await
            .map_err(io(&manifest_partial))?;
        mf.write_all(&text).await.map_err(io(&manifest_partial))?;
        mf.sync_all().await.map_err(io(&manifest_partial))?;
        fs::rename(&manifest_partial, dir.join(id.manifest_name()))
            .await
            .map_err(io(&dir))?;
        sync_dir(&dir).await
    }
}

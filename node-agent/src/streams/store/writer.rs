//! Writing one stream: counted and hashed on the way, committed by its manifest.

use super::*;

/// Writes one stream: counts and hashes every byte on the way to `<id>.zstream.partial`.
pub struct StreamWriter {
    pub(super) file: File,
    pub(super) hasher: Sha256,
    pub(super) bytes: u64,
    pub(super) partial: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) id: StreamId,
    pub(super) project: ProjectKey,
}

impl StreamWriter {
    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The stream file itself (open for reading and writing, at the end of what is written)
    /// for a writer that puts bytes in directly, such as `zfs send` given it as its output.
    /// Such a writer's bytes must each be passed to [`StreamWriter::note`], in order.
    pub async fn direct_file(&mut self) -> Result<std::fs::File, StoreError> {
        self.file.flush().await.map_err(io(&self.partial))?;
        let dup = self.file.try_clone().await.map_err(io(&self.partial))?;
        Ok(dup.into_std().await)
    }

    /// Counts and hashes bytes that a direct writer put into the file.
    pub fn note(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// fsync → rename to `<id>.zstream` → manifest (fsynced, renamed) → directory fsync.
    pub async fn commit(mut self, meta: StreamMeta) -> Result<Manifest, StoreError> {
        self.file.flush().await.map_err(io(&self.partial))?;
        self.file.sync_all().await.map_err(io(&self.partial))?;
        let len = self.file.metadata().await.map_err(io(&self.partial))?.len();
        if len != self.bytes {
            return Err(StoreError::Corrupt {
                project: self.project.to_string(),
                id: self.id.to_string(),
                reason: format!(
                    "{len} bytes in the file but {} were hashed; not committed",
                    self.bytes
                ),
            });
        }
        let sha256 = hex::encode(self.hasher.finalize_reset());
        let final_path = self.dir.join(self.id.file_name());
        fs::rename(&self.partial, &final_path)
            .await
            .map_err(io(&final_path))?;
        let manifest = Manifest {
            project: self.project.to_string(),
            from: meta.from,
            to: meta.to,
            epoch: meta.epoch,
            bytes: self.bytes,
            sha256,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            node: meta.node,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::BadManifest {
            path: final_path.clone(),
            reason: e.to_string(),
        })?;
        let manifest_path = self.dir.join(self.id.manifest_name());
        let manifest_partial = self
            .dir
            .join(format!("{}.partial", self.id.manifest_name()));
        let mut f = create_private(&manifest_partial)
            .await
            .map_err(io(&manifest_partial))?;
        f.write_all(&text).await.map_err(io(&manifest_partial))?;
        f.sync_all().await.map_err(io(&manifest_partial))?;
        fs::rename(&manifest_partial, &manifest_path)
            .await
            .map_err(io(&manifest_path))?;
        sync_dir(&self.dir).await?;
        Ok(manifest)
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.bytes += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

//! Where a project's streams go besides its directory: aside with a fork, into the trash
//! and back.

use super::*;

impl StreamStore {
    /// Moves stream `id` (manifest first, so it stops being complete here) out of the project
    /// into `<root>/.forks/<ns>/<fork>/`, kept with the diverged dataset it belongs to.
    pub async fn set_aside(
        &self,
        p: &ProjectKey,
        id: &StreamId,
        fork: &str,
    ) -> Result<(), StoreError> {
        let dir = self.dir(p);
        let to = self.root.join(FORKS_DIR).join(&p.namespace).join(fork);
        fs::create_dir_all(&to).await.map_err(io(&to))?;
        for name in [id.manifest_name(), id.file_name()] {
            let from = dir.join(&name);
            match fs::rename(&from, to.join(&name)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&from)(e)),
            }
        }
        sync_dir(&to).await?;
        sync_dir(&dir).await
    }

    /// Moves all of `p`'s streams into the trash as `<root>/.trash/<ns>/<name>-<stamp>`;
    /// returns that directory (None when `p` has no streams).
    pub async fn move_to_trash(
        &self,
        p: &ProjectKey,
        stamp: &str,
    ) -> Result<Option<PathBuf>, StoreError> {
        let from = self.dir(p);
        if !fs::try_exists(&from).await.map_err(io(&from))? {
            return Ok(None);
        }
        let trash_ns = self.root.join(TRASH_DIR).join(&p.namespace);
        fs::create_dir_all(&trash_ns).await.map_err(io(&trash_ns))?;
        let to = trash_ns.join(format!("{}-{stamp}", p.name));
        fs::rename(&from, &to).await.map_err(io(&to))?;
        sync_dir(&trash_ns).await?;
        Ok(Some(to))
    }

    /// Puts streams back from a trash directory made by [`StreamStore::move_to_trash`].
    pub async fn restore_from_trash(
        &self,
        p: &ProjectKey,
        trashed: &Path,
    ) -> Result<(), StoreError> {
        let to = self.dir(p);
        if fs::try_exists(&to).await.map_err(io(&to))? {
            return Err(StoreError::AlreadyExists {
                project: p.to_string(),
                id: "(project directory)".into(),
            });
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        fs::rename(trashed, &to).await.map_err(io(&to))?;
        Ok(())
    }
}

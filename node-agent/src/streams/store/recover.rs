//! Crash leftovers found and removed when the agent starts.

use super::*;

impl StreamStore {
    /// Removes crash leftovers in every project directory: `*.partial` files, stream files
    /// without a manifest, and manifests whose stream is missing or of the wrong size.
    /// Interrupted downloads (`*.download`) stay: they resume with `Range`. Returns what was
    /// removed.
    pub async fn recover(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        for dir in self.project_dirs().await? {
            let mut rd = fs::read_dir(&dir).await.map_err(io(&dir))?;
            let mut names = Vec::new();
            while let Some(e) = rd.next_entry().await.map_err(io(&dir))? {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
            for name in &names {
                let stale = if name.ends_with(".partial") {
                    true
                } else if let Some(stem) = name.strip_suffix(".zstream") {
                    !names.contains(&format!("{stem}.json"))
                } else if let Some(stem) = name.strip_suffix(".json") {
                    let stream = dir.join(format!("{stem}.zstream"));
                    let size_ok =
                        match (fs::metadata(&stream).await, fs::read(dir.join(name)).await) {
                            (Ok(meta), Ok(text)) => serde_json::from_slice::<Manifest>(&text)
                                .is_ok_and(|m| m.bytes == meta.len()),
                            _ => false,
                        };
                    !size_ok
                } else {
                    false
                };
                if stale {
                    let path = dir.join(name);
                    fs::remove_file(&path).await.map_err(io(&path))?;
                    removed.push(path);
                }
            }
            if !removed.is_empty() {
                sync_dir(&dir).await?;
            }
        }
        Ok(removed)
    }

    /// Every `<root>/<ns>/<name>` directory (the trash excluded).
    pub(super) async fn project_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let mut namespaces = match fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        while let Some(ns) = namespaces.next_entry().await.map_err(io(&self.root))? {
            if ns.file_name() == TRASH_DIR
                || !ns.file_type().await.map_err(io(&ns.path()))?.is_dir()
            {
                continue;
            }
            let mut projects = fs::read_dir(ns.path()).await.map_err(io(&ns.path()))?;
            while let Some(p) = projects.next_entry().await.map_err(io(&ns.path()))? {
                if p.file_type().await.map_err(io(&p.path()))?.is_dir() {
                    out.push(p.path());
                }
            }
        }
        Ok(out)
    }
}

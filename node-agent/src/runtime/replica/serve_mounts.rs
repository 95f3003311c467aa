//! Serving a primary's folder mounts of other projects (DESIGN §5.7).

use super::*;

/// Makes the project's folder mounts match its spec (DESIGN §5.7) and says how each went.
/// Mounts inside the project that the spec no longer names are taken down.
pub(super) async fn serve_mounts(
    cx: &AgentContext,
    sr: &StreamReplica,
    project: &Project,
    mountpoint: &Path,
) -> Vec<projstore_api::MountStatus> {
    // One that cannot be read is none: every mount says it is not served yet.
    let sources = projstore_api::contract::mount_sources(sr.annotations()).unwrap_or_default();
    let ns = sr.namespace().unwrap_or_default();
    let dirs = crate::mounts::MountDirs::new(&cx.cfg.run_dir);
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for m in &project.spec.mounts {
        let status = |phase: &str, message: String| projstore_api::MountStatus {
            mount_path: m.mount_path.clone(),
            phase: phase.into(),
            message: Some(message),
        };
        let wanted = async {
            let rel = crate::mounts::safe_relative(&m.mount_path)?;
            let path = crate::mounts::safe_relative(&m.path)?;
            if m.path.contains(',') {
                // It would reach sshfs's mount options and its name in the mount table.
                return Err(format!(
                    "path {:?}: a comma is not supported in a mount's path",
                    m.path
                ));
            }
            let key = ProjectKey::new(&ns, &m.project)?;
            let src = sources
                .get(&m.project)
                .ok_or_else(|| format!("project {} is not served yet", m.project))?;
            let remote_host_key = src.host_key.clone();
            let remote = if src.node == cx.node() {
                None
            } else {
                // The controller copies the source pool's sftp endpoint into the annotation:
                // this agent watches only its own pools.
                let ep = src
                    .sftp
                    .as_deref()
                    .ok_or_else(|| format!("the agent of {} serves no sftp", src.pool))?;
                crate::sftp::check_endpoint(ep)?;
                Some(ep.to_owned())
            };
            let source_project = Api::<Project>::namespaced(cx.client.clone(), &ns)
                .get_opt(&m.project)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("project {} does not exist", m.project))?;
            let wanted = crate::mounts::Wanted {
                consumer_root: mountpoint.to_path_buf(),
                mount_path: rel,
                source_project: Path::new(&key.namespace).join(&key.name),
                source_root: cx.cfg.projects_root.join(&key.namespace).join(&key.name),
                path,
                remote_host_key: remote.as_ref().and(remote_host_key),
                bind_address: remote.as_ref().and(cx.sftp_address()),
                remote,
                read_only: m.read_only,
                source_owner: (source_project.spec.owner.uid, source_project.spec.owner.gid),
                owner: (project.spec.owner.uid, project.spec.owner.gid),
            };
            Ok::<_, String>((wanted, src.pool.clone()))
        };
        match wanted.await {
            Err(e) => out.push(status("Failed", e)),
            Ok((w, source_pool)) => {
                targets.push(w.target());
                if w.remote.is_some() && cx.sftp_keys().is_none() {
                    out.push(status(
                        "Failed",
                        "this agent serves no sftp (--sftp-listen): it cannot mount from other hosts".into(),
                    ));
                    continue;
                }
                let keys = cx.sftp_keys().clone().unwrap_or(crate::sftp::SshKeys {
                    dir: Default::default(),
                });
                match crate::mounts::ensure(&w, &keys, &dirs).await {
                    Ok(()) => out.push(status(
                        "Mounted",
                        format!(
                            "{}:{} from {}",
                            m.project,
                            m.path,
                            w.remote.as_deref().unwrap_or("this host")
                        ),
                    )),
                    Err(e) => out.push(status(
                        "Failed",
                        failed_mount(e, w.remote.as_ref().and(cx.mounts_refused_by(&source_pool))),
                    )),
                }
            }
        }
    }
    // Mounts no longer asked for: each released beneath the project's root, by mount ID.
    for old in crate::mounts::mount_table() {
        if let Ok(rel) = old.target.strip_prefix(mountpoint)
            && old.is_root_fuse()
            && old.target != mountpoint
            && !targets.contains(&old.target)
        {
            crate::mounts::release(mountpoint, rel, &dirs).await;
        }
    }
    out
}

/// Why a mount failed: sshfs sees only a reset connection when the source host's sshd is
/// down, so the reason its pool gives (`refusal`, for a mount from another host) is added.
fn failed_mount(e: String, refusal: Option<String>) -> String {
    match refusal {
        Some(why) => format!("{e}; the source host says: {why}"),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projstore_api::{StoragePool, StoragePoolStatus};

    #[test]
    fn a_failed_mount_quotes_why_the_source_host_serves_none() {
        let why = "/tmp must be owned by root and not writable by group or others to serve as the sftp chroot";
        let mut pool = StoragePool::new(
            "host-b-storage",
            serde_json::from_value(serde_json::json!({
            "nodeName": "host-b", "poolName": "tank", "vdevs": [{"path": "/dev/sdb"}]}))
            .unwrap(),
        );
        pool.status = Some(StoragePoolStatus {
            // The condition the source host's agent writes when its sftp server cannot start.
            conditions: vec![crate::runtime::pool::mounts_condition(None, Some(why), &[]).unwrap()],
            ..Default::default()
        });
        let pools = [std::sync::Arc::new(pool)];
        let refusal = crate::runtime::pool::mounts_refusal(&pools, "host-b-storage");
        let said = failed_mount(
            "sshfs failed: read: Connection reset by peer".into(),
            refusal,
        );
        assert!(
            said.starts_with(
                "sshfs failed: read: Connection reset by peer; the source host says: "
            ) && said.contains(why),
            "{said}"
        );
        // A pool that serves mounts, or none known, adds nothing.
        assert_eq!(
            crate::runtime::pool::mounts_refusal(&pools, "host-c-storage"),
            None
        );
        assert_eq!(failed_mount("x".into(), None), "x");
    }
}

//! The sftp side of the main loop: sshd started with this host's keys, and the peers that
//! mount projects from here let in to exactly those projects.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use projstore_api::StoragePool;

use super::{Config, pool};

/// A cache of every object of kind `K`, kept by a watch.
pub(super) fn watch_all<K>(client: Client) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let watch = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| async {});
    (store, tokio::spawn(watch))
}

/// Makes this host's sftp keys (once) and starts sshd; returns it with what the pools'
/// status publishes about it.
pub(super) async fn start_sftp(
    cfg: &Config,
    listen: std::net::SocketAddr,
    dirs: &crate::mounts::MountDirs,
) -> Result<(crate::sftp::Sshd, Option<pool::SftpAdvert>), String> {
    let keys = crate::sftp::install_keys(&cfg.run_dir)?;
    let public = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p)
            .map(|k| k.trim().to_owned())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let advert = match &cfg.sftp_advertise {
        Some(endpoint) => Some(pool::SftpAdvert {
            endpoint: endpoint.clone(),
            host_key: public(keys.host_pub())?,
            client_key: public(keys.client_pub())?,
        }),
        None => None,
    };
    let sshd = crate::sftp::Sshd::start(listen, &keys, dirs, &cfg.run_dir).await?;
    Ok((sshd, advert))
}

/// Lets the peers that mount projects of this host in to sftp, each to the exports of those
/// projects alone; takes every other view down.
pub(super) async fn let_peers_in(
    sshd: &mut crate::sftp::Sshd,
    cfg: &Config,
    dirs: &crate::mounts::MountDirs,
    replicas: &[Arc<projstore_api::StreamReplica>],
    pools: &[Arc<StoragePool>],
) {
    let (grants, problems) = crate::sftp::grants(replicas, pools, &cfg.node_name);
    for p in problems {
        tracing::debug!(problem = %p, "a peer is not let in to sftp yet");
    }
    let (d, root, g) = (dirs.clone(), cfg.projects_root.clone(), grants.clone());
    let sync = tokio::task::spawn_blocking(move || crate::mounts::sync_peers(&d, &root, &g));
    // The heartbeat is renewed by this loop: it never waits long on mounts.
    match tokio::time::timeout(Duration::from_secs(20), sync).await {
        Ok(Ok(problems)) => {
            for p in problems {
                tracing::warn!(problem = %p, "a peer's sftp view");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot update the peers' sftp views"),
        Err(_) => tracing::warn!("the peers' sftp views took over 20 s: left for the next pass"),
    }
    if let Err(e) = sshd.let_in(&grants) {
        tracing::warn!(error = %e, "cannot let the peers in to sftp");
    }
}

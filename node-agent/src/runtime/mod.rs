//! `projstore-agent run`: the agent on one storage host. A loop every `interval` renews the
//! heartbeat Lease (self-fencing when it cannot), keeps the host's StoragePools, runs the
//! sanity checks, serves streams and the sftp server; the replicas are worked on by
//! [`schedule`], event-driven, while the checks pass.

mod context;
mod peers;
pub mod pool;
pub mod replica;
pub mod schedule;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use projstore_api::{ReplicaRole, ReplicaState, StoragePool, StreamReplica};

use crate::layout::PoolLayout;
use crate::sanity::run_checks;
use crate::server::{StreamServer, serve};
use crate::streams::ProjectKey;
use crate::streams::StreamStore;
use crate::zfs::{PoolName, PropertyName, Zfs};
pub use context::AgentContext;
use peers::{let_peers_in, start_sftp, watch_all};

/// After this long without renewing its Lease, an agent stops serving read-write: the
/// controller considers a pool NotReady after 40 s, and fails over only after the grace.
const LEASE_EXPIRY: Duration = Duration::from_secs(30);

/// How often the space the projects use is compared with their status (one `zfs get` per
/// pool).
const USAGE_SWEEP: Duration = Duration::from_secs(30);

/// How often a pool is kept in full (import, vdevs, properties, layout) when nothing asks.
const KEEP_EVERY: Duration = Duration::from_secs(300);

/// Field manager of the agent's writes.
pub const MANAGER: &str = "projstore-agent";

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub projects_root: PathBuf,
    /// Each pool's `streams` filesystem is mounted at `<streams_root>/<pool>`.
    pub streams_root: PathBuf,
    pub listen: SocketAddr,
    /// How peers reach the stream server (`https://<addr>:<port>`).
    pub advertise: String,
    pub lease_namespace: String,
    /// This node's TLS identity for the stream server and its fetches (always set by
    /// `projstore-agent run`).
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    /// Seconds between heartbeats and pool checks (10 in production).
    pub interval: Duration,
    /// Where the sftp-only sshd listens, and how peers reach it (`host:port`); no sshd
    /// (and no mounts from other hosts) when unset.
    pub sftp_listen: Option<SocketAddr>,
    pub sftp_advertise: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served in plain HTTP (kubelet probes
    /// and scrapers present no client certificate); not served when unset.
    pub health_listen: Option<SocketAddr>,
    /// Runtime files: sshd config, sshfs staging mounts.
    pub run_dir: PathBuf,
    /// `zfs` and `zpool` to run (e.g. the host's userland); found on the PATH when unset.
    pub zfs_bin: Option<PathBuf>,
    pub zpool_bin: Option<PathBuf>,
    /// Whether the test suites' fault hooks are armed (`--test-fault-hooks`; the dev cluster
    /// only): see [`crate::live::FLIP_NEXT_SEND`] and [`crate::live::HOLD_SENDS`].
    pub fault_hooks: bool,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

async fn heartbeat(client: &Client, cfg: &Config) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease_namespace);
    let name = format!("projstore-agent-{}", cfg.node_name);
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
        "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40, "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now)}
    });
    leases
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// The stream server's authorization: a node may read a project's data only while it holds
/// a StreamReplica of it (Live or Archived), as the API says now.
fn holders_of_copies(client: Client) -> crate::server::Authorize {
    Arc::new(move |project, node| {
        let client = client.clone();
        Box::pin(async move {
            let api: Api<StreamReplica> = Api::namespaced(client, &project.namespace);
            let selector = format!(
                "{}={},{}={node}",
                projstore_api::PROJECT_LABEL,
                project.name,
                projstore_api::NODE_LABEL
            );
            let list = api
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("cannot ask the API who holds {project}: {e}"))?;
            Ok(list.items.iter().any(|sr| {
                sr.spec.project == project.name
                    && sr.spec.node == node
                    && sr.spec.state != projstore_api::ReplicaState::Trashed
            }))
        })
    })
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(client: Client, cfg: Config) -> Result<(), RunError> {
    let detected = Zfs::with_binaries(
        cfg.zfs_bin.clone().unwrap_or_else(|| "zfs".into()),
        cfg.zpool_bin.clone().unwrap_or_else(|| "zpool".into()),
    )
    .await;
    let zfs = match detected {
        Ok(z) => Some(z),
        Err(e) => {
            tracing::error!(error = %e, "ZFS is not usable: reporting not Ready until it is");
            None
        }
    };
    let mount_dirs = crate::mounts::MountDirs::new(&cfg.run_dir);
    if let Err(e) = mount_dirs.prepare() {
        tracing::error!(error = %e, "cannot prepare the mount directories: folder mounts and the sftp server fail");
    }
    for m in mount_dirs.release_unused_staging() {
        tracing::info!(mount = %m.display(), "released a staging mount no folder mount reads");
    }
    let listener = crate::server::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    // Health from the start: live at once, ready once the sanity checks pass.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health_task = match cfg.health_listen {
        Some(addr) => {
            let l = crate::server::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?;
            Some(tokio::spawn(crate::server::serve_health(l, ready.clone())))
        }
        None => None,
    };
    let pools_api: Api<StoragePool> = Api::all(client.clone());
    let (store, writer) = reflector::store::<StoragePool>();
    let watch = reflector::reflector(
        writer,
        watcher(
            pools_api.clone(),
            own_pools(&pools_api, &cfg.node_name).await,
        )
        .default_backoff(),
    )
    .applied_objects()
    .for_each(|_| async {});
    let watch = tokio::spawn(watch);
    let _ = store.wait_until_ready().await;
    // Every pool and every replica, for the sftp side: which peer mounts which project from
    // here (the controller's mount sources), and with which key from which address.
    let (all_pools, all_pools_watch) = watch_all::<StoragePool>(client.clone());
    let (all_replicas, all_replicas_watch) =
        watch_all::<projstore_api::StreamReplica>(client.clone());
    // A primary's retention and a close look at the other copies: never before they are known.
    let _ = all_replicas.wait_until_ready().await;
    let cx = AgentContext::new(
        client.clone(),
        cfg.clone(),
        (store.clone(), all_pools.clone(), all_replicas.clone()),
        zfs.clone(),
    );
    let replicas = schedule::Replicas::start(cx.clone());
    let sr_store = replicas.store.clone();

    let mut server: Option<Arc<StreamServer>> = None;
    let mut server_task = None;
    let mut listener = Some(listener);
    let mut tick = tokio::time::interval(cfg.interval);
    let mut renewed = std::time::Instant::now();
    let mut sshd: Option<crate::sftp::Sshd> = None;
    // This host's sftp endpoint and the public halves of its keys, published in the pools'
    // status once sshd runs.
    let mut sftp_advert: Option<pool::SftpAdvert> = None;
    // Why the sftp server did not start (published as the pools' MountsServed condition).
    let mut sftp_failure: Option<String> = None;
    let mut recovered = std::collections::BTreeSet::new();
    let mut swept = std::time::Instant::now();
    let mut kept: std::collections::HashMap<
        String,
        (Option<i64>, std::time::Instant, pool::PoolReport),
    > = Default::default();
    let shutdown = projstore_api::process::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        // Alive (the liveness probe reads it): this loop ran.
        if let Err(e) = touch(&alive_file(&cfg.run_dir)) {
            tracing::warn!(error = %e, "cannot mark the agent alive");
        }
        // A renewed certificate (cert-manager, a rotated Secret) is used from the next
        // connection on; files that do not make a valid identity leave the old one in use.
        if let Some(tls) = &cfg.tls {
            match tls.reload() {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but are not usable: keeping the loaded certificate")
                }
            }
        }
        match heartbeat(&client, &cfg).await {
            Ok(()) => renewed = std::time::Instant::now(),
            Err(e) => tracing::warn!(error = %e, "cannot renew the heartbeat Lease"),
        }
        // Self-fencing: once our Lease may have expired, the controller may promote another
        // copy; stop serving read-write before that can happen (DESIGN §6 invariant 2).
        if renewed.elapsed() > LEASE_EXPIRY {
            replicas.close();
            replica::fence_all(&cx, &sr_store.state()).await;
            ready.store(false, Ordering::Relaxed);
            continue;
        }
        let mine: Vec<Arc<StoragePool>> = store
            .state()
            .into_iter()
            .filter(|p| p.spec.node_name == cfg.node_name)
            .collect();
        let mut all_ok = !mine.is_empty();
        for sp in &mine {
            // The whole pool (import, vdevs, properties, layout) is kept when its spec
            // changed, after a failed check, and every few minutes; the checks run every tick.
            let key = sp.name_any();
            let fresh = kept
                .get(&key)
                .filter(|(generation, at, _)| {
                    *generation == sp.metadata.generation && at.elapsed() < KEEP_EVERY
                })
                .map(|(_, _, r)| r.clone());
            let refreshed = fresh.is_none();
            let report = match (&zfs, fresh) {
                (Some(_), Some(r)) => Ok(r),
                (Some(z), None) => pool::keep(z, sp, &cfg.streams_root)
                    .await
                    .map_err(|e| e.to_string()),
                (None, _) => Err("ZFS is not usable on this host".to_owned()),
            };
            let layout = PoolName::parse(&sp.spec.pool_name)
                .ok()
                .map(PoolLayout::new);
            let streams_mp = cfg.streams_root.join(&sp.spec.pool_name);
            let checks = match &layout {
                Some(l) => {
                    run_checks(
                        zfs.as_ref(),
                        &[(l.clone(), streams_mp.clone())],
                        &cfg.projects_root,
                    )
                    .await
                }
                None => Vec::new(),
            };
            let pool_ok = report.is_ok() && checks.iter().all(|c| c.ok);
            all_ok &= pool_ok;
            match (&report, pool_ok) {
                (Ok(r), true) if refreshed => {
                    let now = std::time::Instant::now();
                    kept.insert(key, (sp.metadata.generation, now, r.clone()));
                }
                (Ok(_), true) => {}
                _ => {
                    kept.remove(&key);
                }
            }
            // Crash leftovers, once per pool after a start: half-written streams and
            // interrupted receives go (their sources are intact); downloads are resumed.
            if let (Some(z), Ok(_), Some(l), true) = (
                &zfs,
                &report,
                &layout,
                !recovered.contains(&sp.spec.pool_name),
            ) {
                let store = StreamStore::new(&streams_mp);
                let (pool_key, replicas_now) = (sp.name_any(), all_replicas.state());
                let receives_here = |ns: &str, name: &str| {
                    replicas_now.iter().any(|r| {
                        r.spec.pool == pool_key
                            && r.spec.project == name
                            && r.namespace().as_deref() == Some(ns)
                            && r.spec.state == projstore_api::ReplicaState::Live
                            && r.spec.role == projstore_api::ReplicaRole::Secondary
                    })
                };
                match (
                    store.recover().await,
                    crate::transfer::recover_staging(z, l.pool(), &receives_here).await,
                ) {
                    (Ok(files), Ok(datasets)) => {
                        for f in files {
                            tracing::warn!(file = %f.display(), "removed a stream a crash left half-written");
                        }
                        for d in datasets {
                            tracing::warn!(dataset = %d, "removed a receive a crash interrupted");
                        }
                        recovered.insert(sp.spec.pool_name.clone());
                    }
                    (Err(e), _) => tracing::error!(error = %e, "cannot clean the stream store"),
                    (_, Err(e)) => tracing::error!(error = %e, "cannot clean interrupted receives"),
                }
            }
            if let (Some(z), Ok(_), Some(l)) = (&zfs, &report, &layout) {
                let store = StreamStore::new(&streams_mp);
                match replica::purge_trash(z, l.pool(), &store, chrono::Utc::now()).await {
                    Ok(purged) => {
                        for ds in purged {
                            tracing::info!(dataset = %ds, "purged from the trash after its retention");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot purge the trash"),
                }
            }
            if server.is_none() && report.is_ok() {
                let s = Arc::new(StreamServer {
                    store: StreamStore::new(streams_mp),
                    authorize: holders_of_copies(client.clone()),
                    sources: zfs.clone().map(|zfs| {
                        let sources = crate::live::Sources::new(zfs, cx.clone().locator());
                        if cfg.fault_hooks {
                            sources.with_fault_hooks(&cfg.run_dir)
                        } else {
                            sources
                        }
                    }),
                    verify: Some(replica::verifier(cx.clone())),
                });
                if let (Some(l), Some(tls)) = (listener.take(), cfg.tls.clone()) {
                    server_task = Some(tokio::spawn(serve(l, s.clone(), tls)));
                }
                server = Some(s);
            }
            let patch = pool::status_patch(
                zfs.as_ref(),
                sp,
                &checks,
                report.as_ref().map_err(Clone::clone),
                &cfg.advertise,
                pool::SftpReport {
                    advert: sftp_advert.as_ref(),
                    failure: sftp_failure.as_deref(),
                },
                0,
            )
            .await;
            if let Err(e) = pools_api
                .patch_status(
                    &sp.name_any(),
                    &PatchParams::apply(MANAGER),
                    &Patch::Merge(&patch),
                )
                .await
            {
                // A conflict means the controller wrote meanwhile: the next tick retries.
                tracing::debug!(pool = %sp.name_any(), error = %e, "status not written");
            }
        }
        ready.store(all_ok, Ordering::Relaxed);
        // The sftp server only once the checks pass: never serve an empty directory.
        if all_ok
            && let Some(listen) = cfg.sftp_listen
            && sshd.as_mut().is_none_or(|s| !s.running())
        {
            match start_sftp(&cfg, listen, &mount_dirs).await {
                Ok((s, advert)) => {
                    tracing::info!(%listen, "sftp server started");
                    sshd = Some(s);
                    sftp_advert = advert;
                    sftp_failure = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the sftp server; mounts of this host's projects fail");
                    sshd = None;
                    sftp_failure = Some(e);
                }
            }
        }
        // Peers in: each to the exports of the projects it mounts from here, nothing else.
        if let Some(s) = sshd.as_mut() {
            let_peers_in(
                s,
                &cfg,
                &mount_dirs,
                &all_replicas.state(),
                &all_pools.state(),
            )
            .await;
        }
        // Replicas only once the sanity checks pass: never write into an unmounted pool.
        if all_ok {
            replicas.open();
            if let Some(z) = &zfs
                && swept.elapsed() >= USAGE_SWEEP
            {
                swept = std::time::Instant::now();
                for sp in &mine {
                    poke_changed_usage(z, sp, &sr_store.state(), &replicas).await;
                }
            }
        } else {
            replicas.close();
        }
    }
    // Work in progress on a replica (a receive, a stream) finishes; no new work starts.
    replicas.stop().await;
    // Clean shutdown: the mounts this agent made go first (sshd stops when dropped).
    for m in crate::mounts::release_under(&cfg.projects_root, &mount_dirs).await {
        tracing::info!(mount = %m.display(), "unmounted at shutdown");
    }
    for m in crate::mounts::release_under(&mount_dirs.exports_root(), &mount_dirs).await {
        tracing::info!(mount = %m.display(), "export released at shutdown");
    }
    drop(sshd);
    watch.abort();
    all_pools_watch.abort();
    all_replicas_watch.abort();
    if let Some(t) = server_task {
        t.abort();
    }
    if let Some(t) = health_task {
        t.abort();
    }
    Ok(())
}

/// Pokes the primaries on pool `sp` whose space use differs from what their status says (a
/// user writing, snapshots growing as data changes): one `zfs list` for the whole pool.
async fn poke_changed_usage(
    zfs: &Zfs,
    sp: &StoragePool,
    replicas: &[Arc<StreamReplica>],
    scheduler: &schedule::Replicas,
) {
    let Ok(layout) = PoolName::parse(&sp.spec.pool_name).map(PoolLayout::new) else {
        return;
    };
    let (Ok(projects), Ok(referenced), Ok(by_snapshots)) = (
        layout.projects(),
        PropertyName::parse("referenced"),
        PropertyName::parse("usedbysnapshots"),
    ) else {
        return;
    };
    let listed = match zfs
        .descendants_with(&projects, &[&referenced, &by_snapshots], Some(2))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(pool = %sp.name_any(), error = %e, "cannot list project usage");
            return;
        }
    };
    let usage: std::collections::HashMap<&str, &[String]> = listed
        .iter()
        .map(|(ds, v)| (ds.as_str(), v.as_slice()))
        .collect();
    for sr in replicas.iter().filter(|r| {
        r.spec.pool == sp.name_any()
            && r.spec.role == ReplicaRole::Primary
            && r.spec.state == ReplicaState::Live
    }) {
        let Ok(key) = ProjectKey::new(&sr.namespace().unwrap_or_default(), &sr.spec.project) else {
            continue;
        };
        let Some(now) = layout
            .project(&key)
            .ok()
            .and_then(|ds| usage.get(ds.as_str()).copied())
        else {
            continue;
        };
        let st = sr.status.as_ref();
        if st.and_then(|s| s.phase) == Some(projstore_api::ReplicaPhase::Error) {
            continue; // retried on its backoff
        }
        let reported = [
            st.and_then(|s| s.used_bytes),
            st.and_then(|s| s.snapshot_used_bytes),
        ];
        let seen = [now[0].parse().ok(), now[1].parse().ok()];
        if reported != seen {
            scheduler.poke(sr);
        }
    }
}

/// Whether writing `new` would change `current` (condition times aside).
fn same_status(current: &serde_json::Value, new: &serde_json::Value) -> bool {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(list) = v
            .get_mut("conditions")
            .and_then(serde_json::Value::as_array_mut)
        {
            for c in list {
                c["lastTransitionTime"] = serde_json::Value::Null;
            }
        }
        v
    };
    let (a, b) = (strip(current), strip(new));
    b.as_object().is_some_and(|o| {
        o.iter().all(|(k, v)| {
            v.is_null() && a.get(k).is_none_or(serde_json::Value::is_null) || a.get(k) == Some(v)
        })
    })
}

/// Only this node's StoragePools, by the CRD's selectable field `spec.nodeName`. A cluster
/// without custom resource field selectors (Kubernetes before 1.31) refuses the selector:
/// then every pool is watched, and only this node's are acted on.
/// The file the main loop touches at every tick (`projstore-agent alive` reads its age).
pub fn alive_file(run_dir: &Path) -> PathBuf {
    run_dir.join("alive")
}

fn touch(file: &Path) -> std::io::Result<()> {
    std::fs::write(file, b"")
}

async fn own_pools(api: &Api<StoragePool>, node: &str) -> watcher::Config {
    let selector = format!("spec.nodeName={node}");
    let probe = kube::api::ListParams::default().fields(&selector).limit(1);
    match api.list(&probe).await {
        Err(kube::Error::Api(e)) if e.code == 400 => {
            tracing::warn!(error = %e.message, "this cluster cannot select StoragePools by spec.nodeName: watching all of them");
            watcher::Config::default()
        }
        _ => watcher::Config::default().fields(&selector),
    }
}

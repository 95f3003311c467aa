//! The controller process: wait for the CRDs, win the leader Lease, watch, reconcile.

use projstore_api::process::shutdown_signal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use projstore_api::{BackupTarget, Project, StoragePool, StreamReplica};

use crate::context::{Context, Settings};
use crate::metrics::{self, Metrics};
use crate::reconcile::apply;
use projstore_api::lease::Election;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub metrics_addr: SocketAddr,
    pub identity: String,
    pub leader_lease: Duration,
    pub settings: Settings,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("lost the leader Lease: another replica leads now")]
    LostLeadership,
}

/// Waits until every projstore CRD reports Established.
async fn wait_for_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "projects.projstore.io",
        "storagepools.projstore.io",
        "streamreplicas.projstore.io",
        "backuptargets.projstore.io",
    ] {
        loop {
            let established = crds.get_opt(name).await.ok().flatten().is_some_and(|c| {
                c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
            });
            if established {
                break;
            }
            tracing::info!(crd = name, "waiting for the CRD to be established");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Runs until leadership is lost (error) or SIGTERM/SIGINT (Ok).
pub async fn run(client: Client, config: Config) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new()?);
    let m = metrics.clone();
    let addr = config.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(addr, m).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    wait_for_crds(&client).await;
    let election = Election {
        api: Api::namespaced(client.clone(), &config.settings.lease_namespace),
        name: "projstore-controller".into(),
        identity: config.identity.clone(),
        duration: config.leader_lease,
        manager: crate::context::MANAGER.into(),
        observed: Default::default(),
    };
    let taken = tokio::select! {
        taken = election.acquire() => taken,
        _ = shutdown_signal() => return Ok(()),
    };
    tracing::info!(identity = %config.identity, "leading");
    // Renewed from the moment it is taken (also while the caches fill): leadership that lapses
    // at any point ends this run.
    let hold = election.hold_since(taken);
    tokio::pin!(hold);

    let wc = watcher::Config::default();
    let (sr_store, sr_writer) = reflector::store::<StreamReplica>();
    let (pool_store, pool_writer) = reflector::store::<StoragePool>();
    let (lease_store, lease_writer) = reflector::store::<Lease>();
    let sr_api: Api<StreamReplica> = Api::all(client.clone());
    let pool_api: Api<StoragePool> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &config.settings.lease_namespace);
    let reflectors = tokio::spawn(futures::future::join3(
        reflector::reflector(
            sr_writer,
            watcher(sr_api.clone(), wc.clone()).default_backoff(),
        )
        .applied_objects()
        .for_each(|_| async {}),
        reflector::reflector(
            pool_writer,
            watcher(pool_api.clone(), wc.clone()).default_backoff(),
        )
        .applied_objects()
        .for_each(|_| async {}),
        reflector::reflector(
            lease_writer,
            watcher(lease_api.clone(), wc.clone()).default_backoff(),
        )
        .applied_objects()
        .for_each(|_| async {}),
    ));
    // Decisions read these caches: never decide from a half-filled one.
    let ready = futures::future::join3(
        sr_store.wait_until_ready(),
        pool_store.wait_until_ready(),
        lease_store.wait_until_ready(),
    );
    tokio::select! {
        _ = ready => {}
        _ = &mut hold => {
            reflectors.abort();
            return Err(RunError::LostLeadership);
        }
    }

    let projects: Api<Project> = Api::all(client.clone());
    // Bounded concurrency keeps memory flat however many Projects change at once.
    let ctrl_config = kube::runtime::controller::Config::default().concurrency(16);
    let project_ctrl = Controller::new(projects, wc.clone()).with_config(ctrl_config.clone());
    let project_store = project_ctrl.store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        config.settings.clone(),
        (
            sr_store.clone(),
            pool_store.clone(),
            lease_store.clone(),
            project_store.clone(),
        ),
    ));
    let by_pool = project_store.clone();
    let by_source = project_store.clone();
    let project_ctrl = project_ctrl
        .owns(sr_api, wc.clone())
        .watches(pool_api.clone(), wc.clone(), move |pool: StoragePool| {
            // A pool change matters to the projects with a copy there and to those not yet
            // fully placed; recently written projects first, so after a pool loss they
            // re-replicate first.
            let name = pool.name_any();
            let mut hit: Vec<Arc<Project>> = by_pool
                .state()
                .into_iter()
                .filter(|p| {
                    let st = p.status.clone().unwrap_or_default();
                    st.replicas.iter().any(|r| r.pool == name)
                        || st.replicas.len() < usize::from(p.spec.copies)
                })
                .collect();
            hit.sort_by_key(|p| {
                std::cmp::Reverse(p.status.as_ref().and_then(|s| s.last_snapshot.clone()))
            });
            hit.iter()
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
        })
        .watches(
            Api::<Project>::all(client.clone()),
            wc.clone(),
            move |source: Project| {
                // A project that moved or failed over: every project mounting a folder of it.
                let (ns, name) = (source.namespace(), source.name_any());
                by_source
                    .state()
                    .iter()
                    .filter(|p| {
                        p.namespace() == ns && p.spec.mounts.iter().any(|m| m.project == name)
                    })
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown_signal())
        .run(apply::reconcile_project, apply::on_error, ctx.clone())
        .for_each(|_| async {});
    let target_ctrl = Controller::new(Api::<BackupTarget>::all(client.clone()), wc.clone())
        .with_config(ctrl_config.clone())
        .graceful_shutdown_on(shutdown_signal())
        .run(
            crate::reconcile::target::reconcile_target,
            apply::on_error,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let pool_ctrl = Controller::new(pool_api, wc.clone())
        .with_config(ctrl_config)
        .graceful_shutdown_on(shutdown_signal())
        .run(apply::reconcile_pool, apply::on_error, ctx.clone())
        .for_each(|_| async {});
    let readiness = {
        let (metrics, projects) = (metrics.clone(), project_store.clone());
        async move {
            let _ = projects.wait_until_ready().await;
            metrics.ready.store(true, Ordering::Relaxed);
            futures::future::pending::<()>().await;
        }
    };
    // Trashed replicas of deleted projects (tombstones) are removed once their retention ends;
    // the agents purge the data by the same clock (DESIGN §5.6).
    let tombstones = {
        let (client, srs) = (client.clone(), sr_store.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                for r in srs
                    .state()
                    .iter()
                    .filter(|r| crate::reconcile::decide::tombstone_expired(r, chrono::Utc::now()))
                {
                    let api: Api<StreamReplica> =
                        Api::namespaced(client.clone(), &r.namespace().unwrap_or_default());
                    let project =
                        format!("{}/{}", r.namespace().unwrap_or_default(), r.spec.project);
                    match api.delete(&r.name_any(), &Default::default()).await {
                        Ok(_) => {
                            tracing::info!(%project, replica = %r.name_any(), "removed an expired trash tombstone")
                        }
                        Err(e) => {
                            tracing::warn!(%project, replica = %r.name_any(), error = %e, "cannot remove an expired trash tombstone")
                        }
                    }
                }
            }
        }
    };
    let phases = {
        let (metrics, projects) = (metrics.clone(), project_store.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                metrics.projects_by_phase.reset();
                for p in projects.state() {
                    let phase = p
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map_or("Unknown".to_owned(), |ph| format!("{ph:?}"));
                    metrics
                        .projects_by_phase
                        .with_label_values(&[phase.as_str()])
                        .inc();
                }
            }
        }
    };
    let result = tokio::select! {
        _ = futures::future::join3(project_ctrl, pool_ctrl, target_ctrl) => Ok(()),
        _ = readiness => Ok(()),
        _ = phases => Ok(()),
        _ = tombstones => Ok(()),
        _ = &mut hold => Err(RunError::LostLeadership),
    };
    reflectors.abort();
    result
}

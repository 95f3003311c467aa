//! A live secondary: fetches what the chain lacks from the primary's stream server, applies
//! it never mounted, keeps diverged history under `forks/`, reports what it holds.

use super::*;

pub(super) async fn secondary(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<StreamReplicaStatus, ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let storage = c.storage();
    let (zfs, key, layout, ds, store) = (c.zfs, &c.key, &c.layout, &c.ds, &c.store);
    let source = sr.spec.source.as_ref().ok_or("no source primary yet")?;
    let endpoint = source
        .stream_endpoint
        .as_deref()
        .ok_or("the primary's stream endpoint is not known yet")?;
    let peer = Peer::new(endpoint, &source.node, cx.tls()?)?;
    let remote = peer.list(key).await?;
    let edges: Vec<_> = remote
        .iter()
        .filter_map(|(id, m)| m.edge(id).ok())
        .collect();
    let mut exists = zfs.exists(ds).await?;
    if !exists {
        exists = restore_from_trash(zfs, layout, store, key, ds).await?;
    }
    if exists {
        stop_serving(zfs, &cx.cfg.run_dir, ds).await?;
    }
    let held = if exists {
        zfs.snapshots(ds, &[]).await?.last().map(|s| s.guid)
    } else {
        None
    };
    let prev = sr.status.clone().unwrap_or_default();
    let mut todo = plan_for_replica(&edges, held)?;
    if matches!(todo, ReplicaPlan::Diverged) {
        // This copy holds history the primary lacks (a returning old primary): keep it under
        // forks/ and sync afresh. Nothing is destroyed.
        let fork = fork(zfs, &cx.cfg.run_dir, layout, store, key, ds, &remote).await?;
        tracing::warn!(project = %key, fork = %fork, "diverged history preserved; re-syncing from the primary");
        exists = false;
        todo = plan_for_replica(&edges, None)?;
    }
    let received = !matches!(todo, ReplicaPlan::UpToDate);
    match todo {
        ReplicaPlan::UpToDate => {}
        ReplicaPlan::Apply(ids) => {
            // Progress (bytes fetched and applied) shows in status.transfer while it runs.
            let progress = Progress::new();
            let total: u64 = ids
                .iter()
                .filter_map(|id| remote.iter().find(|(i, _)| i.as_str() == id))
                .map(|(_, m)| 2 * m.bytes)
                .sum();
            let _reporter = report_transfer(&cx.client, sr, progress.clone(), total);
            for id in ids {
                let (sid, manifest) = remote
                    .iter()
                    .find(|(i, _)| i.as_str() == id)
                    .ok_or("the peer's list changed")?;
                let local = store.manifest(key, sid).await.ok();
                if local.as_ref().map(|m| &m.sha256) != Some(&manifest.sha256) {
                    peer.download(store, key, sid, manifest, &progress).await?;
                } else {
                    progress.add(usize::try_from(manifest.bytes).unwrap_or(usize::MAX));
                }
                let mut applied = apply_stream(&storage, key, sid, ds, &progress).await;
                if let Err(TransferError::Store(StoreError::Corrupt { reason, .. })) = &applied {
                    // Damaged on this disk since it was fetched: never applied; fetch it again.
                    tracing::warn!(project = %key, stream = %sid, %reason, "stored stream is corrupt: fetching it again");
                    crate::metrics::add(&crate::metrics::METRICS.errors, 1);
                    store.delete(key, sid).await?;
                    peer.download(store, key, sid, manifest, &Progress::new())
                        .await?;
                    applied = apply_stream(&storage, key, sid, ds, &Progress::new()).await;
                }
                let applied = applied?;
                tracing::info!(project = %key, stream = %sid, snapshot = %applied.name, "stream applied");
            }
        }
        ReplicaPlan::Diverged => {
            return Err(
                format!("the primary's chain does not lead to a fresh copy of {key}").into(),
            );
        }
    }
    let forked = forks_verdict(zfs, layout, key).await;
    let exists = if received {
        zfs.exists(ds).await?
    } else {
        exists
    };
    if exists {
        let have = zfs.get_props(ds, &[PROP_EPOCH, PROP_ROLE]).await?;
        let epoch = sr.spec.epoch.to_string();
        for (prop, want) in [(PROP_EPOCH, epoch.as_str()), (PROP_ROLE, "secondary")] {
            if have.get(prop).map(String::as_str) != Some(want) {
                zfs.set(ds, &p(prop)?, want).await?;
            }
        }
        if received {
            // A copy just received (or re-synced after a fork) is read-only from the start.
            stop_serving(zfs, &cx.cfg.run_dir, ds).await?;
        }
    }
    let snaps = if exists {
        zfs.snapshots(ds, &[]).await?
    } else {
        Vec::new()
    };
    let newest_remote = plan(&edges)?.target.map(|t| t.time);
    let stored = store.list(key).await?;
    let mut verdicts = Vec::new();
    verdicts.extend(forked);
    Ok(plans::secondary_status(
        &prev,
        newest_remote,
        &snaps,
        plans::streams_summary(stored.iter().map(|s| s.manifest.bytes)),
        plans::conditions(&verdicts, &prev.conditions, Timestamp::now()),
    ))
}

/// Renames `ds` to `forks/<ns>/<name>-e<epoch>` (`-2`, `-3`… when taken), unmounted and
/// read-only, and sets aside the local streams the primary does not serve. Returns the fork.
pub(super) async fn fork(
    zfs: &Zfs,
    run_dir: &Path,
    layout: &PoolLayout,
    store: &StreamStore,
    key: &ProjectKey,
    ds: &DatasetName,
    remote: &[(crate::streams::StreamId, crate::streams::Manifest)],
) -> Result<DatasetName, ReplicaError> {
    let epoch: u64 = zfs
        .property(ds, &p(PROP_EPOCH)?)
        .await?
        .parse()
        .unwrap_or(0);
    let base = layout.fork(key, epoch)?;
    let mut target = base.clone();
    let mut n = 1;
    while zfs.exists(&target).await? {
        n += 1;
        target = DatasetName::parse(&format!("{base}-{n}"))?;
    }
    stop_writes(zfs, run_dir, ds).await?;
    zfs.create_parents(&target).await?;
    zfs.rename(ds, &target).await?;
    for (prop, value) in [
        ("mountpoint", "none"),
        ("readonly", "on"),
        (PROP_ROLE, "fork"),
    ] {
        zfs.set(&target, &p(prop)?, value).await?;
    }
    let label = target.as_str().rsplit('/').next().unwrap_or_default();
    for s in store.list(key).await? {
        let served = remote
            .iter()
            .any(|(id, m)| *id == s.id && m.sha256 == s.manifest.sha256);
        if !served {
            store.set_aside(key, &s.id, label).await?;
        }
    }
    Ok(target)
}

/// `Diverged` naming the forks kept for `key` on this pool, if any.
pub(super) async fn forks_verdict(
    zfs: &Zfs,
    layout: &PoolLayout,
    key: &ProjectKey,
) -> Option<Verdict> {
    let ns = layout.forks().and_then(|f| f.child(&key.namespace)).ok()?;
    let children: Vec<String> = zfs
        .children(&ns)
        .await
        .ok()?
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    plans::forks_verdict(&children, &format!("{ns}/{}-e", key.name))
}

/// Patches `status.transfer` of `sr` every second from `progress` until dropped.
pub(super) fn report_transfer(
    client: &Client,
    sr: &StreamReplica,
    progress: Progress,
    total: u64,
) -> AbortOnDrop {
    let api: Api<StreamReplica> =
        Api::namespaced(client.clone(), &sr.namespace().unwrap_or_default());
    let name = sr.name_any();
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = progress.bytes().min(total);
            let transfer = projstore_api::TransferProgress {
                bytes_done: done,
                bytes_total: total,
            };
            let patch = serde_json::json!({ "status": { "transfer": transfer } });
            let _ = api
                .patch_status(
                    &name,
                    &kube::api::PatchParams::apply(crate::runtime::MANAGER),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
        }
    }))
}

/// A task that stops when this handle is dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

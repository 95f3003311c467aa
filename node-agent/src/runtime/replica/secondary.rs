//! A live secondary: catches up with its source (the primary) over live sends straight into
//! `zfs recv`, one verified snapshot at a time, never mounted; keeps diverged history under
//! `forks/`; prunes what the source's retention let go; reports what it holds.

use super::*;
use crate::fetch::FetchError;
use crate::live::{LiveSnapshot, SendRequest, estimate};
use plans::{LiveSync, plan_live_sync};

pub(super) async fn secondary(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
) -> Result<StreamReplicaStatus, ReplicaError> {
    let c = Copy::new(cx, sr, pool)?;
    let (zfs, key, layout, ds, store) = (c.zfs, &c.key, &c.layout, &c.ds, &c.store);
    let primary = source_peer(cx, sr)?;
    // The source is the primary; while it cannot be reached, another Ready copy that holds
    // newer snapshots than this one (its history continuing ours) serves instead.
    let (peer, remote, unreachable) = match primary.snapshots(key).await {
        Ok(r) => (primary, r, None),
        // The primary has not made its dataset yet (a new project): not an error, a wait.
        Err(FetchError::NotFound { reason, .. }) => {
            tracing::debug!(project = %key, %reason, "the primary has no live copy yet");
            let prev = sr.status.clone().unwrap_or_default();
            return Ok(StreamReplicaStatus {
                phase: Some(projstore_api::ReplicaPhase::Syncing),
                transfer: None,
                ..prev
            });
        }
        Err(e @ FetchError::Peer { .. }) => match other_source(cx, sr, key).await {
            Some((peer, remote)) => (peer, remote, Some(e)),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let guids: Vec<u64> = remote.iter().filter_map(LiveSnapshot::guid).collect();
    if guids.len() != remote.len() {
        return Err(format!(
            "{} lists a snapshot GUID that is not a number",
            peer.endpoint
        )
        .into());
    }
    let mut exists = zfs.exists(ds).await?;
    if !exists {
        exists = restore_from_trash(zfs, layout, store, key, ds).await?;
    }
    if exists {
        stop_serving(zfs, &cx.cfg.run_dir, ds).await?;
    }
    let holds = p(plans::PROP_HOLDS)?;
    let local = if exists {
        zfs.snapshots(ds, &[&holds]).await?
    } else {
        Vec::new()
    };
    if local.iter().any(|s| !plans::recorded_holds(s).is_empty()) {
        // A demoted primary's holds for its copies: only a live primary holds snapshots.
        let released = release_all_holds(zfs, ds).await?;
        tracing::info!(project = %key, released, "holds of a former primary released");
    }
    let prev = sr.status.clone().unwrap_or_default();
    let mut todo = plan_live_sync(&local, &guids);
    if let Some(e) = &unreachable {
        // Only the primary's history decides what diverged; another copy only lets this one
        // catch up along the same history.
        if !todo.continues_history() {
            return Err(format!(
                "{e}; the copy on {} cannot serve instead: its snapshots do not continue this copy's",
                peer.node
            )
            .into());
        }
        tracing::info!(project = %key, primary_error = %e, source = %peer.node, "the primary cannot be reached: catching up from another copy");
    }
    // Held while this pass receives; taken before anything here changes (a fork). None
    // free: this copy is looked at again when one is given back, and says it is syncing.
    let receiving = if todo == LiveSync::UpToDate {
        None
    } else {
        let slot = cx
            .receives
            .take(kube::runtime::reflector::ObjectRef::from_obj(sr));
        if slot.is_none() {
            tracing::info!(project = %key, "every live receive of this host is taken: waiting for one");
            return Ok(StreamReplicaStatus {
                phase: Some(projstore_api::ReplicaPhase::Syncing),
                transfer: None,
                ..prev
            });
        }
        slot
    };
    if todo == LiveSync::Diverged {
        // This copy holds history the source lacks (a returning old primary): keep it under
        // forks/ and sync afresh. Nothing is destroyed.
        let fork = fork(zfs, &cx.cfg.run_dir, layout, store, key, ds).await?;
        tracing::warn!(project = %key, fork = %fork, "diverged history preserved; re-syncing from the primary");
        todo = plan_live_sync(&[], &guids);
    }
    // A full send makes the dataset anew (a new copy, or one re-synced after a fork).
    let made_anew = matches!(todo, LiveSync::Full { .. });
    let mut steps = todo.steps(&guids);
    if let LiveSync::Full { to: newest } = todo
        && let Some(staged) = staged_full_send(zfs, pool, key, &guids).await?
        && staged != newest
    {
        // A cut-off first copy goes on with the send it began, then catches up from there:
        // chasing the newest snapshot would throw it away whenever snapshots come faster.
        steps = vec![(None, staged)];
        steps.extend(
            LiveSync::Incremental {
                from: staged,
                to: newest,
            }
            .steps(&guids),
        );
    }
    let received = !steps.is_empty();
    if received {
        let find = |g: u64| remote.iter().find(|s| s.guid() == Some(g));
        let total = steps
            .iter()
            .filter_map(|&(from, to)| Some(estimate(from.and_then(find), find(to)?)))
            .sum();
        // Bytes received so far show in status.transfer while it runs.
        let progress = Progress::new();
        let _reporter = report_transfer(&cx.client, sr, progress.clone(), total);
        for (from, to) in steps {
            let want = SendRequest {
                project: key.clone(),
                from,
                to,
                resume: None,
            };
            receive_live(cx, &peer, &want, pool, ds, &progress).await?;
            tracing::info!(project = %key, snapshot = to, "live send applied");
        }
    }
    drop(receiving);
    let forked = forks_verdict(zfs, layout, key).await;
    let exists = zfs.exists(ds).await?;
    let mut as_left = None;
    if exists {
        let have = zfs.get_props(ds, &[PROP_EPOCH, PROP_ROLE]).await?;
        let epoch = sr.spec.epoch.to_string();
        for (prop, want) in [(PROP_EPOCH, epoch.as_str()), (PROP_ROLE, "secondary")] {
            if have.get(prop).map(String::as_str) != Some(want) {
                zfs.set(ds, &p(prop)?, want).await?;
            }
        }
        if received && made_anew {
            // A copy just made by a full send (a new one, or re-synced after a fork) is
            // read-only from the start. One that received increments was made so above, and
            // a receive changes neither (its stream carries no properties).
            stop_serving(zfs, &cx.cfg.run_dir, ds).await?;
        }
        // Nothing is pruned under a backup upload of this copy: the snapshots it sends from
        // and to must stay until it ends (the next pass prunes).
        if !backup::upload_running(cx, sr) {
            let listed = zfs.snapshots(ds, &[]).await?;
            let prune = plans::mirror_prune(&listed, &guids);
            for name in &prune {
                if let Ok(s) = ds.snapshot(name) {
                    let _ = zfs.destroy_snapshot(&s).await;
                }
            }
            // Listed already, when nothing was pruned.
            as_left = prune.is_empty().then_some(listed);
        }
    }
    let snaps = match as_left {
        Some(snaps) => snaps,
        None if exists => zfs.snapshots(ds, &[]).await?,
        None => Vec::new(),
    };
    drop_superseded_streams(cx, sr, store, key, &snaps).await;
    let newest_remote = remote.last().map(|s| s.time);
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

/// Another Ready live copy of the project to receive from while the primary cannot be
/// reached, with its snapshots: the one with the newest applied snapshot that answers.
async fn other_source(
    cx: &AgentContext,
    sr: &StreamReplica,
    key: &ProjectKey,
) -> Option<(Peer, Vec<LiveSnapshot>)> {
    let ns = sr.namespace().unwrap_or_default();
    let mut others: Vec<std::sync::Arc<StreamReplica>> = cx
        .copies_of(&ns, &sr.spec.project)
        .into_iter()
        .filter(|c| {
            c.spec.state == ReplicaState::Live
                && c.spec.role == ReplicaRole::Secondary
                && c.spec.pool != sr.spec.pool
                && c.status.as_ref().is_some_and(|s| {
                    s.phase == Some(projstore_api::ReplicaPhase::Ready)
                        && s.applied_snapshot.is_some()
                })
        })
        .collect();
    let newest = |c: &StreamReplica| {
        c.status
            .as_ref()
            .and_then(|s| s.applied_snapshot.as_ref())
            .map(|a| a.createtxg)
    };
    others.sort_by_key(|c| std::cmp::Reverse(newest(c)));
    let tls = cx.tls().ok()?;
    let pools = cx.all_pools.state();
    for c in others {
        let Some(sp) = pools.iter().find(|p| p.name_any() == c.spec.pool) else {
            continue;
        };
        let Some(endpoint) = sp
            .status
            .as_ref()
            .and_then(|s| s.agent.as_ref())
            .and_then(|a| a.stream_endpoint.as_deref())
        else {
            continue;
        };
        let Ok(peer) = Peer::new(endpoint, &sp.spec.node_name, tls.clone()) else {
            continue;
        };
        match peer.snapshots(key).await {
            Ok(remote) => return Some((peer, remote)),
            Err(e) => {
                tracing::debug!(project = %key, source = %sp.spec.node_name, error = %e, "another copy cannot serve either");
            }
        }
    }
    None
}

/// One live send applied to `ds`: a full one is received beside it (`recv/…`) and renamed
/// into place once it committed, so a cut-off first copy leaves nothing half made.
///
/// Where the host's ZFS resumes receives (OpenZFS), a send that was cut off goes on from
/// where it stopped: what arrived is kept (`zfs recv -s`), and the next attempt at exactly
/// that send hands the source the target's resume token. Partial state that does not fit
/// the send now wanted, or a stream refused for anything but a cut, is dropped: what is
/// kept is only ever what a verified send began.
async fn receive_live(
    cx: &AgentContext,
    peer: &Peer,
    want: &SendRequest,
    pool: &PoolName,
    ds: &DatasetName,
    progress: &Progress,
) -> Result<(), ReplicaError> {
    let zfs = cx.zfs()?;
    let full = want.from.is_none();
    let target = if full {
        crate::transfer::staging_dataset(pool, &want.project)?
    } else {
        ds.clone()
    };
    let mut want = want.clone();
    want.resume = resumable_token(zfs, &target, &want).await?;
    if full && want.resume.is_none() {
        crate::transfer::clear_staging(zfs, &target).await?;
        zfs.create_parents(&target).await?;
    }
    if let Err(e) = peer.receive(zfs, &want, &target, progress).await {
        if !(zfs.capabilities().resumable_send && e.keeps_partial()) {
            drop_partial(zfs, &target, full).await?;
        }
        return Err(e.into());
    }
    if full {
        zfs.create_parents(ds).await?;
        zfs.rename(&target, ds).await?;
    }
    Ok(())
}

/// The snapshot a cut-off full receive of `key` on `pool` was receiving, when it can resume
/// (OpenZFS) and the source still holds that snapshot (`remote`).
async fn staged_full_send(
    zfs: &Zfs,
    pool: &PoolName,
    key: &ProjectKey,
    remote: &[u64],
) -> Result<Option<u64>, ReplicaError> {
    if !zfs.capabilities().resumable_send {
        return Ok(None);
    }
    let staging = crate::transfer::staging_dataset(pool, key)?;
    if !zfs.exists(&staging).await? {
        return Ok(None);
    }
    let Some(token) = zfs.resume_token(&staging).await? else {
        return Ok(None);
    };
    Ok(zfs
        .describe_resume_token(&token)
        .await
        .ok()
        .filter(|t| t.fromguid.is_none() && remote.contains(&t.toguid))
        .map(|t| t.toguid))
}

/// The resume token of `target` when it resumes exactly `want` (None where receives do not
/// resume, or nothing was cut off). Partial state of any other send is dropped.
async fn resumable_token(
    zfs: &Zfs,
    target: &DatasetName,
    want: &SendRequest,
) -> Result<Option<String>, ReplicaError> {
    if !zfs.capabilities().resumable_send || !zfs.exists(target).await? {
        return Ok(None);
    }
    let Some(token) = zfs.resume_token(target).await? else {
        return Ok(None);
    };
    match zfs.describe_resume_token(&token).await {
        Ok(t) if t.toguid == want.to && t.fromguid == want.from => {
            tracing::info!(project = %want.project, snapshot = want.to, bytes = t.bytes, "resuming a cut-off receive");
            return Ok(Some(token));
        }
        Ok(t) => {
            tracing::info!(project = %want.project, stale = t.toguid, wanted = want.to, "a cut-off receive of another send dropped");
        }
        Err(e) => {
            tracing::warn!(project = %want.project, error = %e, "an unreadable resume token: the cut-off receive is dropped");
        }
    }
    drop_partial(zfs, target, want.from.is_none()).await?;
    Ok(None)
}

/// Drops a cut-off full receive of `key` kept to resume (OpenZFS), when this pool no longer
/// needs it: the copy here is closed or trashed.
pub(super) async fn drop_staged_receive(
    zfs: &Zfs,
    pool: &PoolName,
    key: &ProjectKey,
) -> Result<(), ReplicaError> {
    let staging = crate::transfer::staging_dataset(pool, key)?;
    if zfs.exists(&staging).await? {
        crate::transfer::clear_staging(zfs, &staging).await?;
    }
    Ok(())
}

/// Drops what a failed receive into `target` left: a full receive's staging dataset, or an
/// incremental one's partial state (`zfs recv -A`, where receives resume). A failure to drop
/// it fails the pass, and the next one tries again before anything resumes.
async fn drop_partial(zfs: &Zfs, target: &DatasetName, full: bool) -> Result<(), ReplicaError> {
    if full {
        if zfs.exists(target).await? {
            crate::transfer::clear_staging(zfs, target).await?;
        }
    } else {
        drop_resumable_state(zfs, target).await?;
    }
    Ok(())
}

/// `zfs recv -A` of `ds` when a cut-off resumable receive left partial state in it: before
/// the dataset becomes a primary's or a fork, or when that state must not be resumed.
pub(super) async fn drop_resumable_state(zfs: &Zfs, ds: &DatasetName) -> Result<(), ReplicaError> {
    if zfs.resume_token(ds).await?.is_some() {
        zfs.abort_resumable(ds).await?;
        tracing::info!(dataset = %ds, "the partial state of a cut-off receive dropped");
    }
    Ok(())
}

/// Stream files an open project carries from before (DESIGN §4: an open project keeps none;
/// after an open, its copies hold the stored chain's snapshot or newer ones): removed once
/// this copy's dataset holds a snapshot at least as new as a stream's, and every live copy of
/// the project reports one too.
pub(super) async fn drop_superseded_streams(
    cx: &AgentContext,
    sr: &StreamReplica,
    store: &StreamStore,
    key: &ProjectKey,
    snaps: &[SnapshotInfo],
) {
    let Ok(stored) = store.list(key).await else {
        return;
    };
    if stored.is_empty() {
        return;
    }
    let copies = cx.copies_of(&sr.namespace().unwrap_or_default(), &sr.spec.project);
    let everyone_at = copies
        .iter()
        .filter(|c| c.spec.state == ReplicaState::Live)
        .map(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.applied_snapshot.as_ref())
                .and_then(|a| a.time.as_ref())
                .map(|t| t.0.as_second())
        })
        .min()
        .flatten();
    for s in stored {
        // This copy holds that snapshot or a newer one (retention may have let it go since).
        let held = snaps
            .last()
            .is_some_and(|x| x.creation >= s.manifest.to.time);
        let everyone = everyone_at.is_some_and(|t| t >= s.manifest.to.time);
        if held && everyone {
            match store.delete(key, &s.id).await {
                Ok(()) => {
                    tracing::info!(project = %key, stream = %s.id, "stream file of an open project removed: every copy holds its snapshot")
                }
                Err(e) => {
                    tracing::warn!(project = %key, stream = %s.id, error = %e, "cannot remove a superseded stream file")
                }
            }
        }
    }
}

/// Renames `ds` to `forks/<ns>/<name>-e<epoch>` (`-2`, `-3`… when taken), unmounted and
/// read-only, and sets aside the local stream files with it. Returns the fork.
pub(super) async fn fork(
    zfs: &Zfs,
    run_dir: &Path,
    layout: &PoolLayout,
    store: &StreamStore,
    key: &ProjectKey,
    ds: &DatasetName,
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
    release_all_holds(zfs, ds).await?;
    drop_resumable_state(zfs, ds).await?;
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
    // Stream files of the diverged history go with it (an open project keeps none of its
    // own: these predate live replication).
    for s in store.list(key).await? {
        store.set_aside(key, &s.id, label).await?;
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
        // At once (a transfer shows in status however short it is), then every second.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        // (time, bytes) of the last few ticks: the rate is over up to five seconds.
        let mut seen = std::collections::VecDeque::from([(std::time::Instant::now(), 0u64)]);
        loop {
            tick.tick().await;
            let now = (std::time::Instant::now(), progress.bytes());
            seen.push_back(now);
            if seen.len() > 6 {
                seen.pop_front();
            }
            let rate = seen.front().and_then(|(t, b)| {
                let secs = now.0.duration_since(*t).as_secs_f64();
                (secs > 0.0).then(|| (now.1.saturating_sub(*b) as f64 / secs) as u64)
            });
            // The estimate may fall short: the total is then at least what arrived.
            let transfer = projstore_api::TransferProgress {
                bytes_done: now.1,
                bytes_total: total.max(now.1),
                bytes_per_second: rate,
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

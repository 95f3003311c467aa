//! Failover and epoch fencing (DESIGN §5.5): which replica is the primary, and when its pool
//! is lost, which secondary takes over at a new epoch and where the others stream from.

use std::collections::BTreeMap;

use kube::ResourceExt;
use projstore_api::{FailoverMode, ReplicaRole, ReplicaSource, StreamReplica, StreamReplicaSpec};

use super::{Ctx, applied_key};
use crate::view::PoolView;

/// The primary: the Primary replica with the newest epoch (the first of equals); any other
/// Primary is fenced off by that epoch and demoted.
pub(super) fn primary(replicas: &[StreamReplica]) -> Option<&StreamReplica> {
    let mut primaries: Vec<&StreamReplica> = replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
        .collect();
    primaries.sort_by_key(|r| std::cmp::Reverse(r.spec.epoch));
    primaries.first().copied()
}

/// The primary `pr` is lost beyond the grace period: with `failover: Automatic`, the ready
/// secondary with the newest snapshot becomes Primary at `max_epoch + 1` and every other copy
/// a Secondary streaming from it; with `Manual`, only reports.
pub(super) fn failover(
    cx: &mut Ctx<'_>,
    pr: &StreamReplica,
    max_epoch: u64,
    notes: &mut Vec<String>,
) {
    let inp = cx.inp;
    if inp.project.spec.failover == FailoverMode::Manual {
        let msg = format!(
            "primary pool {} is lost; failover is Manual: pin placement.pool to a replica's pool to promote it",
            pr.spec.pool
        );
        notes.push(msg.clone());
        if !inp
            .project
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "PrimaryLost"))
        {
            cx.event(true, "PrimaryLost", msg);
        }
        return;
    }
    let candidate = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && !cx.lost(r))
        .filter(|r| cx.pool(&r.spec.pool).is_some_and(PoolView::ready) && applied_key(r).is_some())
        .max_by_key(|r| (applied_key(r), std::cmp::Reverse(r.name_any())));
    let Some(new) = candidate else {
        let msg = format!(
            "primary pool {} is lost and no ready replica holds a snapshot to promote",
            pr.spec.pool
        );
        notes.push(msg.clone());
        cx.event(true, "NoReplicaToPromote", msg);
        return;
    };
    let epoch = max_epoch + 1;
    let src = promote(cx, new, epoch);
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.name_any() != new.name_any())
    {
        cx.update(r, following(r, epoch, &src), BTreeMap::new());
    }
    let msg = format!(
        "primary pool {} lost for over {}s: promoted {} (snapshot {}) at epoch {epoch}",
        pr.spec.pool,
        inp.failover_grace.num_seconds(),
        new.spec.pool,
        new.status
            .as_ref()
            .and_then(|s| s.applied_snapshot.as_ref())
            .map_or("-", |a| a.name.as_str())
    );
    notes.push(msg.clone());
    cx.event(true, "FailedOver", msg);
}

/// Makes `r` the Primary at `epoch` (fencing every copy of an older epoch); returns where the
/// other copies stream from now.
pub(super) fn promote(cx: &mut Ctx<'_>, r: &StreamReplica, epoch: u64) -> ReplicaSource {
    let mut spec = r.spec.clone();
    spec.role = ReplicaRole::Primary;
    spec.epoch = epoch;
    spec.source = None;
    cx.update(r, spec, BTreeMap::new());
    cx.source(r)
}

/// The spec of `r` as a Secondary at `epoch`, streaming from `src`.
pub(super) fn following(r: &StreamReplica, epoch: u64, src: &ReplicaSource) -> StreamReplicaSpec {
    let mut spec = r.spec.clone();
    spec.role = ReplicaRole::Secondary;
    spec.epoch = epoch;
    spec.source = Some(src.clone());
    spec
}

//! Deletion: the cleanup finalizer, every copy to the trash, the tombstones it leaves, and a
//! new Project of the same name taking them back within their retention (DESIGN §5.6).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use projstore_api::contract::{self, RETAIN_DAYS, TRASHED_AT};
use projstore_api::{CLEANUP_FINALIZER, ReplicaPhase, ReplicaState, StreamReplica};

use super::{Change, Ctx, phase};

/// Keeps the cleanup finalizer on a live Project.
///
/// Not kube-runtime's `finalizer` helper: it removes the finalizer as soon as one cleanup pass
/// returns Ok, but ours waits over several passes for the agents to report the data Trashed,
/// and orphans the tombstones first; it also adds the finalizer in a pass of its own, and
/// sends its patches without our field manager. Adding and removing stay decisions here.
pub(super) fn keep_finalizer(cx: &mut Ctx<'_>) {
    if !has_finalizer(cx) {
        cx.changes.push(Change::AddFinalizer);
    }
}

/// A Project being deleted: its replicas are marked Trashed (with when, and for how long);
/// once every copy that is not lost reports its data in the trash, the replicas are detached
/// as tombstones and the finalizer goes.
pub(super) fn delete(cx: &mut Ctx<'_>) {
    if !has_finalizer(cx) {
        return;
    }
    let inp = cx.inp;
    let retain = inp.project.spec.deletion.retain_days.to_string();
    let now = contract::trashed_at_value(inp.now);
    let mut all_trashed = true;
    for r in inp.replicas {
        if r.spec.state != ReplicaState::Trashed {
            let mut spec = r.spec.clone();
            spec.state = ReplicaState::Trashed;
            let ann = BTreeMap::from([
                (TRASHED_AT.to_owned(), Some(now.clone())),
                (RETAIN_DAYS.to_owned(), Some(retain.clone())),
            ]);
            cx.update(r, spec, ann);
        }
        if phase(r) != Some(ReplicaPhase::Trashed) && !cx.lost(r) {
            all_trashed = false;
        }
    }
    if all_trashed {
        for r in inp.replicas {
            cx.changes.push(Change::Orphan { name: r.name_any() });
        }
        cx.changes.push(Change::RemoveFinalizer);
        let msg = format!("data of {} moved to the trash for {retain} day(s)", cx.key);
        cx.event(false, "Trashed", msg);
    }
}

/// A Project without replicas adopts the tombstones of an earlier one of its name that are
/// still within their retention; returns where it was restored from, for the status.
pub(super) fn restore(cx: &mut Ctx<'_>) -> Option<String> {
    let inp = cx.inp;
    if !inp.replicas.is_empty() {
        return None;
    }
    let retained: Vec<&StreamReplica> = inp
        .tombstones
        .iter()
        .filter(|t| within_retention(t, inp.now))
        .collect();
    if retained.is_empty() {
        return None;
    }
    for t in &retained {
        cx.changes.push(Change::Adopt { name: t.name_any() });
    }
    let when = retained
        .iter()
        .find_map(|t| contract::trashed_at(t.annotations()).ok().flatten())
        .map_or_else(|| "earlier".to_owned(), contract::trashed_at_value);
    let msg = format!(
        "restored {} cop(ies) from the trash (deleted {when})",
        retained.len()
    );
    cx.event(false, "Restored", msg);
    Some(format!("trash/{}-{when}", cx.key))
}

/// A Trashed replica no Project owns, whose retention has ended.
pub fn tombstone_expired(r: &StreamReplica, now: DateTime<Utc>) -> bool {
    r.spec.state == ReplicaState::Trashed
        && r.metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
        && r.annotations().contains_key(TRASHED_AT)
        && !within_retention(r, now)
}

fn within_retention(t: &StreamReplica, now: DateTime<Utc>) -> bool {
    let Ok(Some(at)) = contract::trashed_at(t.annotations()) else {
        return false;
    };
    now < at + chrono::Duration::days(contract::retain_days(t.annotations()))
}

fn has_finalizer(cx: &Ctx<'_>) -> bool {
    cx.inp
        .project
        .finalizers()
        .iter()
        .any(|f| f == CLEANUP_FINALIZER)
}

//! Moves (DESIGN §5.6): pinning `placement.pool` to another pool copies the project there,
//! the primary hands off (stops writes, sends a final snapshot), and the roles flip at a new
//! epoch. One step per pass, each read from the replicas' state.

use std::collections::BTreeMap;

use kube::ResourceExt;
use projstore_api::contract::{self, HANDOFF_TO, MOVED_FROM};
use projstore_api::{Project, ReplicaPhase, ReplicaRole, ReplicaState, StreamReplica};

use super::failover::{following, promote};
use super::replicas::new_replica;
use super::{Change, Ctx, applied_guid, phase};
use crate::view::is_true;

/// The Project is pinned to a pool other than its primary's.
pub(super) fn moving(p: &Project, primary: Option<&StreamReplica>) -> bool {
    matches!((p.spec.placement.pool.as_deref(), primary), (Some(pin), Some(pr)) if pr.spec.pool != pin)
}

/// The next step of moving the primary `pr` to pool `pin`: create a copy there, wait for it to
/// catch up, ask `pr` to hand off, then promote the copy and demote `pr` (marked as the copy
/// to drop once enough others are healthy).
pub(super) fn move_step(
    cx: &mut Ctx<'_>,
    pr: &StreamReplica,
    pin: &str,
    max_epoch: u64,
    state: ReplicaState,
    notes: &mut Vec<String>,
) {
    let inp = cx.inp;
    let Some(target) = inp.replicas.iter().find(|r| r.spec.pool == pin) else {
        match cx.pool(pin).cloned() {
            Some(pv) if pv.ready() => {
                let sr = new_replica(
                    inp.project,
                    &pv,
                    ReplicaRole::Secondary,
                    pr.spec.epoch,
                    Some(cx.source(pr)),
                    state,
                );
                cx.changes.push(Change::Create(Box::new(sr)));
                notes.push(format!("moving to {pin}: copying"));
                cx.event(
                    false,
                    "MoveStarted",
                    format!("moving {} from {} to {pin}", cx.key, pr.spec.pool),
                );
            }
            _ => notes.push(format!(
                "cannot move to {pin}: the pool does not exist or is not Ready"
            )),
        }
        return;
    };
    let caught_up = phase(target) == Some(ReplicaPhase::Ready)
        && applied_guid(target).is_some()
        && applied_guid(target) == applied_guid(pr);
    if contract::handoff_to(pr.annotations()) != Some(pin) {
        if caught_up {
            let ann = BTreeMap::from([(HANDOFF_TO.to_owned(), Some(pin.to_owned()))]);
            cx.update(pr, pr.spec.clone(), ann);
            notes.push(format!("moving to {pin}: primary handing off"));
        } else {
            notes.push(format!("moving to {pin}: waiting for the copy to catch up"));
        }
        return;
    }
    let handed_off = pr
        .status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, "HandedOff"));
    if !(handed_off && caught_up) {
        notes.push(format!(
            "moving to {pin}: waiting for the final snapshot to reach {pin}"
        ));
        return;
    }
    let epoch = max_epoch + 1;
    let src = promote(cx, target, epoch);
    let ann = BTreeMap::from([
        (HANDOFF_TO.to_owned(), None),
        (MOVED_FROM.to_owned(), Some("true".to_owned())),
    ]);
    cx.update(pr, following(pr, epoch, &src), ann);
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && r.spec.pool != pin)
    {
        cx.update(r, following(r, epoch, &src), BTreeMap::new());
    }
    notes.push(format!("moved to {pin} at epoch {epoch}"));
    cx.event(
        false,
        "MoveCompleted",
        format!("{} now served from {pin}", cx.key),
    );
}

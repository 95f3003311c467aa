//! What to do about one Project: pure, from the Project, its StreamReplicas and the pools.
//!
//! [`decide`] reads in the order of concerns: deletion and the finalizer, restore from the
//! trash (`deletion`) → failover by epoch fencing (`failover`) → placement and
//! re-replication (`replicas`) → a move on a pin change (`moves`) → replica specs, mount
//! sources and echoes (`replicas`) → status and Events (`status`). Every step is derived
//! from object state, so a restarted controller resumes where it was.

mod deletion;
mod failover;
mod moves;
mod replicas;
mod status;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use projstore_api::{
    PrimaryStatus, Project, ProjectPhase, ProjectState, ProjectStatus, ReplicaPhase, ReplicaSource,
    ReplicaState, StreamReplica, StreamReplicaSpec,
};

pub use deletion::tombstone_expired;
/// The contract's annotations, named here too for the callers (and tests) that read them here.
pub use projstore_api::contract::{HANDOFF_TO, MOVED_FROM, TRASHED_AT};
pub use replicas::replica_name;

use crate::view::PoolView;

/// One change to make, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddFinalizer,
    RemoveFinalizer,
    Create(Box<StreamReplica>),
    /// Merge-patch the spec of replica `name` (and set or remove annotations).
    Update {
        name: String,
        spec: StreamReplicaSpec,
        annotations: BTreeMap<String, Option<String>>,
    },
    /// Make a trashed replica of an earlier Project with this name ours again.
    Adopt {
        name: String,
    },
    /// Detach a replica from the Project (it stays as a trash tombstone).
    Orphan {
        name: String,
    },
    Delete {
        name: String,
    },
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
}

/// The decision: changes, and the status the Project should show.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub changes: Vec<Change>,
    pub status: ProjectStatus,
}

/// Everything `decide` reads.
pub struct Inputs<'a> {
    pub project: &'a Project,
    /// Replicas owned by this Project.
    pub replicas: &'a [StreamReplica],
    /// Trashed replicas left by an earlier Project of the same namespace and name.
    pub tombstones: &'a [StreamReplica],
    pub pools: &'a [PoolView],
    pub now: DateTime<Utc>,
    pub failover_grace: chrono::Duration,
    /// The primaries of the projects this one mounts folders of (None: no such project, or
    /// not served yet).
    pub mount_sources: &'a BTreeMap<String, Option<PrimaryStatus>>,
}

/// Decides what to do for a Project.
pub fn decide(inp: &Inputs<'_>) -> Decision {
    let p = inp.project;
    let mut cx = Ctx::new(inp);
    let prev = p.status.clone().unwrap_or_default();

    // Deletion: every copy goes to the trash, then the finalizer goes.
    if p.metadata.deletion_timestamp.is_some() {
        deletion::delete(&mut cx);
        let status = status::status(&cx, &prev, Some(ProjectPhase::Deleting), None, Vec::new());
        return cx.decision(status);
    }
    deletion::keep_finalizer(&mut cx);
    // A Project with the name of a deleted one takes its trashed copies back.
    if let Some(restored) = deletion::restore(&mut cx) {
        let status = status::status(
            &cx,
            &prev,
            Some(ProjectPhase::Opening),
            Some(restored),
            Vec::new(),
        );
        return cx.decision(status);
    }

    let desired_state = match p.spec.state {
        ProjectState::Open => ReplicaState::Live,
        ProjectState::Closed => ReplicaState::Archived,
    };
    let primary = failover::primary(inp.replicas);
    let max_epoch = inp.replicas.iter().map(|r| r.spec.epoch).max().unwrap_or(0);
    let mut notes = Vec::new();

    // Failover: a lost primary's freshest secondary takes over at a new epoch.
    if let Some(pr) = primary
        && cx.lost(pr)
        && desired_state == ReplicaState::Live
    {
        failover::failover(&mut cx, pr, max_epoch, &mut notes);
        let status = status::status(&cx, &prev, Some(ProjectPhase::Degraded), None, notes);
        return cx.decision(status);
    }

    // Placement: existing healthy copies stay, the primary first; new copies fill the rest.
    let moving = moves::moving(p, primary);
    replicas::place(
        &mut cx,
        primary,
        max_epoch,
        moving,
        desired_state,
        &mut notes,
    );
    // A move: copy to the pinned pool, hand off, flip roles (DESIGN §5.6).
    if let (Some(pin), Some(pr), true) = (p.spec.placement.pool.as_deref(), primary, moving) {
        moves::move_step(&mut cx, pr, pin, max_epoch, desired_state, &mut notes);
    }
    replicas::drop_replaced(&mut cx, primary, moving);

    // Replica specs: the project's state, secondaries pointing at the primary, and what the
    // primary's agent must know (mount sources, the Project's generation and requests).
    let expected_mounts = replicas::mount_sources(&mut cx, primary);
    replicas::sync_specs(&mut cx, primary, desired_state);

    let phase = if inp.replicas.is_empty() {
        Some(ProjectPhase::Placing)
    } else if moving {
        Some(ProjectPhase::Moving)
    } else {
        None
    };
    let mut status = status::status(&cx, &prev, phase, None, notes);
    status::mounts(&mut status, p, primary, expected_mounts);
    status::events(&mut cx, &prev, &status);
    cx.decision(status)
}

/// The state of one decision being made: its inputs and the changes so far.
struct Ctx<'a> {
    inp: &'a Inputs<'a>,
    /// `namespace/name` of the Project.
    key: String,
    changes: Vec<Change>,
}

impl<'a> Ctx<'a> {
    fn new(inp: &'a Inputs<'a>) -> Self {
        let p = inp.project;
        Ctx {
            inp,
            key: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
            changes: Vec::new(),
        }
    }
    fn decision(self, status: ProjectStatus) -> Decision {
        Decision {
            changes: self.changes,
            status,
        }
    }
    fn pool(&self, name: &str) -> Option<&PoolView> {
        self.inp.pools.iter().find(|p| p.name == name)
    }
    /// A replica whose pool is gone or NotReady beyond the grace period.
    fn lost(&self, r: &StreamReplica) -> bool {
        self.pool(&r.spec.pool)
            .is_none_or(|p| p.lost(self.inp.now, self.inp.failover_grace))
    }
    /// Where secondaries stream from when `primary` serves.
    fn source(&self, primary: &StreamReplica) -> ReplicaSource {
        ReplicaSource {
            pool: primary.spec.pool.clone(),
            node: primary.spec.node.clone(),
            stream_endpoint: self
                .pool(&primary.spec.pool)
                .and_then(|p| p.stream_endpoint.clone()),
        }
    }
    fn update(
        &mut self,
        r: &StreamReplica,
        spec: StreamReplicaSpec,
        annotations: BTreeMap<String, Option<String>>,
    ) {
        if spec != r.spec || !annotations.is_empty() {
            self.changes.push(Change::Update {
                name: r.name_any(),
                spec,
                annotations,
            });
        }
    }
    /// Sets annotations on `r` alone: folded into an update of `r` already decided, so its
    /// spec is never written back as it was.
    fn annotate(&mut self, r: &StreamReplica, annotations: BTreeMap<String, Option<String>>) {
        if annotations.is_empty() {
            return;
        }
        let name = r.name_any();
        let earlier = self.changes.iter_mut().rev().find_map(|c| match c {
            Change::Update {
                name: n,
                annotations: a,
                ..
            } if *n == name => Some(a),
            _ => None,
        });
        match earlier {
            Some(a) => a.extend(annotations),
            None => self.update(r, r.spec.clone(), annotations),
        }
    }
    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.changes.push(Change::Event {
            warning,
            reason,
            message,
        });
    }
}

/// The newest snapshot a replica holds, in the order to compare copies by: time, txg, GUID.
fn applied_key(r: &StreamReplica) -> Option<(i64, u64, u64)> {
    let a = r.status.as_ref()?.applied_snapshot.as_ref()?;
    Some((
        a.time.as_ref().map_or(0, |t| t.0.as_second()),
        a.createtxg,
        a.guid.parse().unwrap_or(0),
    ))
}

fn applied_guid(r: &StreamReplica) -> Option<&str> {
    r.status
        .as_ref()?
        .applied_snapshot
        .as_ref()
        .map(|a| a.guid.as_str())
}

fn phase(r: &StreamReplica) -> Option<ReplicaPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

/// The raw value of annotation `key` on `r`, for comparing with the value to write.
fn annotation<'a>(r: &'a StreamReplica, key: &str) -> Option<&'a str> {
    r.annotations().get(key).map(String::as_str)
}

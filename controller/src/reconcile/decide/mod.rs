//! What to do about one Project: pure, from the Project, its StreamReplicas and the pools.
//!
//! The order of concerns: deletion → finalizer → restore from the trash → failover (epoch
//! fencing) → move (pin change) → placement and re-replication → replica specs → status.
//! Every step is derived from object state, so a restarted controller resumes where it was.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use projstore_api::{
    CLEANUP_FINALIZER, FailoverMode, PrimaryStatus, Project, ProjectPhase, ProjectState,
    ProjectStatus, ReplicaPhase, ReplicaRole, ReplicaSource, ReplicaState, ReplicaSummary,
    StreamReplica, StreamReplicaSpec,
};

use crate::placement::{self, PoolInfo, Spread};
use crate::view::{PoolView, condition, human_bytes, is_true, quantity_bytes};

/// Annotation on a Trashed replica: when it went to the trash (RFC 3339).
pub const TRASHED_AT: &str = "projstore.io/trashed-at";
/// Annotation on a Trashed replica: how many days its data is kept.
pub const RETAIN_DAYS: &str = "projstore.io/retain-days";
/// Annotation on the primary's replica during a move: the pool taking over.
pub const HANDOFF_TO: &str = "projstore.io/handoff-to";
/// Annotation on the old primary after a move: it is the copy to drop.
pub const MOVED_FROM: &str = "projstore.io/moved-from";
/// Annotation on secondaries: the GUID of the primary's newest snapshot (wakes their agent).
pub const PRIMARY_SNAPSHOT: &str = "projstore.io/primary-snapshot";
/// Annotation on the primary: the Project's generation, so its agent (which watches only its
/// replicas) wakes when the Project's spec changes. The Project's `snapshot-now` and
/// `repair-ownership` annotations are copied next to it for the same reason.
pub const PROJECT_GENERATION: &str = "projstore.io/project-generation";
/// Label on StreamReplicas: the Project they belong to.
pub use projstore_api::PROJECT_LABEL;
/// Label on StreamReplicas: their pool.
pub const POOL_LABEL: &str = "projstore.io/pool";

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

/// Annotation on the primary's replica: where each mounted source project is served now, so
/// the agent mounting it follows moves and failovers (JSON object by project name).
pub const MOUNT_SOURCES: &str = projstore_api::MOUNT_SOURCES_ANNOTATION;

/// The name of the replica of `project` on `pool`.
pub fn replica_name(project: &str, pool: &str) -> String {
    let name = format!("{project}-{pool}");
    if name.len() <= 253 {
        name
    } else {
        format!(
            "{project}-{:016x}",
            crate::placement::score(project, pool, 1).to_bits()
        )
    }
}

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

/// What the primary's replica carries of its Project (see [`PROJECT_GENERATION`]).
fn primary_echo(p: &Project) -> [(&'static str, Option<String>); 3] {
    let copied = |k: &str| p.annotations().get(k).cloned();
    [
        (
            PROJECT_GENERATION,
            p.metadata.generation.map(|g| g.to_string()),
        ),
        (
            projstore_api::SNAPSHOT_NOW_ANNOTATION,
            copied(projstore_api::SNAPSHOT_NOW_ANNOTATION),
        ),
        (
            projstore_api::REPAIR_OWNERSHIP_ANNOTATION,
            copied(projstore_api::REPAIR_OWNERSHIP_ANNOTATION),
        ),
    ]
}

fn phase(r: &StreamReplica) -> Option<ReplicaPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn annotation<'a>(r: &'a StreamReplica, key: &str) -> Option<&'a str> {
    r.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

struct Ctx<'a> {
    inp: &'a Inputs<'a>,
    key: String,
    changes: Vec<Change>,
}

impl Ctx<'_> {
    fn pool(&self, name: &str) -> Option<&PoolView> {
        self.inp.pools.iter().find(|p| p.name == name)
    }
    /// A replica whose pool is gone or NotReady beyond the grace period.
    fn lost(&self, r: &StreamReplica) -> bool {
        self.pool(&r.spec.pool)
            .is_none_or(|p| p.lost(self.inp.now, self.inp.failover_grace))
    }
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

/// Decides what to do for a Project.
pub fn decide(inp: &Inputs<'_>) -> Decision {
    let p = inp.project;
    let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
    let mut cx = Ctx {
        inp,
        key,
        changes: Vec::new(),
    };
    let prev = p.status.clone().unwrap_or_default();
    let has_finalizer = p.finalizers().iter().any(|f| f == CLEANUP_FINALIZER);

    if p.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            delete_flow(&mut cx);
        }
        let status = status(&cx, &prev, Some(ProjectPhase::Deleting), None, Vec::new());
        return Decision {
            changes: cx.changes,
            status,
        };
    }
    if !has_finalizer {
        cx.changes.push(Change::AddFinalizer);
    }
    if inp.replicas.is_empty() {
        let retained: Vec<&StreamReplica> = inp
            .tombstones
            .iter()
            .filter(|t| within_retention(t, inp.now))
            .collect();
        if !retained.is_empty() {
            for t in &retained {
                cx.changes.push(Change::Adopt { name: t.name_any() });
            }
            let when = retained
                .iter()
                .filter_map(|t| annotation(t, TRASHED_AT))
                .next()
                .unwrap_or("earlier")
                .to_owned();
            let msg = format!(
                "restored {} cop(ies) from the trash (deleted {when})",
                retained.len()
            );
            cx.event(false, "Restored", msg);
            let restored = Some(format!("trash/{}-{when}", cx.key));
            let status = status(
                &cx,
                &prev,
                Some(ProjectPhase::Opening),
                restored,
                Vec::new(),
            );
            return Decision {
                changes: cx.changes,
                status,
            };
        }
    }

    let desired_state = match p.spec.state {
        ProjectState::Open => ReplicaState::Live,
        ProjectState::Closed => ReplicaState::Archived,
    };
    // The primary: the Primary replica with the newest epoch; any other Primary is demoted.
    let mut primaries: Vec<&StreamReplica> = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
        .collect();
    primaries.sort_by_key(|r| std::cmp::Reverse(r.spec.epoch));
    let primary = primaries.first().copied();
    let max_epoch = inp.replicas.iter().map(|r| r.spec.epoch).max().unwrap_or(0);

    let mut notes = Vec::new();
    if let Some(pr) = primary
        && cx.lost(pr)
        && desired_state == ReplicaState::Live
    {
        failover(&mut cx, pr, max_epoch, &mut notes);
        let status = status(&cx, &prev, Some(ProjectPhase::Degraded), None, notes);
        return Decision {
            changes: cx.changes,
            status,
        };
    }

    // Placement: existing healthy copies stay, the primary first.
    let mut existing: Vec<String> = Vec::new();
    if let Some(pr) = primary {
        existing.push(pr.spec.pool.clone());
    }
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && !cx.lost(r))
    {
        existing.push(r.spec.pool.clone());
    }
    let quota = quantity_bytes(&p.spec.quota.0).unwrap_or(u64::MAX);
    let pin = p.spec.placement.pool.as_deref();
    let moving = matches!((pin, primary), (Some(pin), Some(pr)) if pr.spec.pool != pin);
    let infos: Vec<PoolInfo> = inp
        .pools
        .iter()
        .map(|pv| PoolInfo {
            name: pv.name.clone(),
            node: pv.node.clone(),
            zone: pv.zone.clone(),
            datacenter: pv.datacenter.clone(),
            ready: pv.ready(),
            schedulable: pv.schedulable,
            experimental: pv.experimental,
            selected: selector_matches(p, pv),
            free_bytes: pv.free_bytes,
            reserved_bytes: pv.size_bytes / 100 * u64::from(pv.reserved_percent),
        })
        .collect();
    let req = placement::Request {
        project: &cx.key,
        copies: usize::from(p.spec.copies),
        quota_bytes: quota,
        pinned: if moving || primary.is_some() {
            None
        } else {
            pin
        },
        spread: match p.spec.placement.spread {
            projstore_api::Spread::Datacenter => Spread::Datacenter,
            projstore_api::Spread::Zone => Spread::Zone,
            projstore_api::Spread::None => Spread::None,
        },
        tolerate_experimental: p.spec.placement.tolerate_experimental,
        existing: &existing,
    };
    let placed = placement::place(&req, &infos);
    let shortfall = placed.shortfall.clone();
    let new_pools: Vec<&String> = placed
        .pools
        .iter()
        .filter(|n| !existing.contains(n))
        .collect();
    let epoch = max_epoch.max(1);
    for (i, pool) in new_pools.iter().enumerate() {
        let Some(pv) = cx.pool(pool).cloned() else {
            continue;
        };
        let is_primary = primary.is_none() && i == 0 && existing.is_empty();
        let source = if is_primary {
            None
        } else {
            primary.map(|pr| cx.source(pr)).or_else(|| {
                placed
                    .pools
                    .first()
                    .and_then(|first| cx.pool(first))
                    .map(|fp| ReplicaSource {
                        pool: fp.name.clone(),
                        node: fp.node.clone(),
                        stream_endpoint: fp.stream_endpoint.clone(),
                    })
            })
        };
        let sr = new_replica(
            p,
            &pv,
            if is_primary {
                ReplicaRole::Primary
            } else {
                ReplicaRole::Secondary
            },
            epoch,
            source,
            desired_state,
        );
        cx.changes.push(Change::Create(Box::new(sr)));
    }
    if !shortfall.is_empty() {
        notes.push(shortfall.join("; "));
    }

    // A move: copy to the pinned pool, hand off, flip roles (DESIGN §5.6).
    if let (Some(pin), Some(pr), true) = (pin, primary, moving) {
        move_step(&mut cx, pr, pin, max_epoch, desired_state, &mut notes);
    }

    // Lost secondaries go once their replacement exists; extra copies go after a move.
    let live_secondaries = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && !cx.lost(r))
        .count();
    let healthy = live_secondaries + usize::from(primary.is_some());
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary)
    {
        let replaced = cx.lost(r) && healthy >= usize::from(p.spec.copies);
        let extra =
            annotation(r, MOVED_FROM).is_some() && healthy > usize::from(p.spec.copies) && !moving;
        if replaced || extra {
            cx.changes.push(Change::Delete { name: r.name_any() });
        }
    }

    // Replica specs: the state the project is in, secondaries pointing at the primary.
    // The consumer's agent learns where its mount sources live from the primary's replica.
    let mut mount_status = Vec::new();
    if let Some(pr) = primary
        && p.spec.mounts.is_empty()
        && annotation(pr, MOUNT_SOURCES).is_some()
    {
        // No mounts any more: no source host keeps letting this node in for them.
        cx.annotate(pr, BTreeMap::from([(MOUNT_SOURCES.to_owned(), None)]));
    }
    if let Some(pr) = primary
        && !p.spec.mounts.is_empty()
    {
        let mut sources = serde_json::Map::new();
        for m in &p.spec.mounts {
            match inp.mount_sources.get(&m.project).cloned().flatten() {
                Some(src) => {
                    let value = projstore_api::MountSource {
                        pool: src.pool.clone(),
                        node: src.node.clone(),
                        epoch: src.epoch,
                        sftp: cx.pool(&src.pool).and_then(|p| p.sftp_endpoint.clone()),
                        host_key: cx.pool(&src.pool).and_then(|p| p.sftp_host_key.clone()),
                        read_only: p
                            .spec
                            .mounts
                            .iter()
                            .filter(|o| o.project == m.project)
                            .all(|o| o.read_only),
                    };
                    sources.insert(
                        m.project.clone(),
                        serde_json::to_value(value).unwrap_or_default(),
                    );
                    mount_status.push(projstore_api::MountStatus {
                        mount_path: m.mount_path.clone(),
                        phase: "Pending".into(),
                        message: Some(format!("{}:{} served by {}", m.project, m.path, src.node)),
                    });
                }
                None => mount_status.push(projstore_api::MountStatus {
                    mount_path: m.mount_path.clone(),
                    phase: "Failed".into(),
                    message: Some(format!(
                        "project {} does not exist or is not served yet",
                        m.project
                    )),
                }),
            }
        }
        let want = serde_json::Value::Object(sources).to_string();
        if annotation(pr, MOUNT_SOURCES) != Some(want.as_str()) {
            cx.annotate(pr, BTreeMap::from([(MOUNT_SOURCES.to_owned(), Some(want))]));
        }
    }
    let deleting: Vec<String> = cx
        .changes
        .iter()
        .filter_map(|c| {
            if let Change::Delete { name } = c {
                Some(name.clone())
            } else {
                None
            }
        })
        .collect();
    if let Some(pr) = primary {
        let src = cx.source(pr);
        for r in inp
            .replicas
            .iter()
            .filter(|r| !deleting.contains(&r.name_any()))
        {
            let mut spec = r.spec.clone();
            spec.state = desired_state;
            if r.spec.role == ReplicaRole::Secondary {
                spec.source = Some(src.clone());
            }
            // Secondaries learn of the primary's newest snapshot at once (their agents wake on
            // changes to their own replica) instead of waiting for their next poll.
            let mut ann = BTreeMap::new();
            if r.spec.role == ReplicaRole::Secondary
                && let Some(g) = applied_guid(pr)
                && annotation(r, PRIMARY_SNAPSHOT) != Some(g)
            {
                ann.insert(PRIMARY_SNAPSHOT.to_owned(), Some(g.to_owned()));
            }
            if spec != r.spec || !ann.is_empty() {
                cx.update(r, spec, ann);
            }
        }
        let echo: BTreeMap<String, Option<String>> = primary_echo(p)
            .into_iter()
            .filter(|(k, v)| annotation(pr, k) != v.as_deref())
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        cx.annotate(pr, echo);
    }

    let phase = if inp.replicas.is_empty() {
        Some(ProjectPhase::Placing)
    } else if moving {
        Some(ProjectPhase::Moving)
    } else {
        None
    };
    let mut status = status(&cx, &prev, phase, None, notes);
    if !p.spec.mounts.is_empty() {
        // What the primary's agent reports wins over what the controller expects.
        let seen = primary
            .and_then(|pr| pr.status.as_ref())
            .map(|s| s.mounts.clone())
            .unwrap_or_default();
        status.mounts = mount_status
            .into_iter()
            .map(|m| {
                seen.iter()
                    .find(|s| s.mount_path == m.mount_path && m.phase != "Failed")
                    .cloned()
                    .unwrap_or(m)
            })
            .collect();
    }
    // Events for transitions users must see.
    let placed_now = is_true(&status.conditions, "Placed");
    if !placed_now
        && (is_true(&prev.conditions, "Placed")
            || !prev.conditions.iter().any(|c| c.type_ == "Placed"))
    {
        let msg = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Placed")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        cx.event(true, "Unplaceable", msg);
    }
    for (kind, reason) in [
        ("SnapshotsBlocked", "SnapshotsBlocked"),
        ("Diverged", "Diverged"),
    ] {
        if is_true(&status.conditions, kind) && !is_true(&prev.conditions, kind) {
            let msg = status
                .conditions
                .iter()
                .find(|c| c.type_ == kind)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            cx.event(true, reason, msg);
        }
    }
    Decision {
        changes: cx.changes,
        status,
    }
}

/// A Trashed replica no Project owns, whose retention has ended.
pub fn tombstone_expired(r: &StreamReplica, now: DateTime<Utc>) -> bool {
    r.spec.state == ReplicaState::Trashed
        && r.metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
        && annotation(r, TRASHED_AT).is_some()
        && !within_retention(r, now)
}

fn within_retention(t: &StreamReplica, now: DateTime<Utc>) -> bool {
    let Some(at) = annotation(t, TRASHED_AT).and_then(|a| DateTime::parse_from_rfc3339(a).ok())
    else {
        return false;
    };
    let days: i64 = annotation(t, RETAIN_DAYS)
        .and_then(|d| d.parse().ok())
        .unwrap_or(7);
    now < at.with_timezone(&Utc) + chrono::Duration::days(days)
}

fn selector_matches(p: &Project, pv: &PoolView) -> bool {
    let Some(sel) = &p.spec.placement.pool_selector else {
        return true;
    };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| pv.labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let val = pv.labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => val.is_none_or(|v| !values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn new_replica(
    p: &Project,
    pv: &PoolView,
    role: ReplicaRole,
    epoch: u64,
    source: Option<ReplicaSource>,
    state: ReplicaState,
) -> StreamReplica {
    let name = p.name_any();
    let mut sr = StreamReplica::new(
        &replica_name(&name, &pv.name),
        StreamReplicaSpec {
            project: name.clone(),
            pool: pv.name.clone(),
            node: pv.node.clone(),
            role,
            epoch,
            source,
            state,
        },
    );
    sr.metadata.namespace = p.namespace();
    sr.metadata.labels = Some(BTreeMap::from([
        (projstore_api::NODE_LABEL.to_owned(), pv.node.clone()),
        (PROJECT_LABEL.to_owned(), name),
        (POOL_LABEL.to_owned(), pv.name.clone()),
    ]));
    sr
}

fn delete_flow(cx: &mut Ctx<'_>) {
    let inp = cx.inp;
    let retain = inp.project.spec.deletion.retain_days.to_string();
    let now = inp.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
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

fn failover(cx: &mut Ctx<'_>, pr: &StreamReplica, max_epoch: u64, notes: &mut Vec<String>) {
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
    let mut promoted = new.spec.clone();
    promoted.role = ReplicaRole::Primary;
    promoted.epoch = epoch;
    promoted.source = None;
    let src = cx.source(new);
    cx.update(new, promoted, BTreeMap::new());
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.name_any() != new.name_any())
    {
        let mut spec = r.spec.clone();
        spec.role = ReplicaRole::Secondary;
        spec.epoch = epoch;
        spec.source = Some(src.clone());
        cx.update(r, spec, BTreeMap::new());
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

fn move_step(
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
    if annotation(pr, HANDOFF_TO) != Some(pin) {
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
    let mut promoted = target.spec.clone();
    promoted.role = ReplicaRole::Primary;
    promoted.epoch = epoch;
    promoted.source = None;
    let src = ReplicaSource {
        pool: target.spec.pool.clone(),
        node: target.spec.node.clone(),
        stream_endpoint: cx.pool(pin).and_then(|p| p.stream_endpoint.clone()),
    };
    cx.update(target, promoted, BTreeMap::new());
    let mut demoted = pr.spec.clone();
    demoted.role = ReplicaRole::Secondary;
    demoted.epoch = epoch;
    demoted.source = Some(src.clone());
    let ann = BTreeMap::from([
        (HANDOFF_TO.to_owned(), None),
        (MOVED_FROM.to_owned(), Some("true".to_owned())),
    ]);
    cx.update(pr, demoted, ann);
    for r in inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && r.spec.pool != pin)
    {
        let mut spec = r.spec.clone();
        spec.epoch = epoch;
        spec.source = Some(src.clone());
        cx.update(r, spec, BTreeMap::new());
    }
    notes.push(format!("moved to {pin} at epoch {epoch}"));
    cx.event(
        false,
        "MoveCompleted",
        format!("{} now served from {pin}", cx.key),
    );
}

/// The status the Project should show; conditions keep their transition times when unchanged.
fn status(
    cx: &Ctx<'_>,
    prev: &ProjectStatus,
    forced: Option<ProjectPhase>,
    restored: Option<String>,
    notes: Vec<String>,
) -> ProjectStatus {
    let inp = cx.inp;
    let p = inp.project;
    let now = inp.now;
    let generation = p.metadata.generation;
    let primary = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
        .max_by_key(|r| r.spec.epoch);
    let copies = usize::from(p.spec.copies);
    let ready = inp
        .replicas
        .iter()
        .filter(|r| phase(r) == Some(ReplicaPhase::Ready) && !cx.lost(r))
        .count();
    let pst = primary.and_then(|r| r.status.clone()).unwrap_or_default();
    let newest = primary.and_then(applied_key).map(|k| k.0);
    let mut sorted: Vec<&StreamReplica> = inp.replicas.iter().collect();
    sorted.sort_by(|a, b| a.spec.pool.cmp(&b.spec.pool));
    let replicas: Vec<ReplicaSummary> = sorted
        .into_iter()
        .map(|r| ReplicaSummary {
            pool: r.spec.pool.clone(),
            node: r.spec.node.clone(),
            role: r.spec.role,
            applied_snapshot: r
                .status
                .as_ref()
                .and_then(|s| s.applied_snapshot.as_ref())
                .map(|a| a.name.clone()),
            lag_seconds: r.status.as_ref().and_then(|s| s.lag_seconds).or_else(|| {
                match (newest, applied_key(r)) {
                    (Some(n), Some(k)) => Some((n - k.0).max(0)),
                    _ => None,
                }
            }),
            phase: phase(r),
        })
        .collect();
    let closed = p.spec.state == ProjectState::Closed;
    let archived = inp
        .replicas
        .iter()
        .all(|r| phase(r) == Some(ReplicaPhase::Archived));
    let project_phase = forced.unwrap_or(if closed {
        if archived && !inp.replicas.is_empty() {
            ProjectPhase::Closed
        } else {
            ProjectPhase::Closing
        }
    } else if primary.is_none() {
        ProjectPhase::Placing
    } else if inp
        .replicas
        .iter()
        .any(|r| phase(r) == Some(ReplicaPhase::Archived))
    {
        ProjectPhase::Opening
    } else if ready >= copies && primary.is_some_and(|r| phase(r) == Some(ReplicaPhase::Ready)) {
        ProjectPhase::Ready
    } else if ready == 0 {
        ProjectPhase::Pending
    } else {
        ProjectPhase::Degraded
    });
    let notes_text = notes.join("; ");
    // Copies that exist or are being created now; placement reports any shortfall in notes.
    let placed = inp.replicas.len()
        + cx.changes
            .iter()
            .filter(|c| matches!(c, Change::Create(_)))
            .count();
    let placed_ok = !notes_text.contains("copies can be placed");
    let phase_now = project_phase;
    let secondaries_ready = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && phase(r) == Some(ReplicaPhase::Ready))
        .count();
    let mut conditions = vec![
        condition(
            &prev.conditions,
            "Placed",
            placed_ok,
            if placed_ok { "Placed" } else { "Unplaceable" },
            if notes_text.is_empty() {
                format!(
                    "{} of {copies} copies placed",
                    placed.min(copies.max(placed))
                )
            } else {
                notes_text.clone()
            },
            now,
            generation,
        ),
        condition(
            &prev.conditions,
            "Replicated",
            secondaries_ready + 1 >= copies && primary.is_some(),
            if secondaries_ready + 1 >= copies {
                "InSync"
            } else {
                "Replicating"
            },
            format!(
                "{secondaries_ready} of {} secondaries ready",
                copies.saturating_sub(1)
            ),
            now,
            generation,
        ),
        condition(
            &prev.conditions,
            "Ready",
            phase_now == ProjectPhase::Ready,
            match phase_now {
                ProjectPhase::Ready => "Ready",
                ProjectPhase::Degraded if notes_text.contains("lost") => "PrimaryLost",
                _ => "NotReady",
            },
            if notes_text.is_empty() {
                format!("phase {phase_now:?}")
            } else {
                notes_text.clone()
            },
            now,
            generation,
        ),
    ];
    let from_primary = |t: &str| pst.conditions.iter().find(|c| c.type_ == t).cloned();
    if let Some(c) = from_primary("SnapshotsBlocked") {
        conditions.push(condition(
            &prev.conditions,
            "SnapshotsBlocked",
            c.status == "True",
            &c.reason,
            c.message,
            now,
            generation,
        ));
    }
    if let Some(c) = from_primary("Mounted") {
        conditions.push(condition(
            &prev.conditions,
            "Mounted",
            c.status == "True",
            &c.reason,
            c.message,
            now,
            generation,
        ));
    }
    let diverged: Vec<String> = inp
        .replicas
        .iter()
        .filter_map(|r| {
            r.status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Diverged" && c.status == "True")
                .map(|c| c.message.clone())
        })
        .collect();
    if !diverged.is_empty() || prev.conditions.iter().any(|c| c.type_ == "Diverged") {
        conditions.push(condition(
            &prev.conditions,
            "Diverged",
            !diverged.is_empty(),
            if diverged.is_empty() {
                "NoDivergence"
            } else {
                "ForkPreserved"
            },
            diverged.join("; "),
            now,
            generation,
        ));
    }
    ProjectStatus {
        observed_generation: generation,
        phase: Some(phase_now),
        primary: primary.map(|r| PrimaryStatus {
            pool: r.spec.pool.clone(),
            node: r.spec.node.clone(),
            epoch: r.spec.epoch,
            mount_path: r.status.as_ref().and_then(|s| s.mount_path.clone()),
        }),
        replicas,
        replicas_ready: Some(format!("{ready}/{copies}")),
        used_bytes: pst.used_bytes,
        used: pst.used_bytes.map(human_bytes),
        snapshot_used_bytes: pst.snapshot_used_bytes,
        quota_bytes: pst.quota_bytes,
        last_snapshot: pst.applied_snapshot.as_ref().map(|a| a.name.clone()),
        snapshot_count: pst.snapshot_count,
        mounts: prev.mounts.clone(),
        created_at: prev
            .created_at
            .clone()
            .or_else(|| p.metadata.creation_timestamp.clone()),
        restored_from: restored.or_else(|| prev.restored_from.clone()),
        conditions,
    }
}

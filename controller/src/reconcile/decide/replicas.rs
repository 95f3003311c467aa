//! The replicas a Project should have and what they are told: placement and re-replication
//! (DESIGN §5.1), their specs, where the primary's agent finds its mount sources (§5.7), and
//! the echoes that wake agents (the primary's newest snapshot, the Project's generation).

use std::collections::BTreeMap;

use kube::ResourceExt;
use projstore_api::contract::{
    self, BACKUP_NOW_ANNOTATION, MountSource, MountSources, NODE_LABEL, POOL_LABEL,
    PRIMARY_SNAPSHOT, PROJECT_GENERATION, PROJECT_LABEL, REPAIR_OWNERSHIP_ANNOTATION,
    SNAPSHOT_NOW_ANNOTATION, VERIFY_BACKUP_NOW_ANNOTATION,
};
use projstore_api::{
    MountStatus, Project, ReplicaRole, ReplicaSource, ReplicaState, StreamReplica,
    StreamReplicaSpec,
};

use super::{Change, Ctx, annotation, applied_guid};
use crate::placement::{self, PoolInfo, Spread};
use crate::view::{PoolView, quantity_bytes};

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

/// Creates the copies placement asks for beyond the healthy ones that exist; the first copy
/// of a new Project is its primary. A shortfall goes to `notes`.
pub(super) fn place(
    cx: &mut Ctx<'_>,
    primary: Option<&StreamReplica>,
    max_epoch: u64,
    moving: bool,
    state: ReplicaState,
    notes: &mut Vec<String>,
) {
    let inp = cx.inp;
    let p = inp.project;
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
    let pin = p.spec.placement.pool.as_deref();
    let infos: Vec<PoolInfo> = inp.pools.iter().map(|pv| pool_info(p, pv)).collect();
    let req = placement::Request {
        project: &cx.key,
        copies: usize::from(p.spec.copies),
        quota_bytes: quantity_bytes(&p.spec.quota.0).unwrap_or(u64::MAX),
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
    let epoch = max_epoch.max(1);
    let new_pools = placed.pools.iter().filter(|n| !existing.contains(n));
    for (i, pool) in new_pools.enumerate() {
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
        let role = if is_primary {
            ReplicaRole::Primary
        } else {
            ReplicaRole::Secondary
        };
        let sr = new_replica(p, &pv, role, epoch, source, state);
        cx.changes.push(Change::Create(Box::new(sr)));
    }
    if !placed.shortfall.is_empty() {
        notes.push(placed.shortfall.join("; "));
    }
}

/// What placement sees of a pool for `p`.
fn pool_info(p: &Project, pv: &PoolView) -> PoolInfo {
    PoolInfo {
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
    }
}

fn selector_matches(p: &Project, pv: &PoolView) -> bool {
    p.spec.placement.selects(&pv.labels)
}

/// A new replica of `p` on `pv`, labelled for its node's agent.
pub(super) fn new_replica(
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
        (NODE_LABEL.to_owned(), pv.node.clone()),
        (PROJECT_LABEL.to_owned(), name),
        (POOL_LABEL.to_owned(), pv.name.clone()),
    ]));
    sr
}

/// Lost secondaries go once their replacement is healthy; the old primary of a move goes once
/// the move is over and enough other copies are healthy.
pub(super) fn drop_replaced(cx: &mut Ctx<'_>, primary: Option<&StreamReplica>, moving: bool) {
    let inp = cx.inp;
    let copies = usize::from(inp.project.spec.copies);
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
        let replaced = cx.lost(r) && healthy >= copies;
        let extra = contract::moved_from(r.annotations()) && healthy > copies && !moving;
        if replaced || extra {
            cx.changes.push(Change::Delete { name: r.name_any() });
        }
    }
}

/// Tells the primary's agent where each mounted project is served now, so its mounts follow
/// moves and failovers; returns the mounts' status as the controller expects it.
pub(super) fn mount_sources(cx: &mut Ctx<'_>, primary: Option<&StreamReplica>) -> Vec<MountStatus> {
    let inp = cx.inp;
    let p = inp.project;
    let Some(pr) = primary else {
        return Vec::new();
    };
    let present = annotation(pr, contract::MOUNT_SOURCES_ANNOTATION);
    if p.spec.mounts.is_empty() {
        if present.is_some() {
            // No mounts any more: no source host keeps letting this node in for them.
            let gone = BTreeMap::from([(contract::MOUNT_SOURCES_ANNOTATION.to_owned(), None)]);
            cx.annotate(pr, gone);
        }
        return Vec::new();
    }
    let mut sources = MountSources::new();
    let mut expected = Vec::new();
    for m in &p.spec.mounts {
        let Some(src) = inp.mount_sources.get(&m.project).cloned().flatten() else {
            expected.push(MountStatus {
                mount_path: m.mount_path.clone(),
                phase: "Failed".into(),
                message: Some(format!(
                    "project {} does not exist or is not served yet",
                    m.project
                )),
            });
            continue;
        };
        let served_from = cx.pool(&src.pool);
        let source = MountSource {
            pool: src.pool.clone(),
            node: src.node.clone(),
            epoch: src.epoch,
            sftp: served_from.and_then(|p| p.sftp_endpoint.clone()),
            host_key: served_from.and_then(|p| p.sftp_host_key.clone()),
            read_only: p
                .spec
                .mounts
                .iter()
                .filter(|o| o.project == m.project)
                .all(|o| o.read_only),
        };
        sources.insert(m.project.clone(), source);
        expected.push(MountStatus {
            mount_path: m.mount_path.clone(),
            phase: "Pending".into(),
            message: Some(format!("{}:{} served by {}", m.project, m.path, src.node)),
        });
    }
    let want = contract::mount_sources_value(&sources);
    if present != Some(want.as_str()) {
        let set = BTreeMap::from([(contract::MOUNT_SOURCES_ANNOTATION.to_owned(), Some(want))]);
        cx.annotate(pr, set);
    }
    expected
}

/// Every replica not being deleted gets the Project's state, and secondaries stream from the
/// primary and learn of its newest snapshot at once (their agents wake on changes to their own
/// replica) instead of at their next poll. The primary echoes the Project (see
/// [`PROJECT_GENERATION`]).
pub(super) fn sync_specs(cx: &mut Ctx<'_>, primary: Option<&StreamReplica>, state: ReplicaState) {
    let inp = cx.inp;
    let Some(pr) = primary else {
        return;
    };
    let deleting: Vec<String> = cx
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Delete { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let src = cx.source(pr);
    for r in inp
        .replicas
        .iter()
        .filter(|r| !deleting.contains(&r.name_any()))
    {
        let mut spec = r.spec.clone();
        spec.state = state;
        if r.spec.role == ReplicaRole::Secondary {
            spec.source = Some(src.clone());
        }
        let mut ann = BTreeMap::new();
        if r.spec.role == ReplicaRole::Secondary
            && let Some(g) = applied_guid(pr)
            && contract::primary_snapshot(r.annotations()) != Some(g)
        {
            ann.insert(PRIMARY_SNAPSHOT.to_owned(), Some(g.to_owned()));
        }
        let echo = backup_echo(inp.project);
        if annotation(r, contract::BACKUP_ECHO) != echo.as_deref() {
            ann.insert(contract::BACKUP_ECHO.to_owned(), echo);
        }
        cx.update(r, spec, ann);
    }
    let echo: BTreeMap<String, Option<String>> = primary_echo(inp.project)
        .into_iter()
        .filter(|(k, v)| annotation(pr, k) != v.as_deref())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    cx.annotate(pr, echo);
}

/// The value of [`contract::BACKUP_ECHO`]: None when the project is not backed up.
fn backup_echo(p: &Project) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let backup = p.spec.backup.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(backup)
        .unwrap_or_default()
        .hash(&mut h);
    for k in [BACKUP_NOW_ANNOTATION, VERIFY_BACKUP_NOW_ANNOTATION] {
        p.annotations().get(k).hash(&mut h);
    }
    Some(format!("{:016x}", h.finish()))
}

/// What the primary's replica carries of its Project (see [`PROJECT_GENERATION`]).
fn primary_echo(p: &Project) -> [(&'static str, Option<String>); 3] {
    let copied = |k: &str| p.annotations().get(k).cloned();
    [
        (
            PROJECT_GENERATION,
            p.metadata.generation.map(|g| g.to_string()),
        ),
        (SNAPSHOT_NOW_ANNOTATION, copied(SNAPSHOT_NOW_ANNOTATION)),
        (
            REPAIR_OWNERSHIP_ANNOTATION,
            copied(REPAIR_OWNERSHIP_ANNOTATION),
        ),
    ]
}

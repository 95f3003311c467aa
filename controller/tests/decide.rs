//! Reconciler scenarios: for each situation, exactly which writes the controller makes (every
//! `Change` is one API request of the apply layer).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{Resource, ResourceExt};
use projstore_api::{PoolPhase, Project, ProjectPhase, ReplicaRole, ReplicaState, StreamReplica};
use projstore_controller::reconcile::decide::{
    Change, Decision, HANDOFF_TO, Inputs, MOVED_FROM, TRASHED_AT, decide,
};
use projstore_controller::view::PoolView;
use serde_json::json;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn pool(name: &str, node: &str, dc: &str) -> PoolView {
    PoolView {
        name: name.into(),
        node: node.into(),
        zone: format!("{dc}-{node}"),
        datacenter: dc.into(),
        phase: Some(PoolPhase::Ready),
        schedulable: true,
        experimental: false,
        labels: BTreeMap::new(),
        free_bytes: 1 << 40,
        size_bytes: 1 << 40,
        reserved_percent: 10,
        not_ready_since: None,
        stream_endpoint: Some(format!("https://{node}:7420")),
        sftp_endpoint: Some(format!("{node}:7422")),
        sftp_host_key: Some(format!("ssh-ed25519 AAAAkey{node}")),
    }
}

fn pools() -> Vec<PoolView> {
    vec![
        pool("pa", "a", "dc1"),
        pool("pb", "b", "dc1"),
        pool("pc", "c", "dc2"),
        pool("pd", "d", "dc2"),
    ]
}

fn project(extra: serde_json::Value) -> Project {
    let mut v = json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
        "metadata": {"name": "thesis", "namespace": "alice", "uid": "u1", "generation": 1, "finalizers": ["projstore.io/cleanup"],
                     "creationTimestamp": "2026-11-20T00:00:00Z"},
        "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

fn replica(
    pool: &str,
    node: &str,
    role: &str,
    epoch: u64,
    phase: Option<&str>,
    applied: Option<u64>,
) -> StreamReplica {
    let mut v = json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "StreamReplica",
        "metadata": {"name": format!("thesis-{pool}"), "namespace": "alice"},
        "spec": {"project": "thesis", "pool": pool, "node": node, "role": role, "epoch": epoch},
        "status": {}
    });
    if let Some(ph) = phase {
        v["status"]["phase"] = json!(ph);
    }
    if let Some(n) = applied {
        v["status"]["appliedSnapshot"] = json!({"name": format!("ps-{n}"), "guid": n.to_string(), "createtxg": n, "time": format!("2026-11-21T11:{:02}:00Z", n % 60)});
    }
    serde_json::from_value(v).unwrap()
}

/// Points every secondary at the primary, as the controller keeps them.
fn sourced(mut reps: Vec<StreamReplica>) -> Vec<StreamReplica> {
    let primary = reps
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
        .max_by_key(|r| r.spec.epoch)
        .cloned()
        .unwrap();
    let newest = primary
        .status
        .as_ref()
        .and_then(|s| s.applied_snapshot.as_ref())
        .map(|a| a.guid.clone());
    for r in reps
        .iter_mut()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
    {
        r.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("projstore.io/project-generation".into(), "1".into());
    }
    for r in reps
        .iter_mut()
        .filter(|r| r.spec.role == ReplicaRole::Secondary)
    {
        if let Some(g) = &newest {
            r.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert("projstore.io/primary-snapshot".into(), g.clone());
        }
        r.spec.source = Some(projstore_api::ReplicaSource {
            pool: primary.spec.pool.clone(),
            node: primary.spec.node.clone(),
            stream_endpoint: Some(format!("https://{}:7420", primary.spec.node)),
        });
    }
    reps
}

fn run(
    p: &Project,
    replicas: &[StreamReplica],
    tombstones: &[StreamReplica],
    pools: &[PoolView],
) -> Decision {
    decide(&Inputs {
        project: p,
        replicas,
        tombstones,
        pools,
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &BTreeMap::new(),
    })
}

fn creates(d: &Decision) -> Vec<(String, ReplicaRole, u64, Option<String>)> {
    d.changes
        .iter()
        .filter_map(|c| match c {
            Change::Create(sr) => Some((
                sr.spec.pool.clone(),
                sr.spec.role,
                sr.spec.epoch,
                sr.spec.source.as_ref().map(|s| s.pool.clone()),
            )),
            _ => None,
        })
        .collect()
}

/// Per replica name: (role, epoch, state, annotations) of its update.
type Updates = BTreeMap<
    String,
    (
        ReplicaRole,
        u64,
        ReplicaState,
        BTreeMap<String, Option<String>>,
    ),
>;

fn updates(d: &Decision) -> Updates {
    d.changes
        .iter()
        .filter_map(|c| match c {
            Change::Update {
                name,
                spec,
                annotations,
            } => Some((
                name.clone(),
                (spec.role, spec.epoch, spec.state, annotations.clone()),
            )),
            _ => None,
        })
        .collect()
}

fn events(d: &Decision) -> Vec<&'static str> {
    d.changes
        .iter()
        .filter_map(|c| {
            if let Change::Event { reason, .. } = c {
                Some(*reason)
            } else {
                None
            }
        })
        .collect()
}

fn placed(p: &Project) -> Vec<StreamReplica> {
    let d = run(p, &[], &[], &pools());
    sourced(
        creates(&d)
            .into_iter()
            .map(|(pool, role, epoch, _)| {
                let node = pools().into_iter().find(|x| x.name == pool).unwrap().node;
                replica(
                    &pool,
                    &node,
                    if role == ReplicaRole::Primary {
                        "Primary"
                    } else {
                        "Secondary"
                    },
                    epoch,
                    Some("Ready"),
                    Some(10),
                )
            })
            .collect(),
    )
}

#[test]
fn a_new_project_gets_its_finalizer_and_three_replicas() {
    let p = project(json!({"metadata": {"finalizers": null}}));
    let d = run(&p, &[], &[], &pools());
    assert_eq!(d.changes[0], Change::AddFinalizer);
    let c = creates(&d);
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].1, ReplicaRole::Primary);
    assert_eq!(c[0].2, 1, "epoch 1");
    assert!(c[0].3.is_none(), "a primary has no source");
    for s in &c[1..] {
        assert_eq!(
            (s.1, s.3.as_deref()),
            (ReplicaRole::Secondary, Some(c[0].0.as_str())),
            "secondaries pull from the primary"
        );
    }
    let dcs: std::collections::BTreeSet<String> = c
        .iter()
        .map(|s| {
            pools()
                .into_iter()
                .find(|p| p.name == s.0)
                .unwrap()
                .datacenter
        })
        .collect();
    assert_eq!(dcs.len(), 2, "both datacenters");
    assert_eq!(d.status.phase, Some(ProjectPhase::Placing));
    if let Some(Change::Create(sr)) = d.changes.iter().find(|c| matches!(c, Change::Create(_))) {
        assert_eq!(sr.labels().get("projstore.io/node"), Some(&sr.spec.node));
        assert_eq!(sr.namespace().as_deref(), Some("alice"));
    }
}

#[test]
fn an_unplaceable_project_says_why_with_an_event() {
    let mut ps = pools();
    for p in &mut ps {
        p.phase = Some(PoolPhase::NotReady);
    }
    let d = run(&project(json!({})), &[], &[], &ps);
    assert!(creates(&d).is_empty());
    assert_eq!(events(&d), ["Unplaceable"]);
    let placed = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Placed")
        .unwrap();
    assert_eq!(
        (placed.status.as_str(), placed.reason.as_str()),
        ("False", "Unplaceable")
    );
    assert!(
        placed.message.contains("4 pool(s) not Ready"),
        "{}",
        placed.message
    );
}

#[test]
fn a_steady_project_makes_no_writes_and_its_status_is_stable() {
    let p = project(json!({}));
    let reps = placed(&p);
    let d = run(&p, &reps, &[], &pools());
    assert!(d.changes.is_empty(), "{:?}", d.changes);
    assert_eq!(d.status.phase, Some(ProjectPhase::Ready));
    assert_eq!(d.status.replicas_ready.as_deref(), Some("3/3"));
    // Feeding the status back changes nothing: no write on the next pass.
    let mut with_status = p.clone();
    with_status.status = Some(d.status.clone());
    let again = run(&with_status, &reps, &[], &pools());
    assert_eq!(again.status, d.status);
    assert!(again.changes.is_empty());
}

#[test]
fn failover_waits_for_the_grace_period_then_promotes_the_freshest() {
    let p = project(json!({}));
    let reps = sourced(vec![
        replica("pa", "a", "Primary", 3, Some("Ready"), Some(30)),
        replica("pb", "b", "Secondary", 3, Some("Ready"), Some(10)),
        replica("pc", "c", "Secondary", 3, Some("Ready"), Some(20)),
    ]);
    let mut ps = pools();
    ps[0].phase = Some(PoolPhase::NotReady);
    ps[0].not_ready_since = Some(now() - chrono::Duration::seconds(60));
    let d = run(&p, &reps, &[], &ps);
    assert!(
        updates(&d).is_empty(),
        "within the grace period nothing moves"
    );
    ps[0].not_ready_since = Some(now() - chrono::Duration::seconds(121));
    let d = run(&p, &reps, &[], &ps);
    let u = updates(&d);
    assert_eq!(
        u["thesis-pc"].0,
        ReplicaRole::Primary,
        "snapshot 20 is the freshest"
    );
    assert_eq!(u["thesis-pc"].1, 4, "epoch + 1");
    assert_eq!(
        (u["thesis-pa"].0, u["thesis-pa"].1),
        (ReplicaRole::Secondary, 4),
        "old primary demoted with the new epoch"
    );
    assert_eq!(u["thesis-pb"].1, 4);
    assert_eq!(events(&d), ["FailedOver"]);
}

#[test]
fn manual_failover_only_reports() {
    let p = project(json!({"spec": {"failover": "Manual"}}));
    let reps = vec![
        replica("pa", "a", "Primary", 1, Some("Ready"), Some(30)),
        replica("pb", "b", "Secondary", 1, Some("Ready"), Some(10)),
    ];
    let mut ps = pools();
    ps[0].phase = Some(PoolPhase::NotReady);
    ps[0].not_ready_since = Some(now() - chrono::Duration::seconds(600));
    let d = run(&p, &reps, &[], &ps);
    assert!(updates(&d).is_empty());
    assert_eq!(events(&d), ["PrimaryLost"]);
    let ready = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("Manual"));
}

#[test]
fn a_move_goes_step_by_step() {
    let p = project(json!({"spec": {"placement": {"pool": "pd"}}}));
    let base = sourced(vec![
        replica("pa", "a", "Primary", 1, Some("Ready"), Some(30)),
        replica("pb", "b", "Secondary", 1, Some("Ready"), Some(30)),
        replica("pc", "c", "Secondary", 1, Some("Ready"), Some(30)),
    ]);
    // 1. A copy on the target.
    let d = run(&p, &base, &[], &pools());
    assert_eq!(
        creates(&d),
        [(
            "pd".to_owned(),
            ReplicaRole::Secondary,
            1,
            Some("pa".to_owned())
        )]
    );
    assert_eq!(d.status.phase, Some(ProjectPhase::Moving));
    // 2. Not caught up yet: wait.
    let mut reps = base.clone();
    reps.push(replica(
        "pd",
        "d",
        "Secondary",
        1,
        Some("Syncing"),
        Some(20),
    ));
    let mut reps = sourced(reps);
    let d = run(&p, &reps, &[], &pools());
    assert!(updates(&d).is_empty() && creates(&d).is_empty());
    // 3. Caught up: the primary is asked to hand off.
    reps[3] = sourced(vec![
        reps[0].clone(),
        replica("pd", "d", "Secondary", 1, Some("Ready"), Some(30)),
    ])
    .remove(1);
    let d = run(&p, &reps, &[], &pools());
    let u = updates(&d);
    assert_eq!(
        u["thesis-pa"].3.get(HANDOFF_TO),
        Some(&Some("pd".to_owned()))
    );
    // 4. Handed off and the final snapshot arrived: roles flip at epoch 2.
    let mut pa: serde_json::Value = serde_json::to_value(&reps[0]).unwrap();
    pa["metadata"]["annotations"] = json!({HANDOFF_TO: "pd"});
    pa["status"]["conditions"] = json!([{"type": "HandedOff", "status": "True", "reason": "FinalSnapshot", "message": "", "lastTransitionTime": "2026-11-21T11:59:00Z"}]);
    reps[0] = serde_json::from_value(pa).unwrap();
    let d = run(&p, &reps, &[], &pools());
    let u = updates(&d);
    assert_eq!(
        (u["thesis-pd"].0, u["thesis-pd"].1),
        (ReplicaRole::Primary, 2)
    );
    assert_eq!(
        (u["thesis-pa"].0, u["thesis-pa"].1),
        (ReplicaRole::Secondary, 2)
    );
    assert_eq!(
        u["thesis-pa"].3.get(MOVED_FROM),
        Some(&Some("true".to_owned()))
    );
    assert_eq!(u["thesis-pa"].3.get(HANDOFF_TO), Some(&None));
    assert_eq!(events(&d), ["MoveCompleted"]);
    // 5. Afterwards the old primary is the extra copy and goes.
    let mut after = vec![
        replica("pd", "d", "Primary", 2, Some("Ready"), Some(30)),
        replica("pb", "b", "Secondary", 2, Some("Ready"), Some(30)),
        replica("pc", "c", "Secondary", 2, Some("Ready"), Some(30)),
    ];
    let mut old: serde_json::Value =
        serde_json::to_value(replica("pa", "a", "Secondary", 2, Some("Ready"), Some(30))).unwrap();
    old["metadata"]["annotations"] = json!({MOVED_FROM: "true"});
    after.push(serde_json::from_value(old).unwrap());
    for r in &mut after[1..] {
        r.spec.source = Some(projstore_api::ReplicaSource {
            pool: "pd".into(),
            node: "d".into(),
            stream_endpoint: Some("https://d:7420".into()),
        });
    }
    let d = run(&p, &after, &[], &pools());
    assert!(
        d.changes.contains(&Change::Delete {
            name: "thesis-pa".into()
        }),
        "{:?}",
        d.changes
    );
}

#[test]
fn deletion_trashes_then_releases_and_a_new_project_restores() {
    let p = project(
        json!({"metadata": {"deletionTimestamp": "2026-11-21T11:00:00Z"}, "spec": {"deletion": {"retainDays": 3}}}),
    );
    let reps = placed(&project(json!({})));
    let d = run(&p, &reps, &[], &pools());
    let u = updates(&d);
    assert_eq!(u.len(), 3);
    for (state, ann) in u.values().map(|v| (v.2, &v.3)) {
        assert_eq!(state, ReplicaState::Trashed);
        assert!(ann.contains_key(TRASHED_AT));
    }
    assert!(
        !d.changes.contains(&Change::RemoveFinalizer),
        "not before the agents trashed the data"
    );
    // The agents report Trashed: orphan the tombstones and let the object go.
    let mut trashed = reps.clone();
    for r in &mut trashed {
        r.spec.state = ReplicaState::Trashed;
        r.status.as_mut().unwrap().phase = Some(projstore_api::ReplicaPhase::Trashed);
        r.metadata.annotations = Some(BTreeMap::from([
            (TRASHED_AT.to_owned(), "2026-11-21T11:00:00Z".to_owned()),
            ("projstore.io/retain-days".to_owned(), "3".to_owned()),
        ]));
    }
    let d = run(&p, &trashed, &[], &pools());
    let orphans = d
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Orphan { .. }))
        .count();
    assert_eq!(orphans, 3);
    assert!(d.changes.contains(&Change::RemoveFinalizer));
    // A new Project of the same name within retention adopts them.
    let fresh = project(json!({"metadata": {"uid": "u2"}}));
    let d = run(&fresh, &[], &trashed, &pools());
    assert_eq!(
        d.changes
            .iter()
            .filter(|c| matches!(c, Change::Adopt { .. }))
            .count(),
        3
    );
    assert!(creates(&d).is_empty(), "restored, not placed anew");
    assert!(
        d.status
            .restored_from
            .as_deref()
            .is_some_and(|r| r.contains("alice/thesis"))
    );
    assert_eq!(events(&d), ["Restored"]);
    // After retention, nothing to adopt: placed anew.
    let later = decide(&Inputs {
        project: &fresh,
        replicas: &[],
        tombstones: &trashed,
        pools: &pools(),
        now: now() + chrono::Duration::days(4),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &BTreeMap::new(),
    });
    assert_eq!(creates(&later).len(), 3);
}

#[test]
fn closing_archives_every_copy() {
    let p = project(json!({"spec": {"state": "Closed"}}));
    let reps = placed(&project(json!({})));
    let d = run(&p, &reps, &[], &pools());
    assert!(updates(&d).values().all(|u| u.2 == ReplicaState::Archived));
    assert_eq!(updates(&d).len(), 3);
    assert_eq!(d.status.phase, Some(ProjectPhase::Closing));
    let mut archived = reps.clone();
    for r in &mut archived {
        r.spec.state = ReplicaState::Archived;
        r.status.as_mut().unwrap().phase = Some(projstore_api::ReplicaPhase::Archived);
    }
    let d = run(&p, &archived, &[], &pools());
    assert!(d.changes.is_empty());
    assert_eq!(d.status.phase, Some(ProjectPhase::Closed));
    // Opening again: back to Live, phase Opening until the agents report.
    let open = project(json!({}));
    let d = run(&open, &archived, &[], &pools());
    assert!(updates(&d).values().all(|u| u.2 == ReplicaState::Live));
    assert_eq!(d.status.phase, Some(ProjectPhase::Opening));
}

#[test]
fn a_lost_secondary_is_replaced_and_then_dropped() {
    let p = project(json!({}));
    let reps = vec![
        replica("pa", "a", "Primary", 1, Some("Ready"), Some(30)),
        replica("pb", "b", "Secondary", 1, Some("Ready"), Some(30)),
        replica("pc", "c", "Secondary", 1, Some("Ready"), Some(30)),
    ];
    let mut ps = pools();
    ps[2].phase = Some(PoolPhase::NotReady);
    ps[2].not_ready_since = Some(now() - chrono::Duration::seconds(500));
    let d = run(&p, &reps, &[], &ps);
    assert_eq!(
        creates(&d),
        [(
            "pd".to_owned(),
            ReplicaRole::Secondary,
            1,
            Some("pa".to_owned())
        )],
        "only the lost copy moves"
    );
    let mut with_new = reps.clone();
    with_new.push(replica("pd", "d", "Secondary", 1, Some("Syncing"), None));
    let d = run(&p, &with_new, &[], &ps);
    assert!(d.changes.contains(&Change::Delete {
        name: "thesis-pc".into()
    }));
}

#[test]
fn mounts_point_the_consumer_at_the_sources_primary_and_follow_it() {
    let p = project(
        json!({"spec": {"mounts": [{"project": "course", "path": "handin/alice", "mountPath": "handin"}]}}),
    );
    let reps = placed(&project(json!({})));
    let primary = reps
        .iter()
        .find(|r| r.spec.role == ReplicaRole::Primary)
        .unwrap()
        .name_any();
    let src = |node: &str, epoch: u64| {
        BTreeMap::from([(
            "course".to_owned(),
            Some(projstore_api::PrimaryStatus {
                pool: format!("p{node}"),
                node: node.into(),
                epoch,
                mount_path: None,
            }),
        )])
    };
    let at_b = src("b", 1);
    let d = decide(&Inputs {
        project: &p,
        replicas: &reps,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &at_b,
    });
    let u = updates(&d);
    let ann = u[&primary]
        .3
        .get("projstore.io/mount-sources")
        .cloned()
        .flatten()
        .unwrap();
    // Where the source's agent serves sftp travels with it: the consumer's agent watches
    // only its own pools.
    assert!(
        ann.contains(r#""node":"b""#)
            && ann.contains(r#""sftp":"b:7422""#)
            && ann.contains(r#""hostKey":"ssh-ed25519 AAAAkeyb""#),
        "{ann}"
    );
    assert_eq!(d.status.mounts[0].phase, "Pending");
    // The source moves to node c: the annotation follows.
    let mut annotated = reps.clone();
    for r in annotated.iter_mut().filter(|r| r.name_any() == primary) {
        r.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("projstore.io/mount-sources".to_owned(), ann.clone());
    }
    let same = decide(&Inputs {
        project: &p,
        replicas: &annotated,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &at_b,
    });
    assert!(updates(&same).is_empty(), "no change, no write");
    let at_c = src("c", 2);
    let moved = decide(&Inputs {
        project: &p,
        replicas: &annotated,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &at_c,
    });
    let ann = updates(&moved)[&primary]
        .3
        .get("projstore.io/mount-sources")
        .cloned()
        .flatten()
        .unwrap();
    assert!(
        ann.contains(r#""node":"c""#)
            && ann.contains(r#""epoch":2"#)
            && ann.contains(r#""sftp":"c:7422""#),
        "{ann}"
    );
    // A missing source is reported, not guessed.
    let none = BTreeMap::from([("course".to_owned(), None)]);
    let missing = decide(&Inputs {
        project: &p,
        replicas: &reps,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &none,
    });
    assert_eq!(missing.status.mounts[0].phase, "Failed");
    // The mounts leave the spec: the annotation goes too (the source host lets this node in
    // for as long as it names a source there).
    let mut unmounted = p.clone();
    unmounted.spec.mounts.clear();
    let gone = decide(&Inputs {
        project: &unmounted,
        replicas: &annotated,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &BTreeMap::new(),
    });
    assert_eq!(
        updates(&gone)[&primary].3.get("projstore.io/mount-sources"),
        Some(&None),
        "the annotation is removed"
    );
    let settled = decide(&Inputs {
        project: &unmounted,
        replicas: &reps,
        tombstones: &[],
        pools: &pools(),
        now: now(),
        failover_grace: chrono::Duration::seconds(120),
        mount_sources: &BTreeMap::new(),
    });
    assert!(updates(&settled).is_empty(), "nothing to remove, no write");
}

#[test]
fn tombstones_expire_after_their_retention() {
    let mut t = replica("pa", "a", "Secondary", 1, Some("Trashed"), None);
    t.spec.state = ReplicaState::Trashed;
    t.metadata.annotations = Some(BTreeMap::from([
        (TRASHED_AT.to_owned(), "2026-11-20T12:00:00Z".to_owned()),
        ("projstore.io/retain-days".to_owned(), "2".to_owned()),
    ]));
    use projstore_controller::reconcile::decide::tombstone_expired;
    assert!(!tombstone_expired(&t, now()));
    assert!(tombstone_expired(&t, now() + chrono::Duration::days(2)));
    t.metadata.owner_references = Some(vec![project(json!({})).controller_owner_ref(&()).unwrap()]);
    assert!(
        !tombstone_expired(&t, now() + chrono::Duration::days(2)),
        "owned replicas are not tombstones"
    );
}

#[test]
fn the_primary_is_told_of_project_changes_its_agent_acts_on() {
    let p = project(json!({}));
    let reps = placed(&p);
    let primary = reps
        .iter()
        .find(|r| r.spec.role == ReplicaRole::Primary)
        .unwrap()
        .name_any();
    // A new snapshot-now value and a spec change (generation 2) reach the primary's replica,
    // which its agent watches; the secondaries are left alone.
    let asked = project(
        json!({"metadata": {"generation": 2, "annotations": {"projstore.io/snapshot-now": "before-upgrade"}}}),
    );
    let d = run(&asked, &reps, &[], &pools());
    let u = updates(&d);
    assert_eq!(u.len(), 1, "{u:?}");
    let (role, epoch, _, ann) = &u[&primary];
    assert_eq!(
        (*role, *epoch),
        (ReplicaRole::Primary, 1),
        "the spec is kept"
    );
    assert_eq!(
        ann.get("projstore.io/snapshot-now"),
        Some(&Some("before-upgrade".to_owned()))
    );
    assert_eq!(
        ann.get("projstore.io/project-generation"),
        Some(&Some("2".to_owned()))
    );
}

//! What a replica pass decides (`runtime::replica::plans`), branch by branch: the same
//! decisions the scenarios reach through a cluster, as tables over plain facts.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use projstore_agent::retention::managed_name;
use projstore_agent::runtime::replica::ReplicaError;
use projstore_agent::runtime::replica::plans::*;
use projstore_agent::zfs::SnapshotInfo;
use projstore_api::{MountStatus, ReplicaPhase, SnapshotPolicy, StreamReplicaStatus};

const NOW: i64 = 1_790_000_000;
const GIB: u64 = 1 << 30;

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A primary's dataset as a finished pass leaves it: epoch 3, quota 1 GiB, 100 MiB in use.
fn settled() -> BTreeMap<String, String> {
    props(&[
        ("projstore.io:epoch", "3"),
        ("projstore.io:role", "primary"),
        ("readonly", "off"),
        ("setuid", "off"),
        ("devices", "off"),
        ("mountpoint", "/p/ns/a"),
        ("mounted", "yes"),
        ("refquota", &GIB.to_string()),
        ("referenced", "104857600"),
        ("usedbysnapshots", "0"),
    ])
}

fn snap(name: &str, guid: u64, creation: i64) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        guid,
        createtxg: guid,
        creation,
        used: 0,
        properties: BTreeMap::new(),
    }
}

/// A managed snapshot `ago` seconds before [`NOW`].
fn managed(ago: i64, guid: u64) -> SnapshotInfo {
    snap(&managed_name(NOW - ago), guid, NOW - ago)
}

struct Case {
    what: &'static str,
    props: BTreeMap<String, String>,
    snapshots: Vec<SnapshotInfo>,
    quiet_since: Option<i64>,
    snapshot_now: Option<&'static str>,
    quota: u64,
}

impl Case {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            props: settled(),
            // 5 minutes ago, with a 15-minute interval: nothing due.
            snapshots: vec![managed(300, 1)],
            quiet_since: None,
            snapshot_now: None,
            quota: GIB,
        }
    }
    fn set(mut self, k: &str, v: &str) -> Self {
        self.props.insert(k.into(), v.into());
        self
    }
    fn plan(&self) -> PrimaryPlan {
        plan_primary(&PrimaryFacts {
            epoch: 3,
            props: &self.props,
            mountpoint: "/p/ns/a",
            quota: self.quota,
        })
    }
    fn snapshot(&self) -> SnapshotPlan {
        plan_snapshot(&SnapshotFacts {
            props: &self.props,
            quota: self.quota,
            policy: &SnapshotPolicy::default(),
            snapshots: &self.snapshots,
            quiet_since: self.quiet_since,
            snapshot_now: self.snapshot_now,
            now: NOW,
        })
    }
}

#[test]
fn a_settled_primary_changes_nothing() {
    let c = Case::new("settled");
    let p = c.plan();
    assert_eq!(p.fenced, None);
    assert!(p.set.is_empty(), "{:?}", p.set);
    assert!(!p.mount);
    assert_eq!(p.quota, None);
    assert_eq!(p.quota_refused, None);
    let s = c.snapshot();
    assert_eq!(s.take, None);
    assert_eq!(
        s.blocked,
        Verdict::new("SnapshotsBlocked", false, "WithinLimit", "")
    );
}

#[test]
fn a_new_dataset_gets_every_property_its_mount_its_quota_and_a_first_snapshot() {
    let mut c = Case::new("new");
    c.props = props(&[("mounted", "no")]);
    c.snapshots.clear();
    let p = c.plan();
    let first = c.snapshot().take;
    let set: Vec<(&str, &str)> = p.set.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        set,
        vec![
            ("projstore.io:epoch", "3"),
            ("projstore.io:role", "primary"),
            ("readonly", "off"),
            ("setuid", "off"),
            ("devices", "off"),
            ("mountpoint", "/p/ns/a"),
        ]
    );
    assert!(p.mount);
    assert_eq!(p.quota, Some(GIB));
    assert_eq!(
        first,
        Some(SnapshotStep {
            always: false,
            mark: None
        })
    );
}

#[test]
fn only_what_differs_is_set() {
    for (what, prop, value) in [
        ("demoted copy promoted", "projstore.io:role", "secondary"),
        ("read-only after a hand-off", "readonly", "on"),
        ("setuid switched on by hand", "setuid", "on"),
        ("moved projects root", "mountpoint", "/old/ns/a"),
        ("older epoch", "projstore.io:epoch", "2"),
    ] {
        let p = Case::new(what).set(prop, value).plan();
        assert_eq!(p.set.len(), 1, "{what}: {:?}", p.set);
        assert_eq!(p.set[0].0, prop, "{what}");
        assert_eq!(p.fenced, None, "{what}");
    }
    let p = Case::new("unmounted").set("mounted", "no").plan();
    assert!(p.mount && p.set.is_empty());
}

#[test]
fn a_dataset_written_under_a_newer_epoch_is_fenced() {
    for (epoch, fenced) in [("4", true), ("3", false), ("1", false), ("junk", false)] {
        let p = Case::new("epoch").set("projstore.io:epoch", epoch).plan();
        assert_eq!(p.fenced.is_some(), fenced, "epoch {epoch}");
    }
    let e = fenced(&props(&[("projstore.io:epoch", "9")]), 3).expect("fenced");
    assert!(matches!(e, ReplicaError::Fenced { seen: 9, ours: 3 }));
    assert_eq!(
        e.to_string(),
        "the dataset was written under epoch 9, newer than this replica's 3: not serving it"
    );
    assert!(fenced(&props(&[]), 0).is_none());
}

#[test]
fn quota() {
    // (what, refquota now, in use, wanted) → set, refused
    for (what, now, used, want, set, refused) in [
        ("unchanged", GIB, GIB / 2, GIB, None, false),
        ("grown", GIB, GIB / 2, 2 * GIB, Some(2 * GIB), false),
        (
            "shrunk above usage",
            GIB,
            GIB / 4,
            GIB / 2,
            Some(GIB / 2),
            false,
        ),
        ("shrunk below usage", GIB, GIB / 2, GIB / 4, None, true),
    ] {
        let mut c = Case::new(what)
            .set("refquota", &now.to_string())
            .set("referenced", &used.to_string());
        c.quota = want;
        let p = c.plan();
        assert_eq!(p.quota, set, "{what}");
        let v = p.quota_refused.as_ref();
        assert_eq!(v.is_some(), refused, "{what}");
        if let Some(v) = v {
            assert!(!v.ok && v.reason == "QuotaBelowUsage", "{what}");
            assert!(v.message.contains("not applied"), "{what}: {}", v.message);
        }
    }
}

#[test]
fn snapshots_on_schedule_on_demand_and_under_the_space_guard() {
    struct S {
        what: &'static str,
        snapshots: Vec<SnapshotInfo>,
        quiet_since: Option<i64>,
        asked: Option<&'static str>,
        handled: &'static str,
        used_by_snapshots: u64,
        want: Option<SnapshotStep>,
    }
    let scheduled = Some(SnapshotStep {
        always: false,
        mark: None,
    });
    let table = [
        S {
            what: "interval not over",
            snapshots: vec![managed(300, 1)],
            quiet_since: None,
            asked: None,
            handled: "",
            used_by_snapshots: 0,
            want: None,
        },
        S {
            what: "interval over",
            snapshots: vec![managed(900, 1)],
            quiet_since: None,
            asked: None,
            handled: "",
            used_by_snapshots: 0,
            want: scheduled.clone(),
        },
        S {
            what: "no snapshot yet",
            snapshots: vec![],
            quiet_since: None,
            asked: None,
            handled: "",
            used_by_snapshots: 0,
            want: scheduled.clone(),
        },
        S {
            what: "user snapshots do not count as a check",
            snapshots: vec![snap("mine", 7, NOW - 10)],
            quiet_since: None,
            asked: None,
            handled: "",
            used_by_snapshots: 0,
            want: scheduled.clone(),
        },
        S {
            what: "a quiet check counts as a check",
            snapshots: vec![managed(3600, 1)],
            quiet_since: Some(NOW - 60),
            asked: None,
            handled: "",
            used_by_snapshots: 0,
            want: None,
        },
        S {
            what: "asked for, not yet handled",
            snapshots: vec![managed(300, 1)],
            quiet_since: None,
            asked: Some("t1"),
            handled: "",
            used_by_snapshots: 0,
            want: Some(SnapshotStep {
                always: true,
                mark: Some("t1".into()),
            }),
        },
        S {
            what: "asked for again with a new value",
            snapshots: vec![managed(300, 1)],
            quiet_since: None,
            asked: Some("t2"),
            handled: "t1",
            used_by_snapshots: 0,
            want: Some(SnapshotStep {
                always: true,
                mark: Some("t2".into()),
            }),
        },
        S {
            what: "asked for and handled",
            snapshots: vec![managed(300, 1)],
            quiet_since: None,
            asked: Some("t1"),
            handled: "t1",
            used_by_snapshots: 0,
            want: None,
        },
        S {
            what: "blocked by snapshot space, even on demand",
            snapshots: vec![managed(900, 1)],
            quiet_since: None,
            asked: Some("t1"),
            handled: "",
            used_by_snapshots: 3 * GIB + 1,
            want: None,
        },
        S {
            what: "this second's name is taken",
            snapshots: vec![managed(0, 1)],
            quiet_since: None,
            asked: Some("t1"),
            handled: "",
            used_by_snapshots: 0,
            want: None,
        },
    ];
    for s in table {
        let mut c = Case::new(s.what)
            .set("projstore.io:snapshot-now", s.handled)
            .set("usedbysnapshots", &s.used_by_snapshots.to_string());
        c.snapshots = s.snapshots;
        c.quiet_since = s.quiet_since;
        c.snapshot_now = s.asked;
        let p = c.snapshot();
        assert_eq!(p.take, s.want, "{}", c.what);
        // Only a request that met this second's name comes back at once.
        assert_eq!(
            p.again_soon,
            s.what == "this second's name is taken",
            "{}",
            c.what
        );
        assert_eq!(p.blocked.ok, s.used_by_snapshots > 3 * GIB, "{}", c.what);
        if p.blocked.ok {
            assert_eq!(p.blocked.reason, "SnapshotSpaceExceeded", "{}", c.what);
        }
    }
}

#[test]
fn the_next_check_is_one_interval_after_the_last_and_never_now() {
    assert_eq!(
        last_check(&[managed(300, 1), snap("mine", 2, NOW)], None),
        Some(NOW - 300)
    );
    assert_eq!(
        last_check(&[managed(300, 1)], Some(NOW - 10)),
        Some(NOW - 10)
    );
    assert_eq!(last_check(&[], None), None);
    for (last, secs) in [
        (Some(NOW - 300), 600),
        (Some(NOW - 900), 1),
        (None, 1),
        (Some(NOW), 900),
    ] {
        assert_eq!(next_due(last, 900, NOW).as_secs(), secs, "{last:?}");
    }
}

#[test]
fn retention_never_prunes_the_chains_base_nor_user_snapshots() {
    let mut policy = SnapshotPolicy::default();
    policy.keep.frequent = 1;
    policy.keep.hourly = 0;
    policy.keep.daily = 0;
    policy.keep.weekly = 0;
    policy.keep.monthly = 0;
    let snaps = vec![
        managed(3 * 3600, 1),
        snap("mine", 2, NOW - 2 * 3600),
        managed(3600, 3),
        managed(60, 4),
    ];
    let pruned = to_prune(&snaps, &[], &policy, NOW);
    assert_eq!(pruned, vec![snaps[0].name.clone(), snaps[2].name.clone()]);
    let pruned = to_prune(&snaps, &[3], &policy, NOW);
    assert_eq!(
        pruned,
        vec![snaps[0].name.clone()],
        "the base of the next increment stays"
    );
}

#[test]
fn the_mounted_verdict_names_every_mount_not_made() {
    let m = |path: &str, phase: &str, msg: &str| MountStatus {
        mount_path: path.into(),
        phase: phase.into(),
        message: Some(msg.into()),
    };
    let ok = mounts_verdict(&[m("a", "Mounted", "b:/ from this host")]);
    assert_eq!(ok, Verdict::new("Mounted", true, "AllMounted", ""));
    let failed = mounts_verdict(&[
        m("a", "Mounted", ""),
        m("b", "Failed", "project x is not served yet"),
        m("c", "Pending", "later"),
    ]);
    assert_eq!(
        failed,
        Verdict::new(
            "Mounted",
            false,
            "MountFailed",
            "b: project x is not served yet; c: later"
        )
    );
}

#[test]
fn a_secondary_is_ready_only_holding_the_primarys_newest_snapshot() {
    let summary = streams_summary([10, 20]);
    assert_eq!((summary.count, summary.bytes), (2, 30));
    for (what, remote, local, lag, phase) in [
        (
            "caught up",
            Some(NOW),
            vec![managed(0, 1)],
            0,
            ReplicaPhase::Ready,
        ),
        (
            "behind",
            Some(NOW),
            vec![managed(120, 1)],
            120,
            ReplicaPhase::Syncing,
        ),
        (
            "nothing yet",
            Some(NOW),
            vec![],
            i64::from(u32::MAX),
            ReplicaPhase::Syncing,
        ),
        ("primary has nothing", None, vec![], 0, ReplicaPhase::Ready),
        (
            "ahead (clock skew)",
            Some(NOW - 5),
            vec![managed(0, 1)],
            0,
            ReplicaPhase::Ready,
        ),
    ] {
        let prev = StreamReplicaStatus {
            transfer: Some(projstore_api::TransferProgress {
                bytes_done: 1,
                bytes_total: 2,
                bytes_per_second: Some(1),
            }),
            used_bytes: Some(5),
            ..Default::default()
        };
        let s = secondary_status(&prev, remote, &local, summary.clone(), vec![]);
        assert_eq!(s.phase, Some(phase), "{what}");
        assert_eq!(s.lag_seconds, Some(lag), "{what}");
        assert_eq!(s.transfer, None, "{what}: no transfer runs any more");
        assert_eq!(
            s.used_bytes,
            Some(5),
            "{what}: what it does not speak of stays"
        );
        assert_eq!(s.snapshot_count, Some(u32::try_from(local.len()).unwrap()));
        assert_eq!(
            s.applied_snapshot.map(|a| a.guid),
            local.last().map(|l| l.guid.to_string())
        );
    }
}

#[test]
fn forks_are_named_by_epoch_and_nothing_else_counts() {
    let prefix = "p/forks/ns/a-e";
    let children: Vec<String> = [
        "p/forks/ns/a-e3",
        "p/forks/ns/a-e3-2",
        "p/forks/ns/a-ex",
        "p/forks/ns/ab-e3",
        "p/forks/ns/a-e",
        "p/forks/ns/a-e4-",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let v = forks_verdict(&children, prefix).expect("forks");
    assert_eq!(
        v,
        Verdict::new(
            "Diverged",
            true,
            "ForkPreserved",
            "writes the primary lacked are preserved at p/forks/ns/a-e3, p/forks/ns/a-e3-2"
        )
    );
    assert_eq!(forks_verdict(&children[2..], prefix), None);
}

#[test]
fn trash_names_and_purge_time_come_from_the_controllers_annotations() {
    let ann = |pairs: &[(&str, &str)]| props(pairs);
    for (what, a, stamp, purge) in [
        (
            "default retention",
            ann(&[("projstore.io/trashed-at", "2026-03-01T10:20:30Z")]),
            "20260301T102030Z",
            "2026-03-08T10:20:30Z",
        ),
        (
            "thirty days",
            ann(&[
                ("projstore.io/trashed-at", "2026-03-01T10:20:30+02:00"),
                ("projstore.io/retain-days", "30"),
            ]),
            "20260301T082030Z",
            "2026-03-31T08:20:30Z",
        ),
    ] {
        let p = plan_trash(&a).expect(what);
        assert_eq!(p.stamp, stamp, "{what}");
        assert_eq!(p.purge_after, purge, "{what}");
    }
    let missing = plan_trash(&ann(&[])).expect_err("no trashed-at");
    assert_eq!(missing.to_string(), "no projstore.io/trashed-at annotation");
    assert!(plan_trash(&ann(&[("projstore.io/trashed-at", "Tuesday")])).is_err());
}

#[test]
fn trashed_and_archived_copies_keep_what_they_held() {
    let prev = StreamReplicaStatus {
        phase: Some(ReplicaPhase::Ready),
        applied_snapshot: Some(projstore_api::SnapshotRef {
            name: "s".into(),
            guid: "7".into(),
            createtxg: 7,
            time: None,
        }),
        ..Default::default()
    };
    let t = trashed_status(&prev);
    assert_eq!(t.phase, Some(ReplicaPhase::Trashed));
    assert_eq!(t.applied_snapshot, prev.applied_snapshot);
    assert!(t.conditions.is_empty());
    let a = archived_status(&prev, streams_summary([5]));
    assert_eq!(a.phase, Some(ReplicaPhase::Archived));
    assert_eq!(a.streams.map(|s| s.count), Some(1));
    assert_eq!(a.applied_snapshot, prev.applied_snapshot);
}

#[test]
fn a_hand_off_says_which_snapshot_is_ready_for_whom() {
    let prev = StreamReplicaStatus {
        used_bytes: Some(9),
        mount_path: Some("/p/ns/a".into()),
        ..Default::default()
    };
    let s = handed_off_status(
        &prev,
        &[managed(0, 4)],
        streams_summary([1]),
        "pool-b",
        Timestamp::UNIX_EPOCH,
    );
    assert_eq!(s.phase, Some(ReplicaPhase::Ready));
    assert_eq!(s.lag_seconds, Some(0));
    assert_eq!(s.used_bytes, Some(9));
    assert_eq!(s.conditions.len(), 1);
    let c = &s.conditions[0];
    assert_eq!((c.type_.as_str(), c.status.as_str()), ("HandedOff", "True"));
    assert_eq!(
        c.message,
        format!(
            "unmounted; final snapshot {} is ready for pool-b",
            managed_name(NOW)
        )
    );
}

#[test]
fn a_primarys_status_reports_its_space_quota_and_mounts() {
    let have = settled();
    let s = primary_status(
        &StreamReplicaStatus::default(),
        PrimaryReport {
            snapshots: &[managed(60, 1), managed(0, 2)],
            streams: streams_summary([3, 4]),
            props: &have,
            quota: GIB,
            mountpoint: "/p/ns/a",
            mounts: vec![],
            conditions: vec![],
        },
    );
    assert_eq!(s.phase, Some(ReplicaPhase::Ready));
    assert_eq!(s.used_bytes, Some(104_857_600));
    assert_eq!(s.snapshot_used_bytes, Some(0));
    assert_eq!(s.quota_bytes, Some(GIB));
    assert_eq!(s.snapshot_count, Some(2));
    assert_eq!(s.mount_path.as_deref(), Some("/p/ns/a"));
    assert_eq!(s.applied_snapshot.map(|a| a.guid), Some("2".into()));
    assert_eq!(s.streams.map(|x| (x.count, x.bytes)), Some((2, 7)));
}

#[test]
fn a_pass_ends_ready_or_in_error_keeping_what_the_copy_held() {
    let prev = StreamReplicaStatus {
        phase: Some(ReplicaPhase::Ready),
        used_bytes: Some(3),
        last_error: Some("old".into()),
        ..Default::default()
    };
    let now = Timestamp::UNIX_EPOCH;
    let ok = finish(
        &prev,
        Ok(StreamReplicaStatus {
            phase: Some(ReplicaPhase::Syncing),
            last_error: Some("old".into()),
            ..Default::default()
        }),
        Some(4),
        now,
    );
    assert_eq!(ok.observed_generation, Some(4));
    assert_eq!(ok.last_error, None);
    let ready = ok.conditions.last().expect("Ready");
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "False", "NotInSync")
    );
    assert!(unsettled(&ok), "a copy behind is looked at again soon");

    let err = finish(&prev, Err("zfs: busy".into()), Some(4), now);
    assert_eq!(err.phase, Some(ReplicaPhase::Error));
    assert_eq!(err.last_error.as_deref(), Some("zfs: busy"));
    assert_eq!(err.used_bytes, Some(3), "what it held stays");
    assert_eq!(err.conditions.len(), 1);
    assert_eq!(err.conditions[0].message, "zfs: busy");
    assert!(unsettled(&err));

    let ready = finish(
        &prev,
        Ok(StreamReplicaStatus {
            phase: Some(ReplicaPhase::Ready),
            ..Default::default()
        }),
        Some(4),
        now,
    );
    assert_eq!(ready.conditions[0].status, "True");
    assert!(!unsettled(&ready));
}

#[test]
fn a_copy_catches_up_from_the_newest_snapshot_both_hold() {
    let local = |guids: &[u64]| -> Vec<SnapshotInfo> {
        guids
            .iter()
            .map(|g| snap(&format!("s{g}"), *g, NOW + *g as i64))
            .collect()
    };
    for (what, have, source, want) in [
        ("source has nothing", vec![], vec![], LiveSync::UpToDate),
        (
            "new copy, one snapshot",
            vec![],
            vec![1],
            LiveSync::Full { to: 1 },
        ),
        (
            "new copy, history",
            vec![],
            vec![1, 2, 3],
            LiveSync::Full { to: 3 },
        ),
        ("caught up", vec![1, 2], vec![1, 2], LiveSync::UpToDate),
        (
            "behind",
            vec![1],
            vec![1, 2, 3],
            LiveSync::Incremental { from: 1, to: 3 },
        ),
        (
            "behind, the source pruned the oldest",
            vec![1, 2],
            vec![2, 3],
            LiveSync::Incremental { from: 2, to: 3 },
        ),
        (
            "a returning old primary's own writes",
            vec![1, 2, 9],
            vec![1, 2, 3],
            LiveSync::Diverged,
        ),
        (
            "nothing in common",
            vec![7, 8],
            vec![1, 2],
            LiveSync::Diverged,
        ),
        (
            "the source lost its newest",
            vec![1, 2, 3],
            vec![1, 2],
            LiveSync::Diverged,
        ),
        (
            "the source pruned this copy's newest (holds prevent it)",
            vec![1, 2],
            vec![1, 3],
            LiveSync::Diverged,
        ),
    ] {
        assert_eq!(plan_live_sync(&local(&have), &source), want, "{what}");
    }
}

#[test]
fn a_live_sync_is_one_verified_send_per_snapshot() {
    let steps = |sync: LiveSync, remote: &[u64]| sync.steps(remote);
    assert_eq!(steps(LiveSync::UpToDate, &[1, 2]), vec![]);
    assert_eq!(steps(LiveSync::Diverged, &[1, 2]), vec![]);
    assert_eq!(steps(LiveSync::Full { to: 3 }, &[1, 2, 3]), vec![(None, 3)]);
    assert_eq!(
        steps(LiveSync::Incremental { from: 1, to: 4 }, &[1, 2, 3, 4]),
        vec![(Some(1), 2), (Some(2), 3), (Some(3), 4)]
    );
    assert_eq!(
        steps(LiveSync::Incremental { from: 2, to: 3 }, &[1, 2, 3]),
        vec![(Some(2), 3)]
    );
}

#[test]
fn a_primary_keeps_every_snapshot_from_the_oldest_copy_base_on() {
    let snaps: Vec<SnapshotInfo> = (1..=5u64)
        .map(|g| snap(&format!("s{g}"), g, NOW + g as i64))
        .collect();
    assert_eq!(kept_for_copies(&snaps, &[]), Vec::<u64>::new());
    assert_eq!(kept_for_copies(&snaps, &[5]), vec![5]);
    assert_eq!(kept_for_copies(&snaps, &[4, 2]), vec![2, 3, 4, 5]);
    // A base the primary no longer has (a diverged copy) keeps nothing.
    assert_eq!(kept_for_copies(&snaps, &[99]), Vec::<u64>::new());
    assert_eq!(kept_for_copies(&snaps, &[99, 4]), vec![4, 5]);
}

#[test]
fn holds_follow_each_copys_base() {
    let with_holds = |name: &str, guid: u64, holds: Option<&str>| {
        let mut s = snap(name, guid, NOW + guid as i64);
        if let Some(h) = holds {
            s.properties.insert(PROP_HOLDS.into(), h.into());
        }
        s
    };
    let a = hold_tag("pool-a");
    let b = hold_tag("pool-b");
    assert_eq!(a, "projstore-copy-pool-a");
    // Nothing recorded: each base is held.
    let snaps = vec![with_holds("s1", 1, None), with_holds("s2", 2, Some("none"))];
    let plan = plan_holds(&snaps, &[(a.clone(), 1), (b.clone(), 2)]);
    assert_eq!(
        plan.hold,
        vec![("s1".into(), a.clone()), ("s2".into(), b.clone())]
    );
    assert!(plan.release.is_empty());
    // Copy a moved on to s2; copy b is gone: a's old hold and b's are released.
    let tags = holds_value(std::slice::from_ref(&a));
    let snaps = vec![
        with_holds("s1", 1, Some(&tags)),
        with_holds("s2", 2, Some(&holds_value(std::slice::from_ref(&b)))),
    ];
    let plan = plan_holds(&snaps, &[(a.clone(), 2)]);
    assert_eq!(plan.hold, vec![("s2".into(), a.clone())]);
    assert_eq!(
        plan.release,
        vec![("s1".into(), a.clone()), ("s2".into(), b.clone())]
    );
    // In step: nothing to do.
    let snaps = vec![with_holds(
        "s2",
        2,
        Some(&holds_value(&[a.clone(), b.clone()])),
    )];
    assert_eq!(
        plan_holds(&snaps, &[(a.clone(), 2), (b.clone(), 2)]),
        HoldPlan::default()
    );
    assert_eq!(holds_value(&[]), "none");
}

#[test]
fn a_copy_prunes_what_its_source_let_go_but_never_its_base_or_a_users_snapshot() {
    let mk = |name: &str, g: u64| snap(name, g, NOW + g as i64);
    let local = vec![
        mk(&managed_name(NOW - 300), 1),
        mk("before-upgrade", 2),
        mk(&managed_name(NOW - 200), 3),
        mk(&managed_name(NOW - 100), 4),
    ];
    // Older than anything the source holds: history a late-joined source never had.
    assert_eq!(mirror_prune(&local, &[3, 4]), Vec::<String>::new());
    // Between snapshots both hold: the source's retention let it go.
    assert_eq!(mirror_prune(&local, &[1, 4]), vec![managed_name(NOW - 200)]);
    assert_eq!(mirror_prune(&local, &[2, 4]), vec![managed_name(NOW - 200)]);
    assert_eq!(mirror_prune(&local, &[1, 2, 3, 4]), Vec::<String>::new());
    // Its newest not on the source (diverged): prune nothing.
    assert_eq!(mirror_prune(&local, &[3]), Vec::<String>::new());
    assert_eq!(mirror_prune(&[], &[3]), Vec::<String>::new());
}

//! Snapshot retention (DESIGN §5.2), the space guard, the schedule, and compaction (§5.3).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::BTreeSet;

use projstore_agent::retention::{
    RetentionPolicy, SnapshotFacts, is_managed, managed_name, retain, snapshot_due,
    snapshots_blocked,
};
use projstore_agent::streams::compaction::{Compaction, CompactionPolicy, decide};
use projstore_agent::streams::{Edge, Snap};
use proptest::prelude::*;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
// 2026-11-02 00:00:00 UTC, a Monday.
const MONDAY: i64 = 1_793_577_600;

fn policy(frequent: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> RetentionPolicy {
    RetentionPolicy {
        frequent,
        hourly,
        daily,
        weekly,
        monthly,
        frequent_secs: 15 * 60,
    }
}

fn managed(i: u64, time: i64) -> SnapshotFacts {
    SnapshotFacts {
        name: managed_name(time),
        guid: 1000 + i,
        createtxg: i + 1,
        time,
        held: false,
    }
}

fn kept_times(snaps: &[SnapshotFacts], p: &RetentionPolicy, now: i64) -> Vec<i64> {
    let r = retain(snaps, now, p);
    snaps
        .iter()
        .filter(|s| r.keep.contains(&s.guid))
        .map(|s| s.time - MONDAY)
        .collect()
}

#[test]
fn managed_names_round_trip() {
    assert_eq!(managed_name(MONDAY + 3723), "ps-20261102T010203Z");
    assert!(is_managed("ps-20261102T010203Z"));
    assert!(!is_managed("ps-yesterday"));
    assert!(!is_managed("before-upgrade"));
}

#[test]
fn hourly_keeps_the_newest_of_each_recent_hour() {
    // Every 15 minutes for 6 hours.
    let snaps: Vec<_> = (0..24)
        .map(|i| managed(i, MONDAY + i as i64 * 900))
        .collect();
    let now = MONDAY + 6 * HOUR;
    // Keep 3 hourly, nothing else: the last snapshot of hours 5, 4, 3.
    assert_eq!(
        kept_times(&snaps, &policy(0, 3, 0, 0, 0), now),
        [3 * HOUR + 2700, 4 * HOUR + 2700, 5 * HOUR + 2700]
    );
    // Frequent 2: the two newest 15-minute periods.
    assert_eq!(
        kept_times(&snaps, &policy(2, 0, 0, 0, 0), now),
        [5 * HOUR + 1800, 5 * HOUR + 2700]
    );
}

#[test]
fn daily_weekly_monthly_periods_are_utc_aligned() {
    // One snapshot at 23:00 and one at 01:00 each day for 40 days.
    let mut snaps = Vec::new();
    for d in 0..40 {
        snaps.push(managed(2 * d as u64, MONDAY + d * DAY + HOUR));
        snaps.push(managed(2 * d as u64 + 1, MONDAY + d * DAY + 23 * HOUR));
    }
    let now = MONDAY + 40 * DAY;
    let daily = kept_times(&snaps, &policy(0, 0, 2, 0, 0), now);
    assert_eq!(daily, [38 * DAY + 23 * HOUR, 39 * DAY + 23 * HOUR]);
    // Weeks start on Monday: the newest of weeks 5 (days 35..39) and 4 (days 28..34).
    let weekly = kept_times(&snaps, &policy(0, 0, 0, 2, 0), now);
    assert_eq!(weekly, [34 * DAY + 23 * HOUR, 39 * DAY + 23 * HOUR]);
    // November 2026 ends on day 28 (Nov 30 is day 28 counting from Nov 2).
    let monthly = kept_times(&snaps, &policy(0, 0, 0, 0, 2), now);
    assert_eq!(monthly, [28 * DAY + 23 * HOUR, 39 * DAY + 23 * HOUR]);
}

#[test]
fn user_snapshots_held_ones_and_the_newest_are_never_destroyed() {
    let mut snaps: Vec<_> = (0..10)
        .map(|i| managed(i, MONDAY + i as i64 * DAY))
        .collect();
    snaps[2].held = true;
    snaps.push(SnapshotFacts {
        name: "before-upgrade".into(),
        guid: 1,
        createtxg: 3,
        time: MONDAY,
        held: false,
    });
    let r = retain(&snaps, MONDAY + 20 * DAY, &policy(0, 0, 0, 0, 0));
    let kept: BTreeSet<u64> = r.keep.clone();
    assert!(kept.contains(&snaps[2].guid), "held");
    assert!(kept.contains(&1), "user snapshot");
    assert!(kept.contains(&snaps[9].guid), "newest");
    assert_eq!(r.destroy.len(), 8);
    assert!(!r.destroy.contains(&"before-upgrade".to_owned()));
}

#[test]
fn space_guard_and_schedule() {
    assert!(!snapshots_blocked(300, 100, 3));
    assert!(snapshots_blocked(301, 100, 3));
    assert!(!snapshots_blocked(u64::MAX, u64::MAX, 3), "no overflow");
    assert!(snapshot_due(None, 0, 900, Some(false)));
    assert!(!snapshot_due(Some(100), 500, 900, Some(true)));
    assert!(snapshot_due(Some(100), 1000, 900, Some(true)));
    assert!(
        !snapshot_due(Some(100), 1000, 900, Some(false)),
        "nothing written since"
    );
    assert!(
        snapshot_due(Some(100), 1000, 900, None),
        "cannot tell: take it"
    );
}

proptest! {
    #[test]
    fn retention_keeps_newest_and_held_and_is_idempotent(
        gaps in proptest::collection::vec(1i64..20_000, 1..60),
        held in proptest::collection::vec(any::<bool>(), 60),
        keep in (0u32..5, 0u32..5, 0u32..5, 0u32..3, 0u32..3),
    ) {
        let p = policy(keep.0, keep.1, keep.2, keep.3, keep.4);
        let mut t = MONDAY;
        let snaps: Vec<SnapshotFacts> = gaps.iter().enumerate().map(|(i, g)| {
            t += g;
            let mut s = managed(i as u64, t);
            s.held = held[i];
            s
        }).collect();
        let now = t + 1;
        let r = retain(&snaps, now, &p);
        prop_assert!(r.keep.contains(&snaps.last().unwrap().guid));
        for s in &snaps {
            if s.held { prop_assert!(r.keep.contains(&s.guid)); }
            prop_assert_eq!(r.keep.contains(&s.guid), !r.destroy.contains(&s.name));
        }
        // Same input, same answer; and applying it changes nothing the second time.
        prop_assert_eq!(&retain(&snaps, now, &p), &r);
        let left: Vec<SnapshotFacts> = snaps.iter().filter(|s| r.keep.contains(&s.guid)).cloned().collect();
        let again = retain(&left, now, &p);
        prop_assert!(again.destroy.is_empty(), "second pass destroys {:?}", again.destroy);
    }
}

fn snap(i: u64) -> Snap {
    Snap {
        name: format!("s{i}"),
        guid: i,
        createtxg: i,
        time: i as i64,
    }
}

fn chain(sizes: &[u64]) -> Vec<Edge> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &bytes)| Edge {
            id: format!("e{i}"),
            from: (i > 0).then(|| snap(i as u64)),
            to: snap(i as u64 + 1),
            bytes,
        })
        .collect()
}

#[test]
fn compaction_leaves_short_healthy_chains_alone() {
    let p = CompactionPolicy::default();
    assert_eq!(
        decide(&chain(&[1 << 30]), |_| true, &p),
        Compaction::Nothing
    );
    assert_eq!(
        decide(&chain(&[1 << 30, 1 << 20, 1 << 20]), |_| true, &p),
        Compaction::Nothing
    );
}

#[test]
fn compaction_merges_a_run_of_tiny_increments() {
    let p = CompactionPolicy::default();
    let mut sizes = vec![1 << 30, 1 << 20];
    sizes.extend([100; 8]);
    // The run starts at e2, whose `from` is snapshot 2.
    assert!(matches!(
        decide(&chain(&sizes), |_| true, &p),
        Compaction::Incremental { from_guid: 2, .. }
    ));
    // If that snapshot is gone from the primary, the chain is short: nothing to do.
    assert_eq!(decide(&chain(&sizes), |g| g != 2, &p), Compaction::Nothing);
}

#[test]
fn compaction_shortens_long_chains() {
    let p = CompactionPolicy::default();
    let sizes = vec![1 << 20; 31];
    // The earliest snapshot still on the primary is the new incremental's base.
    assert!(matches!(
        decide(&chain(&sizes), |g| g >= 5, &p),
        Compaction::Incremental { from_guid: 5, .. }
    ));
    // None left but the target: a fresh full.
    assert!(matches!(
        decide(&chain(&sizes), |g| g == 31, &p),
        Compaction::Full { .. }
    ));
}

#[test]
fn a_newer_user_snapshot_never_costs_a_period_its_managed_snapshot() {
    // A managed snapshot, then the user's own one a minute later in the same period: both
    // stay (else every pass would find no managed snapshot and take a new one).
    let snaps = vec![
        managed(1, MONDAY),
        SnapshotFacts {
            name: "before-upgrade".into(),
            guid: 7,
            createtxg: 9,
            time: MONDAY + 60,
            held: false,
        },
    ];
    let r = retain(&snaps, MONDAY + 120, &policy(1, 1, 1, 1, 1));
    assert!(r.destroy.is_empty(), "{:?}", r.destroy);
}

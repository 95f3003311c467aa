//! Which snapshots to keep (DESIGN §5.2), when to take the next one, and the snapshot space
//! guard. Pure functions over plain data; time is passed in.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};

/// Prefix of the snapshots the agent manages; all others are the user's and never pruned.
pub const MANAGED_PREFIX: &str = "ps-";

/// The name of a managed snapshot taken at `unix` seconds: `ps-20261121T140000Z`.
pub fn managed_name(unix: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp(unix, 0).unwrap_or_default();
    format!("{MANAGED_PREFIX}{}", t.format("%Y%m%dT%H%M%SZ"))
}

/// Whether `name` is a snapshot the agent manages (and so may prune).
pub fn is_managed(name: &str) -> bool {
    name.strip_prefix(MANAGED_PREFIX)
        .is_some_and(|rest| chrono::NaiveDateTime::parse_from_str(rest, "%Y%m%dT%H%M%SZ").is_ok())
}

/// What retention needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub time: i64,
    /// Still needed by a replica or an undelivered stream (or held in ZFS).
    pub held: bool,
}

/// How many of each class to keep (the Project's `spec.snapshots.keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub frequent: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    /// Length of a "frequent" period: the snapshot interval, in seconds.
    pub frequent_secs: i64,
}

/// The outcome: guids to keep, and names of managed snapshots to destroy (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep: BTreeSet<u64>,
    pub destroy: Vec<String>,
}

// 1970-01-01 was a Thursday; weeks start on Monday 1970-01-05 (UTC).
const WEEK_OFFSET: i64 = 4 * 86_400;

fn period(class: usize, t: i64, frequent_secs: i64) -> i64 {
    match class {
        0 => t.div_euclid(frequent_secs.max(1)),
        1 => t.div_euclid(3_600),
        2 => t.div_euclid(86_400),
        3 => (t - WEEK_OFFSET).div_euclid(7 * 86_400),
        _ => {
            let d = DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
            i64::from(d.year()) * 12 + i64::from(d.month0())
        }
    }
}

/// For each class, keeps the newest snapshot of each of the N most recent UTC-aligned periods
/// that contain one; keeps the union, the newest snapshot, every held or user snapshot, and
/// anything dated after `now` (a clock we cannot trust). Destroys the other managed ones.
pub fn retain(snaps: &[SnapshotFacts], now: i64, policy: &RetentionPolicy) -> Retention {
    let mut order: Vec<&SnapshotFacts> = snaps.iter().collect();
    order.sort_by_key(|s| (s.createtxg, s.guid));
    let mut keep = BTreeSet::new();
    if let Some(newest) = order.last() {
        keep.insert(newest.guid);
    }
    for s in &order {
        if s.held || !is_managed(&s.name) || s.time > now {
            keep.insert(s.guid);
        }
    }
    let counts = [
        policy.frequent,
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
    ];
    for (class, &n) in counts.iter().enumerate() {
        let mut periods = BTreeSet::new();
        // Newest first: the first snapshot met in a period is that period's newest. Only
        // managed snapshots stand for a period: the user's are kept anyway, and must not
        // leave a period without a managed one (or every pass would take a new one).
        for s in order.iter().rev().filter(|s| is_managed(&s.name)) {
            if periods.len() >= n as usize {
                break;
            }
            if periods.insert(period(class, s.time, policy.frequent_secs)) {
                keep.insert(s.guid);
            }
        }
    }
    let destroy = order
        .iter()
        .filter(|s| !keep.contains(&s.guid))
        .map(|s| s.name.clone())
        .collect();
    Retention { keep, destroy }
}

/// Whether a scheduled snapshot is due: `interval` has passed since the last one and
/// something was written since (`written` is None where ZFS cannot tell: then assume yes).
pub fn snapshot_due(
    last: Option<i64>,
    now: i64,
    interval_secs: i64,
    written: Option<bool>,
) -> bool {
    match last {
        None => true,
        Some(t) => now - t >= interval_secs && written.unwrap_or(true),
    }
}

/// The space guard: no new snapshots while snapshot space exceeds `ratio × quota`.
pub fn snapshots_blocked(used_by_snapshots: u64, quota_bytes: u64, max_ratio: u32) -> bool {
    used_by_snapshots > quota_bytes.saturating_mul(u64::from(max_ratio))
}

//! What a replica pass decides, as pure functions over what it read: the rest of the pass
//! only reads ZFS, the store and the API, and carries these decisions out. Each function is
//! table-tested (`node-agent/tests/replica_plans.rs`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use projstore_api::{
    MountStatus, ReplicaPhase, SnapshotPolicy, SnapshotRef, StreamReplicaStatus, StreamsSummary,
};

use super::ReplicaError;
use crate::layout::{PROP_EPOCH, PROP_ROLE};
use crate::retention::{
    RetentionPolicy, is_managed, managed_name, retain, snapshot_due, snapshots_blocked,
};
use crate::zfs::SnapshotInfo;

/// User property on a primary's dataset: the last `projstore.io/snapshot-now` value acted on.
pub const PROP_SNAPSHOT_NOW: &str = "projstore.io:snapshot-now";

/// The properties a primary pass reads of its dataset, in one `zfs get`.
pub const PRIMARY_PROPS: &[&str] = &[
    PROP_EPOCH,
    PROP_ROLE,
    PROP_SNAPSHOT_NOW,
    "readonly",
    "setuid",
    "devices",
    "mountpoint",
    "mounted",
    "refquota",
    "referenced",
    "usedbysnapshots",
];

/// A condition to report, before it meets the previous ones (for its transition time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }

    /// The condition, keeping the transition time of `prev`'s when its status is unchanged.
    pub fn condition(&self, prev: &[Condition], now: Timestamp) -> Condition {
        projstore_api::units::condition(
            prev,
            self.type_,
            self.ok,
            self.reason,
            self.message.clone(),
            now,
            None,
        )
    }
}

/// Conditions from verdicts, in order.
pub fn conditions(verdicts: &[Verdict], prev: &[Condition], now: Timestamp) -> Vec<Condition> {
    verdicts.iter().map(|v| v.condition(prev, now)).collect()
}

/// Fencing: a dataset written under a newer epoch than the replica's is never served.
pub fn fenced(props: &BTreeMap<String, String>, ours: u64) -> Option<ReplicaError> {
    let seen: u64 = props
        .get(PROP_EPOCH)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    (seen > ours).then_some(ReplicaError::Fenced { seen, ours })
}

/// What a live primary's pass read, before it changes anything.
#[derive(Debug, Clone)]
pub struct PrimaryFacts<'a> {
    /// The replica's epoch.
    pub epoch: u64,
    /// [`PRIMARY_PROPS`] as read.
    pub props: &'a BTreeMap<String, String>,
    /// Where the project is mounted on this node.
    pub mountpoint: &'a str,
    /// The Project's quota in bytes.
    pub quota: u64,
}

/// What a live primary's pass does to its dataset.
#[derive(Debug, PartialEq)]
pub struct PrimaryPlan {
    /// Not served: written under a newer epoch (writes are stopped, the pass fails with it).
    pub fenced: Option<ReplicaError>,
    /// Properties to set, in order (only those that differ).
    pub set: Vec<(&'static str, String)>,
    /// The dataset is to be mounted.
    pub mount: bool,
    /// `refquota` to set.
    pub quota: Option<u64>,
    /// `QuotaApplied`, when the quota is refused (below what is in use).
    pub quota_refused: Option<Verdict>,
}

/// What the snapshot step of a primary's pass reads (after the dataset is served).
#[derive(Debug, Clone)]
pub struct SnapshotFacts<'a> {
    /// [`PRIMARY_PROPS`] as read.
    pub props: &'a BTreeMap<String, String>,
    /// The Project's quota in bytes.
    pub quota: u64,
    pub policy: &'a SnapshotPolicy,
    /// The dataset's snapshots, oldest first.
    pub snapshots: &'a [SnapshotInfo],
    /// When a scheduled check last found nothing written (no snapshot was taken then).
    pub quiet_since: Option<i64>,
    /// The Project's `projstore.io/snapshot-now` annotation.
    pub snapshot_now: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// The snapshot step: whether snapshots are blocked by their space, and one to take now.
#[derive(Debug, PartialEq)]
pub struct SnapshotPlan {
    /// `SnapshotsBlocked`, true or false.
    pub blocked: Verdict,
    pub take: Option<SnapshotStep>,
    /// A snapshot was asked for, but this second's name is taken (a snapshot was just
    /// taken): the pass looks again in a second instead of at the next scheduled one.
    pub again_soon: bool,
}

/// A snapshot to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStep {
    /// Taken even when nothing was written since the newest (asked for on demand).
    pub always: bool,
    /// The `snapshot-now` value to record as handled.
    pub mark: Option<String>,
}

/// The numeric property `k` as read (0 when missing).
pub fn num(props: &BTreeMap<String, String>, k: &str) -> u64 {
    props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The last scheduled check of a primary: its newest managed snapshot, or a check that found
/// nothing written since.
pub fn last_check(snapshots: &[SnapshotInfo], quiet_since: Option<i64>) -> Option<i64> {
    snapshots
        .iter()
        .filter(|s| is_managed(&s.name))
        .map(|s| s.creation)
        .chain(quiet_since)
        .max()
}

/// Seconds between scheduled snapshots.
pub fn interval_secs(policy: &SnapshotPolicy) -> i64 {
    i64::from(policy.interval_minutes) * 60
}

pub fn plan_primary(f: &PrimaryFacts<'_>) -> PrimaryPlan {
    let have = f.props;
    let epoch = f.epoch.to_string();
    let set = [
        (PROP_EPOCH, epoch.as_str()),
        (PROP_ROLE, "primary"),
        ("readonly", "off"),
        ("setuid", "off"),
        ("devices", "off"),
        ("mountpoint", f.mountpoint),
    ]
    .into_iter()
    .filter(|(prop, want)| have.get(*prop).map(String::as_str) != Some(want))
    .map(|(prop, want)| (prop, want.to_owned()))
    .collect();
    let (mut quota, mut quota_refused) = (None, None);
    if num(have, "refquota") != f.quota {
        let used = num(have, "referenced");
        if f.quota < used {
            quota_refused = Some(Verdict::new(
                "QuotaApplied",
                false,
                "QuotaBelowUsage",
                format!(
                    "quota {} is below the {used} bytes in use: not applied",
                    f.quota
                ),
            ));
        } else {
            quota = Some(f.quota);
        }
    }
    PrimaryPlan {
        fenced: fenced(have, f.epoch),
        set,
        mount: have.get("mounted").map(String::as_str) != Some("yes"),
        quota,
        quota_refused,
    }
}

/// Snapshots on schedule (only when something was written, decided when taking it), on
/// demand (a new `snapshot-now` value), never while their space exceeds the guard, and at
/// most one per second.
pub fn plan_snapshot(f: &SnapshotFacts<'_>) -> SnapshotPlan {
    let have = f.props;
    let snap_used = num(have, "usedbysnapshots");
    let blocked = snapshots_blocked(snap_used, f.quota, f.policy.max_space_ratio);
    let verdict = Verdict::new(
        "SnapshotsBlocked",
        blocked,
        if blocked {
            "SnapshotSpaceExceeded"
        } else {
            "WithinLimit"
        },
        if blocked {
            format!(
                "snapshots use {snap_used} bytes, more than {}x the quota: no new snapshots until old ones expire or the quota grows",
                f.policy.max_space_ratio
            )
        } else {
            String::new()
        },
    );
    let handled = have
        .get(PROP_SNAPSHOT_NOW)
        .map(String::as_str)
        .unwrap_or_default();
    let on_demand = f.snapshot_now.is_some_and(|a| a != handled);
    let scheduled = snapshot_due(
        last_check(f.snapshots, f.quiet_since),
        f.now,
        interval_secs(f.policy),
        None,
    );
    let name_free = !f.snapshots.iter().any(|s| s.name == managed_name(f.now));
    SnapshotPlan {
        blocked: verdict,
        take: ((on_demand || scheduled) && !blocked && name_free).then(|| SnapshotStep {
            always: on_demand,
            mark: f.snapshot_now.map(str::to_owned),
        }),
        again_soon: on_demand && !blocked && !name_free,
    }
}

/// The `Mounted` verdict of a primary with folder mounts: every mount made, or which not.
pub fn mounts_verdict(mounts: &[MountStatus]) -> Verdict {
    let failed: Vec<String> = mounts
        .iter()
        .filter(|m| m.phase != "Mounted")
        .map(|m| {
            format!(
                "{}: {}",
                m.mount_path,
                m.message.clone().unwrap_or_default()
            )
        })
        .collect();
    let ok = failed.is_empty();
    Verdict::new(
        "Mounted",
        ok,
        if ok { "AllMounted" } else { "MountFailed" },
        failed.join("; "),
    )
}

/// Managed snapshots retention destroys now. It never destroys a base some copy's next
/// incremental starts from (`keep`: each copy's newest applied snapshot), nor user snapshots.
pub fn to_prune(
    snapshots: &[SnapshotInfo],
    keep: &[u64],
    policy: &SnapshotPolicy,
    now: i64,
) -> Vec<String> {
    let facts: Vec<crate::retention::SnapshotFacts> = snapshots
        .iter()
        .map(|s| crate::retention::SnapshotFacts {
            name: s.name.clone(),
            guid: s.guid,
            createtxg: s.createtxg,
            time: s.creation,
            held: keep.contains(&s.guid),
        })
        .collect();
    let k = &policy.keep;
    let rp = RetentionPolicy {
        frequent: k.frequent,
        hourly: k.hourly,
        daily: k.daily,
        weekly: k.weekly,
        monthly: k.monthly,
        frequent_secs: interval_secs(policy),
    };
    retain(&facts, now, &rp).destroy
}

/// When the primary has work of its own next: its next scheduled check (at least a second,
/// at most an interval away).
pub fn next_due(last_check: Option<i64>, interval: i64, now: i64) -> std::time::Duration {
    let next = last_check.map_or(0, |t| t + interval - now);
    std::time::Duration::from_secs(next.clamp(1, interval.max(1)).unsigned_abs())
}

/// A snapshot as status shows it.
pub fn snapshot_ref(s: &SnapshotInfo) -> SnapshotRef {
    let t = Timestamp::from_second(s.creation).unwrap_or(Timestamp::UNIX_EPOCH);
    SnapshotRef {
        name: s.name.clone(),
        guid: s.guid.to_string(),
        createtxg: s.createtxg,
        time: Some(Time(t)),
    }
}

/// The stream files held for a project: how many, how many bytes.
pub fn streams_summary(bytes: impl IntoIterator<Item = u64>) -> StreamsSummary {
    let (count, bytes) = bytes.into_iter().fold((0u32, 0u64), |(n, b), x| {
        (n.saturating_add(1), b.saturating_add(x))
    });
    StreamsSummary { count, bytes }
}

fn count(snapshots: &[SnapshotInfo]) -> Option<u32> {
    Some(u32::try_from(snapshots.len()).unwrap_or(u32::MAX))
}

/// What a live primary reports.
pub struct PrimaryReport<'a> {
    pub snapshots: &'a [SnapshotInfo],
    pub streams: StreamsSummary,
    pub props: &'a BTreeMap<String, String>,
    pub quota: u64,
    pub mountpoint: &'a str,
    pub mounts: Vec<MountStatus>,
    pub conditions: Vec<Condition>,
}

/// A live primary's status. Fields it does not speak of (`transfer`) stay as they were.
pub fn primary_status(prev: &StreamReplicaStatus, r: PrimaryReport<'_>) -> StreamReplicaStatus {
    StreamReplicaStatus {
        phase: Some(ReplicaPhase::Ready),
        applied_snapshot: r.snapshots.last().map(snapshot_ref),
        streams: Some(r.streams),
        lag_seconds: Some(0),
        used_bytes: Some(num(r.props, "referenced")),
        snapshot_used_bytes: Some(num(r.props, "usedbysnapshots")),
        quota_bytes: Some(r.quota),
        snapshot_count: count(r.snapshots),
        mount_path: Some(r.mountpoint.to_owned()),
        mounts: r.mounts,
        conditions: r.conditions,
        ..prev.clone()
    }
}

/// A primary handing off to `to` (a move): writes stopped, final snapshot taken.
pub fn handed_off_status(
    prev: &StreamReplicaStatus,
    snapshots: &[SnapshotInfo],
    streams: StreamsSummary,
    to: &str,
    now: Timestamp,
) -> StreamReplicaStatus {
    let newest = snapshots
        .last()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    let handed = Verdict::new(
        "HandedOff",
        true,
        "WritesStopped",
        format!("unmounted; final snapshot {newest} is ready for {to}"),
    );
    StreamReplicaStatus {
        phase: Some(ReplicaPhase::Ready),
        applied_snapshot: snapshots.last().map(snapshot_ref),
        streams: Some(streams),
        lag_seconds: Some(0),
        snapshot_count: count(snapshots),
        conditions: vec![handed.condition(&prev.conditions, now)],
        ..prev.clone()
    }
}

/// How far a secondary is behind: seconds between the primary's newest snapshot and its
/// own newest (a copy holding nothing of a primary that has snapshots is far behind).
pub fn lag(newest_remote: Option<i64>, newest_local: Option<i64>) -> i64 {
    match (newest_remote, newest_local) {
        (Some(r), Some(l)) => (r - l).max(0),
        (Some(_), None) => i64::MAX / 2,
        _ => 0,
    }
}

/// A live secondary's status: Ready when it holds the primary's newest snapshot, else
/// Syncing. No transfer runs any more.
pub fn secondary_status(
    prev: &StreamReplicaStatus,
    newest_remote: Option<i64>,
    snapshots: &[SnapshotInfo],
    streams: StreamsSummary,
    conditions: Vec<Condition>,
) -> StreamReplicaStatus {
    let lag = lag(newest_remote, snapshots.last().map(|s| s.creation));
    StreamReplicaStatus {
        transfer: None,
        phase: Some(if lag == 0 {
            ReplicaPhase::Ready
        } else {
            ReplicaPhase::Syncing
        }),
        applied_snapshot: snapshots.last().map(snapshot_ref),
        streams: Some(streams),
        lag_seconds: Some(lag.min(i64::from(u32::MAX))),
        snapshot_count: count(snapshots),
        conditions,
        ..prev.clone()
    }
}

/// `Diverged`, naming the forks kept of a project (children of its namespace under
/// `forks/`, named `<name>-e<epoch>` or `<name>-e<epoch>-<n>`); none when there are none.
pub fn forks_verdict(children: &[String], prefix: &str) -> Option<Verdict> {
    let forks: Vec<&str> = children
        .iter()
        .map(String::as_str)
        .filter(|d| {
            d.strip_prefix(prefix).is_some_and(|rest| {
                rest.split('-')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect();
    (!forks.is_empty()).then(|| {
        Verdict::new(
            "Diverged",
            true,
            "ForkPreserved",
            format!(
                "writes the primary lacked are preserved at {}",
                forks.join(", ")
            ),
        )
    })
}

/// Where a trashed replica's data goes, and until when it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashPlan {
    /// `yyyymmddThhmmssZ` of its `trashed-at`: the suffix of its trash names.
    pub stamp: String,
    /// When it may be purged (RFC 3339): `trashed-at` plus `retain-days`.
    pub purge_after: String,
}

pub fn plan_trash(annotations: &BTreeMap<String, String>) -> Result<TrashPlan, ReplicaError> {
    use projstore_api::contract;
    let at = contract::trashed_at(annotations)?
        .ok_or_else(|| format!("no {} annotation", contract::TRASHED_AT))?;
    let days = contract::retain_days(annotations);
    Ok(TrashPlan {
        stamp: at.format("%Y%m%dT%H%M%SZ").to_string(),
        purge_after: contract::trashed_at_value(at + chrono::Duration::days(days)),
    })
}

/// A trashed replica's status: what it held stays as it was.
pub fn trashed_status(prev: &StreamReplicaStatus) -> StreamReplicaStatus {
    StreamReplicaStatus {
        phase: Some(ReplicaPhase::Trashed),
        conditions: Vec::new(),
        ..prev.clone()
    }
}

/// An archived (Closed) replica's status: its stored streams.
pub fn archived_status(prev: &StreamReplicaStatus, streams: StreamsSummary) -> StreamReplicaStatus {
    StreamReplicaStatus {
        phase: Some(ReplicaPhase::Archived),
        streams: Some(streams),
        conditions: Vec::new(),
        ..prev.clone()
    }
}

/// The status a pass ends with: its outcome, the spec generation it saw, and `Ready` (true
/// only in phase Ready). A failed pass keeps what the replica held and says why.
pub fn finish(
    prev: &StreamReplicaStatus,
    outcome: Result<StreamReplicaStatus, String>,
    generation: Option<i64>,
    now: Timestamp,
) -> StreamReplicaStatus {
    match outcome {
        Ok(mut status) => {
            let ready = status.phase == Some(ReplicaPhase::Ready);
            let reason = if ready { "Serving" } else { "NotInSync" };
            status.observed_generation = generation;
            status
                .conditions
                .push(Verdict::new("Ready", ready, reason, "").condition(&prev.conditions, now));
            status.last_error = None;
            status
        }
        Err(e) => StreamReplicaStatus {
            phase: Some(ReplicaPhase::Error),
            observed_generation: generation,
            conditions: vec![
                Verdict::new("Ready", false, "Error", e.clone()).condition(&prev.conditions, now),
            ],
            last_error: Some(e),
            ..prev.clone()
        },
    }
}

/// Whether a status asks for another pass soon: an error, a copy behind, a mount not made.
pub fn unsettled(status: &StreamReplicaStatus) -> bool {
    matches!(
        status.phase,
        Some(ReplicaPhase::Error | ReplicaPhase::Syncing)
    ) || status
        .conditions
        .iter()
        .any(|c| c.type_ == "Mounted" && c.status == "False")
}

/// How a copy catches up with its source over a live send (DESIGN §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSync {
    /// It holds the source's newest snapshot (or the source has none).
    UpToDate,
    /// It holds nothing: a full send of the source's newest snapshot (always kept there, so
    /// retention cannot pull it away mid-transfer; older history stays on the source).
    Full { to: u64 },
    /// From the newest snapshot both hold to the source's newest, one verified send per
    /// snapshot between (a compound stream would commit them before it is verified).
    Incremental { from: u64, to: u64 },
    /// It holds snapshots the source lacks after the newest in common, or none in common: its
    /// history went another way (kept under `forks/`, then synced afresh).
    Diverged,
}

/// What a copy holding `local` (oldest first) does to hold what a source holding `remote`
/// (oldest first, by GUID) holds.
pub fn plan_live_sync(local: &[SnapshotInfo], remote: &[u64]) -> LiveSync {
    let Some(&newest) = remote.last() else {
        return LiveSync::UpToDate;
    };
    if local.is_empty() {
        return LiveSync::Full { to: newest };
    }
    let Some(at) = local.iter().rposition(|s| remote.contains(&s.guid)) else {
        return LiveSync::Diverged;
    };
    if at + 1 != local.len() {
        // Snapshots after the newest in common: its own writes, or one the source pruned
        // (the source keeps every snapshot from each copy's base on, so not that). A receive
        // can only continue from its newest snapshot.
        return LiveSync::Diverged;
    }
    let common = local[at].guid;
    if common == newest {
        LiveSync::UpToDate
    } else {
        LiveSync::Incremental {
            from: common,
            to: newest,
        }
    }
}

impl LiveSync {
    /// Whether a source other than the primary may serve this plan: only along the same
    /// history (a diverged copy is the primary's to judge, never another copy's).
    pub fn continues_history(&self) -> bool {
        !matches!(self, Self::Diverged)
    }

    /// The verified sends that carry it out against a source holding `remote` (oldest first,
    /// by GUID), in order: `(from, to)`, `from` None for the full send. One per snapshot: a
    /// cut-off transfer loses at most the snapshot in flight.
    pub fn steps(&self, remote: &[u64]) -> Vec<(Option<u64>, u64)> {
        match *self {
            LiveSync::UpToDate | LiveSync::Diverged => Vec::new(),
            LiveSync::Full { to } => vec![(None, to)],
            LiveSync::Incremental { from, to } => {
                let mut steps = Vec::new();
                let mut prev = from;
                let after = remote.iter().position(|&g| g == from).map_or(0, |i| i + 1);
                for &g in &remote[after.min(remote.len())..] {
                    steps.push((Some(prev), g));
                    prev = g;
                    if g == to {
                        break;
                    }
                }
                steps
            }
        }
    }
}

/// The snapshots a primary keeps for its copies whatever its retention says: every snapshot
/// from the oldest copy's base on (`bases`: each copy's newest applied snapshot, by GUID), so
/// a copy part-way through catching up never finds the snapshot it stands on pruned. A base
/// the primary no longer holds counts for nothing.
pub fn kept_for_copies(snapshots: &[SnapshotInfo], bases: &[u64]) -> Vec<u64> {
    let oldest = snapshots.iter().position(|s| bases.contains(&s.guid));
    oldest
        .map(|at| snapshots[at..].iter().map(|s| s.guid).collect())
        .unwrap_or_default()
}

/// What a copy holding `local` (oldest first) prunes once in step with a source holding
/// `remote` (by GUID): the managed snapshots the source's retention let go between the oldest
/// snapshot they share and the copy's newest. Never its newest (the base of its next receive),
/// never a user's snapshot, and never history older than anything the source holds (a source
/// that joined late — a new primary after a move or a failover — never had it; it did not
/// prune it).
pub fn mirror_prune(local: &[SnapshotInfo], remote: &[u64]) -> Vec<String> {
    let Some((newest, _)) = local.split_last() else {
        return Vec::new();
    };
    if !remote.contains(&newest.guid) {
        return Vec::new();
    }
    let Some(first) = local.iter().position(|s| remote.contains(&s.guid)) else {
        return Vec::new();
    };
    local[first..local.len() - 1]
        .iter()
        .filter(|s| !remote.contains(&s.guid) && crate::retention::is_managed(&s.name))
        .map(|s| s.name.clone())
        .collect()
}

/// User property of a snapshot on a primary: the hold tags placed on it (comma-separated;
/// `none`), written before a hold is placed and after it is released, so a hold is never
/// forgotten even where ZFS cannot list them (zfs-fuse has no `zfs holds`).
pub const PROP_HOLDS: &str = "projstore.io:holds";

/// The hold tag of the copy on StoragePool `pool`.
pub fn hold_tag(pool: &str) -> String {
    format!("projstore-copy-{pool}")
}

/// Hold tags recorded on a snapshot.
pub fn recorded_holds(s: &SnapshotInfo) -> Vec<String> {
    s.properties
        .get(PROP_HOLDS)
        .map(|v| {
            v.split(',')
                .filter(|t| !t.is_empty() && *t != "none" && *t != "-")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of [`PROP_HOLDS`] for `tags`.
pub fn holds_value(tags: &[String]) -> String {
    if tags.is_empty() {
        "none".into()
    } else {
        tags.join(",")
    }
}

/// Holds to place and release on a primary: each copy's base (`bases`: its tag and the GUID
/// of its newest applied snapshot) held with the copy's tag; every other recorded hold
/// released — the copy moved past that snapshot, or is gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HoldPlan {
    /// `(snapshot name, tag)`.
    pub hold: Vec<(String, String)>,
    pub release: Vec<(String, String)>,
}

pub fn plan_holds(snapshots: &[SnapshotInfo], bases: &[(String, u64)]) -> HoldPlan {
    let mut plan = HoldPlan::default();
    for s in snapshots {
        let recorded = recorded_holds(s);
        let wanted: Vec<&String> = bases
            .iter()
            .filter(|(_, g)| *g == s.guid)
            .map(|(t, _)| t)
            .collect();
        for t in &wanted {
            if !recorded.contains(t) {
                plan.hold.push((s.name.clone(), (*t).clone()));
            }
        }
        for t in recorded {
            if !wanted.contains(&&t) {
                plan.release.push((s.name.clone(), t));
            }
        }
    }
    plan
}

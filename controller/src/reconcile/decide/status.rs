//! The status a Project shows: its phase, the copies, the primary's figures, conditions that
//! keep their transition times while unchanged, and the Events for transitions users must see.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use projstore_api::{
    BackupPhase, BackupStatus, MountStatus, PrimaryStatus, Project, ProjectPhase, ProjectState,
    ProjectStatus, ReplicaPhase, ReplicaRole, ReplicaSummary, StreamReplica,
};

use super::{Change, Ctx, applied_key, phase};
use crate::view::{condition, human_bytes, is_true};

/// The status the Project should show; `forced` overrides the phase read from the replicas.
pub(super) fn status(
    cx: &Ctx<'_>,
    prev: &ProjectStatus,
    forced: Option<ProjectPhase>,
    restored: Option<String>,
    notes: Vec<String>,
) -> ProjectStatus {
    let inp = cx.inp;
    let p = inp.project;
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
    let phase_now = forced.unwrap_or_else(|| project_phase(cx, primary, ready));
    let backup = restore_progress(p, primary, prev).or_else(|| backup_of(inp.replicas));
    let conditions = conditions(
        cx,
        prev,
        (primary, backup.as_ref()),
        phase_now,
        &notes.join("; "),
    );
    ProjectStatus {
        observed_generation: p.metadata.generation,
        phase: Some(phase_now),
        primary: primary.map(|r| PrimaryStatus {
            pool: r.spec.pool.clone(),
            node: r.spec.node.clone(),
            epoch: r.spec.epoch,
            mount_path: r.status.as_ref().and_then(|s| s.mount_path.clone()),
        }),
        replicas: summaries(inp.replicas, primary),
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
        restored_from: restored
            .or_else(|| pst.restored_from.clone())
            .or_else(|| prev.restored_from.clone()),
        // What no copy reports any more stays, but not as running.
        backup: backup.or_else(|| {
            prev.backup
                .clone()
                .filter(|b| b.phase != Some(BackupPhase::Running))
        }),
        conditions,
    }
}

/// While a new primary is built from a backup: how far the download has come (the primary's
/// `status.transfer`), as a running `status.backup`.
fn restore_progress(
    p: &Project,
    primary: Option<&StreamReplica>,
    prev: &ProjectStatus,
) -> Option<BackupStatus> {
    let from = p.spec.restore_from.as_ref()?;
    let st = primary?.status.as_ref()?;
    if prev.restored_from.is_some() || st.restored_from.is_some() {
        return None;
    }
    let t = st.transfer.as_ref()?;
    Some(BackupStatus {
        phase: Some(BackupPhase::Running),
        message: Some(format!(
            "restoring from {}:{}/{}: {} of {} bytes",
            from.target, from.namespace, from.name, t.bytes_done, t.bytes_total
        )),
        bytes_done: Some(t.bytes_done),
        bytes_total: Some(t.bytes_total),
        ..prev.backup.clone().unwrap_or_default()
    })
}

/// The backups as the copy that uploads them reports: the newest attempt among the copies.
fn backup_of(replicas: &[StreamReplica]) -> Option<BackupStatus> {
    replicas
        .iter()
        .filter_map(|r| r.status.as_ref()?.backup.clone())
        .max_by_key(|b| b.attempted_at.as_ref().map(|t| t.0))
}

/// `BackedUp` and `BackupVerified` from the backup status (when the project is backed up).
fn backup_conditions(
    b: Option<&BackupStatus>,
    prev: &[Condition],
) -> Vec<(&'static str, bool, &'static str, String)> {
    let Some(b) = b else {
        return Vec::new();
    };
    let mut out = vec![match b.phase {
        // While one runs, the condition says how the last one went.
        Some(BackupPhase::Running) => match prev.iter().find(|c| c.type_ == "BackedUp") {
            Some(c) => (
                "BackedUp",
                c.status == "True",
                match c.reason.as_str() {
                    "Uploaded" => "Uploaded",
                    "BackupFailed" => "BackupFailed",
                    _ => "Pending",
                },
                c.message.clone(),
            ),
            None => (
                "BackedUp",
                false,
                "Pending",
                "the first backup is running".to_owned(),
            ),
        },
        Some(BackupPhase::Succeeded) => (
            "BackedUp",
            true,
            "Uploaded",
            b.message.clone().unwrap_or_default(),
        ),
        Some(BackupPhase::Failed) => (
            "BackedUp",
            false,
            "BackupFailed",
            b.message.clone().unwrap_or_default(),
        ),
        _ => ("BackedUp", false, "Pending", "no backup yet".to_owned()),
    }];
    if let Some(ok) = b.verified {
        out.push((
            "BackupVerified",
            ok,
            if ok { "Verified" } else { "VerificationFailed" },
            b.verify_message.clone().unwrap_or_default(),
        ));
    }
    out
}

/// The phase the replicas' state adds up to (`ready`: copies Ready and not lost).
fn project_phase(cx: &Ctx<'_>, primary: Option<&StreamReplica>, ready: usize) -> ProjectPhase {
    let inp = cx.inp;
    let replicas = inp.replicas;
    if inp.project.spec.state == ProjectState::Closed {
        let archived = replicas
            .iter()
            .all(|r| phase(r) == Some(ReplicaPhase::Archived));
        if archived && !replicas.is_empty() {
            ProjectPhase::Closed
        } else {
            ProjectPhase::Closing
        }
    } else if primary.is_none() {
        ProjectPhase::Placing
    } else if replicas
        .iter()
        .any(|r| phase(r) == Some(ReplicaPhase::Archived))
    {
        ProjectPhase::Opening
    } else if ready >= usize::from(inp.project.spec.copies)
        && primary.is_some_and(|r| phase(r) == Some(ReplicaPhase::Ready))
    {
        ProjectPhase::Ready
    } else if ready == 0 {
        ProjectPhase::Pending
    } else {
        ProjectPhase::Degraded
    }
}

/// One line per copy, by pool; a copy's lag is its agent's, else its distance in time from the
/// primary's newest snapshot.
fn summaries(replicas: &[StreamReplica], primary: Option<&StreamReplica>) -> Vec<ReplicaSummary> {
    let newest = primary.and_then(applied_key).map(|k| k.0);
    let mut sorted: Vec<&StreamReplica> = replicas.iter().collect();
    sorted.sort_by(|a, b| a.spec.pool.cmp(&b.spec.pool));
    sorted
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
        .collect()
}

/// `Placed`, `Replicated` and `Ready`; `SnapshotsBlocked` and `Mounted` as the primary reports
/// them; `Diverged` from any copy, once it has been seen.
fn conditions(
    cx: &Ctx<'_>,
    prev: &ProjectStatus,
    (primary, backup): (Option<&StreamReplica>, Option<&BackupStatus>),
    phase_now: ProjectPhase,
    notes: &str,
) -> Vec<Condition> {
    let inp = cx.inp;
    let (now, generation) = (inp.now, inp.project.metadata.generation);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(
            &prev.conditions,
            type_,
            ok,
            reason,
            message,
            now,
            generation,
        )
    };
    let copies = usize::from(inp.project.spec.copies);
    // Copies that exist or are being created now; placement reports any shortfall in notes.
    let placed = inp.replicas.len()
        + cx.changes
            .iter()
            .filter(|c| matches!(c, Change::Create(_)))
            .count();
    let placed_ok = !notes.contains("copies can be placed");
    let secondaries_ready = inp
        .replicas
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary && phase(r) == Some(ReplicaPhase::Ready))
        .count();
    let or_notes = |otherwise: String| {
        if notes.is_empty() {
            otherwise
        } else {
            notes.to_owned()
        }
    };
    let mut conditions = vec![
        cond(
            "Placed",
            placed_ok,
            if placed_ok { "Placed" } else { "Unplaceable" },
            or_notes(format!(
                "{} of {copies} copies placed",
                placed.min(copies.max(placed))
            )),
        ),
        cond(
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
        ),
        cond(
            "Ready",
            phase_now == ProjectPhase::Ready,
            match phase_now {
                ProjectPhase::Ready => "Ready",
                ProjectPhase::Degraded if notes.contains("lost") => "PrimaryLost",
                _ => "NotReady",
            },
            or_notes(format!("phase {phase_now:?}")),
        ),
    ];
    let reported = primary
        .and_then(|r| r.status.as_ref())
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    for type_ in ["SnapshotsBlocked", "Mounted"] {
        if let Some(c) = reported.iter().find(|c| c.type_ == type_) {
            conditions.push(cond(
                type_,
                c.status == "True",
                &c.reason,
                c.message.clone(),
            ));
        }
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
        conditions.push(cond(
            "Diverged",
            !diverged.is_empty(),
            if diverged.is_empty() {
                "NoDivergence"
            } else {
                "ForkPreserved"
            },
            diverged.join("; "),
        ));
    }
    // Only a project that is backed up says how its backups stand (a restore alone shows
    // its progress in status.backup, but no condition).
    let backup = backup.filter(|_| inp.project.spec.backup.is_some());
    for (type_, ok, reason, message) in backup_conditions(backup, &prev.conditions) {
        conditions.push(cond(type_, ok, reason, message));
    }
    conditions
}

/// The mounts' status: what the primary's agent reports wins over what the controller
/// expects (`expected`), except for a mount whose source cannot be found.
pub(super) fn mounts(
    status: &mut ProjectStatus,
    p: &Project,
    primary: Option<&StreamReplica>,
    expected: Vec<MountStatus>,
) {
    if p.spec.mounts.is_empty() {
        return;
    }
    let seen = primary
        .and_then(|pr| pr.status.as_ref())
        .map(|s| s.mounts.clone())
        .unwrap_or_default();
    status.mounts = expected
        .into_iter()
        .map(|m| {
            seen.iter()
                .find(|s| s.mount_path == m.mount_path && m.phase != "Failed")
                .cloned()
                .unwrap_or(m)
        })
        .collect();
}

/// Events for transitions users must see: the Project stops being placed (or never was), its
/// snapshots become blocked, a copy diverged.
pub(super) fn events(cx: &mut Ctx<'_>, prev: &ProjectStatus, status: &ProjectStatus) {
    let message = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let placed_now = is_true(&status.conditions, "Placed");
    if !placed_now
        && (is_true(&prev.conditions, "Placed")
            || !prev.conditions.iter().any(|c| c.type_ == "Placed"))
    {
        cx.event(true, "Unplaceable", message("Placed"));
    }
    for (kind, reason) in [
        ("SnapshotsBlocked", "SnapshotsBlocked"),
        ("Diverged", "Diverged"),
    ] {
        if is_true(&status.conditions, kind) && !is_true(&prev.conditions, kind) {
            cx.event(true, reason, message(kind));
        }
    }
    // Backups that stop working, or a backup that does not restore, are told at once.
    for (kind, cond_reason, reason) in [
        ("BackedUp", "BackupFailed", "BackupFailed"),
        (
            "BackupVerified",
            "VerificationFailed",
            "BackupVerificationFailed",
        ),
    ] {
        let failing = |conds: &[Condition]| {
            conds
                .iter()
                .any(|c| c.type_ == kind && c.status == "False" && c.reason == cond_reason)
        };
        // Each failed verification is told; a backup that keeps failing, once.
        let again = kind == "BackupVerified"
            && status.backup.as_ref().and_then(|b| b.verify_time.as_ref())
                != prev.backup.as_ref().and_then(|b| b.verify_time.as_ref());
        if failing(&status.conditions) && (!failing(&prev.conditions) || again) {
            cx.event(true, reason, message(kind));
        }
    }
}

//! Offsite backups from a live copy (DESIGN §5.9): which copy uploads (a Ready secondary when
//! there is one, so the primary's disks are spared; else the primary), when (the interval,
//! `projstore.io/backup-now`, backoff after a failure), what (the copy's newest snapshot, as
//! an increment from the newest one the bucket holds), superseded objects removed, and the
//! newest backup verified on the target's schedule. A primary built from a backup is in
//! [`restore_from_backup`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use projstore_api::{
    BACKUP_NOW_ANNOTATION, BackupPhase, BackupStatus, BackupTarget, ReplicaPhase,
    VERIFY_BACKUP_NOW_ANNOTATION,
};

use super::*;
use crate::backup::bucket::{Bucket, BucketStream, Upload};
use crate::backup::restore::receive_chain;
use crate::backup::target::{describe, open_bucket};
use crate::backup::{BackupError, lease};
use crate::streams::{Manifest, SnapshotJson, StreamId};
use crate::zfs::SendFlags;

/// Where the state of uploads under way is kept, in the agent's run directory.
const UPLOADS_DIR: &str = "backup-uploads";

/// Verifications asked for by annotation come at most this often.
const VERIFY_SPACING: Duration = Duration::from_secs(30);

/// An upload the bucket records that no host finished is aborted by a later backup once its
/// record is this old: a running upload records itself again every
/// [`crate::backup::bucket::RECORD_REFRESH`] while it stores parts, and the record's time is
/// the service's, compared with this host's clock (S3 refuses requests signed more than
/// 15 minutes off its own).
const ABANDONED_AFTER: Duration = Duration::from_secs(1800);

/// How long an upload waits when another node still uploads the project's backups.
const UPLOAD_RETRY: Duration = Duration::from_secs(60);

/// How young the bucket's record of another node's upload must be for it to count as
/// running: it is written again every [`crate::backup::bucket::RECORD_REFRESH`] while parts
/// are stored.
const UPLOADING_ELSEWHERE: Duration = Duration::from_secs(300);

/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Whether copy `sr` uploads its project's backups: the Ready (or catching-up) secondary on the
/// first pool by name, or the primary when there is none.
pub fn uploads(sr: &StreamReplica, copies: &[std::sync::Arc<StreamReplica>]) -> bool {
    let live = |r: &&std::sync::Arc<StreamReplica>| {
        r.spec.state == ReplicaState::Live
            && r.spec.project == sr.spec.project
            && r.namespace() == sr.namespace()
    };
    let ready_secondary = copies
        .iter()
        .filter(live)
        .filter(|r| r.spec.role == ReplicaRole::Secondary)
        .filter(|r| {
            // A copy catching up stays the uploader (its upload is not stopped each time a
            // snapshot arrives); a new one is not chosen until it holds a snapshot.
            let st = r.status.as_ref();
            match st.and_then(|s| s.phase) {
                Some(ReplicaPhase::Ready) => true,
                Some(ReplicaPhase::Syncing) => st.is_some_and(|s| s.applied_snapshot.is_some()),
                _ => false,
            }
        })
        .min_by(|a, b| a.spec.pool.cmp(&b.spec.pool));
    match ready_secondary {
        Some(r) => r.spec.pool == sr.spec.pool,
        None => sr.spec.role == ReplicaRole::Primary,
    }
}

fn time(t: &Option<Time>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// When the next backup is due (no upload running), from the status: now when asked by
/// annotation, never done, or cut off while running; after a failure, with backoff; else
/// one interval after the last one.
pub fn backup_due(
    b: &BackupStatus,
    interval: Duration,
    asked: Option<&str>,
    now: DateTime<Utc>,
) -> Duration {
    if asked.is_some() && asked != b.requested.as_deref() {
        return Duration::ZERO;
    }
    if b.phase == Some(BackupPhase::Running) {
        // An upload said to run that no job of this agent runs: cut off by a restart.
        return Duration::ZERO;
    }
    let since = |t: Option<DateTime<Utc>>| {
        t.map(|t| (now - t).to_std().unwrap_or_default())
            .unwrap_or(Duration::MAX)
    };
    if b.phase == Some(BackupPhase::Failed) {
        let n = b.failures.unwrap_or(1).clamp(1, 12);
        let wait = (Duration::from_secs(15) * 2u32.pow(n - 1))
            .min(MAX_BACKOFF)
            .min(interval);
        return wait.saturating_sub(since(time(&b.attempted_at)));
    }
    interval.saturating_sub(since(time(&b.time)))
}

/// When the next verification is due: now when asked; else `days` after the last one (only
/// once a backup exists).
pub fn verify_due(
    b: &BackupStatus,
    days: u32,
    asked: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    b.last_snapshot.as_ref()?;
    let since = time(&b.verify_time)
        .map(|t| (now - t).to_std().unwrap_or_default())
        .unwrap_or(Duration::MAX);
    if asked.is_some() && asked != b.verify_requested.as_deref() {
        // On request, but not more often than every VERIFY_SPACING: a verification reads the
        // whole chain and writes it into this pool.
        return Some(VERIFY_SPACING.saturating_sub(since));
    }
    let every = Duration::from_secs(u64::from(days) * 86400);
    Some(every.saturating_sub(since))
}

/// An upload or a verification running beside the copy's passes: a long upload must not
/// stop the copy from catching up, nor a primary from taking its snapshots.
pub struct BackupJob {
    kind: JobKind,
    /// A verification an upload may stop (only once in a row: the next one runs through).
    preemptible: bool,
    progress: JobProgress,
    handle: tokio::task::JoinHandle<JobOutcome>,
}

/// What the agent remembers of a copy's verifications between passes.
#[derive(Debug, Default)]
pub struct VerifyMemo {
    /// No spare pool could take it: not before then.
    retry_at: Option<std::time::Instant>,
    /// An upload stopped the last one.
    preempted: bool,
    /// Another node was uploading this project's backups: no upload before then.
    upload_retry_at: Option<std::time::Instant>,
    /// Since when uploads waited for another node's.
    busy_since: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Upload,
    Verify,
}

/// Uploads one host runs at once: each is a `zfs send` and some parts (of [`PART`] bytes, more
/// for streams of over 10 GiB) in
/// memory, and backups of many projects fall due together (after a restart, or created at
/// once). The others wait their turn, saying so.
pub const MAX_UPLOADS: usize = 4;

/// Uploads of one namespace's projects one host runs at once: a tenant that asks for the
/// backups of all its projects at once takes at most these of the host's turns.
pub const MAX_NAMESPACE_UPLOADS: usize = 2;

/// What an upload waits for.
const WAITS_FOR_NAMESPACE: u8 = 1;
const WAITS_FOR_HOST: u8 = 2;

/// Bytes a job moved, and what it will move in all (0 until known); whether it still waits
/// for its turn, and since when it runs; the snapshot an upload moved the bucket's chain to
/// before its last stream (a cut-off one it finished first).
#[derive(Clone, Default)]
struct JobProgress {
    done: Progress,
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// 0, or what it waits for ([`WAITS_FOR_NAMESPACE`], [`WAITS_FOR_HOST`]).
    waiting: std::sync::Arc<std::sync::atomic::AtomicU8>,
    started: std::sync::Arc<std::sync::Mutex<Option<Time>>>,
    reached: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl JobProgress {
    /// A running job's progress into `b`.
    fn show(&self, b: &mut BackupStatus) {
        let (done, total) = self.now();
        (b.bytes_done, b.bytes_total) = (Some(done), total);
        match self.waiting.load(std::sync::atomic::Ordering::Relaxed) {
            WAITS_FOR_HOST => {
                b.message = Some(format!(
                    "waiting: {MAX_UPLOADS} uploads already run on this host"
                ));
            }
            WAITS_FOR_NAMESPACE => {
                b.message = Some(format!(
                    "waiting: {MAX_NAMESPACE_UPLOADS} uploads of this namespace already run on this host"
                ));
            }
            _ => {}
        }
        self.settle(b);
    }

    /// What a job, running or ended (also when it failed or its task died; one stopped because
    /// the copy no longer uploads was shown while it ran, every pass), did for certain:
    /// when it began (backoff counts from then, not from when it queued), and where the
    /// bucket's chain ends now (the primary's retention keeps that snapshot).
    fn settle(&self, b: &mut BackupStatus) {
        if let Some(t) = self.started.lock().ok().and_then(|t| t.clone()) {
            b.attempted_at = Some(t);
        }
        if let Some(s) = self.reached.lock().ok().and_then(|r| r.clone()) {
            b.last_snapshot = Some(s);
        }
    }

    /// The job got its turn.
    fn begin(&self) {
        self.waiting.store(0, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut t) = self.started.lock() {
            *t = Some(now_time());
        }
    }

    /// The bucket's chain ends at `snapshot` now, whatever comes next.
    fn reach(&self, snapshot: &str) {
        if let Ok(mut r) = self.reached.lock() {
            *r = Some(snapshot.to_owned());
        }
    }

    fn set_total(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    /// (done, total): the total is at least what is done.
    fn now(&self) -> (u64, Option<u64>) {
        let done = self.done.bytes();
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        (done, (total > 0).then_some(total.max(done)))
    }
}

/// What a job did, and the annotation value it answers.
enum JobOutcome {
    Uploaded(Result<Done, BackupError>, Option<String>),
    Verified(Result<String, BackupError>, Option<String>),
}

fn job_key(sr: &StreamReplica) -> String {
    format!("{}/{}", sr.namespace().unwrap_or_default(), sr.name_any())
}

/// Stops the backup job of `sr`, if any (the copy no longer uploads, is no longer live, or
/// is not this node's to work on). An upload stopped goes on from its stored parts when this
/// copy uploads again.
pub fn stop_job(cx: &AgentContext, sr: &StreamReplica) {
    let job = cx
        .backup_jobs
        .lock()
        .ok()
        .and_then(|mut jobs| jobs.remove(&job_key(sr)));
    if let Some(job) = job {
        job.handle.abort();
        tracing::info!(project = %sr.spec.project, kind = ?job.kind, "backup work stopped: this copy no longer does it");
    }
}

/// Stops the jobs of StreamReplicas that are gone (deleted without a last pass here).
fn sweep_jobs(cx: &AgentContext) {
    let Ok(mut jobs) = cx.backup_jobs.lock() else {
        return;
    };
    jobs.retain(|key, job| {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let here = cx
            .replicas
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
            .is_some();
        if !here {
            job.handle.abort();
        }
        here
    });
}

/// Reads or changes what is remembered of `sr`'s verifications.
fn memo<T>(cx: &AgentContext, sr: &StreamReplica, f: impl FnOnce(&mut VerifyMemo) -> T) -> T {
    match cx.verify_memo.lock() {
        Ok(mut all) => f(all.entry(job_key(sr)).or_default()),
        Err(_) => f(&mut VerifyMemo::default()),
    }
}

/// Starts `work` as the job of `sr`.
fn start_job(
    cx: &AgentContext,
    sr: &StreamReplica,
    kind: JobKind,
    progress: JobProgress,
    work: impl std::future::Future<Output = JobOutcome> + Send + 'static,
) {
    let preemptible = kind == JobKind::Verify && !memo(cx, sr, |m| m.preempted);
    if let Ok(mut jobs) = cx.backup_jobs.lock() {
        jobs.insert(
            job_key(sr),
            BackupJob {
                kind,
                preemptible,
                progress,
                handle: tokio::spawn(work),
            },
        );
    }
}

/// Whether a backup upload of copy `sr` runs (or waits for its turn) now.
pub fn upload_running(cx: &AgentContext, sr: &StreamReplica) -> bool {
    cx.backup_jobs
        .lock()
        .map(|jobs| {
            jobs.get(&job_key(sr))
                .is_some_and(|j| j.kind == JobKind::Upload && !j.handle.is_finished())
        })
        .unwrap_or(true)
}

/// The backup work of one pass of a live copy: starts an upload or a verification when due
/// (one at a time, beside the passes; an upload due stops a verification), shows a running
/// one's progress, and writes what a finished one did into `status.backup`; returns when it
/// has work next. Failures go to the status, not the pass.
pub(super) async fn backup_pass(
    cx: &std::sync::Arc<AgentContext>,
    sr: &StreamReplica,
    pool: &PoolName,
    status: &mut StreamReplicaStatus,
) -> Due {
    sweep_jobs(cx);
    let ns = sr.namespace().unwrap_or_default();
    if !uploads(sr, &cx.copies_of(&ns, &sr.spec.project)) {
        stop_job(cx, sr);
        not_running(status, "another copy uploads the backups");
        return None;
    }
    let project = match Api::<Project>::namespaced(cx.client.clone(), &ns)
        .get_opt(&sr.spec.project)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the project for its backups");
            return Some(Duration::from_secs(30));
        }
    };
    let Some(policy) = project.spec.backup.clone() else {
        stop_job(cx, sr);
        not_running(status, "the project is no longer backed up");
        return None;
    };
    let mut b = status.backup.clone().unwrap_or_default();
    let interval = Duration::from_secs(u64::from(policy.interval_minutes) * 60);
    let asked = project.annotations().get(BACKUP_NOW_ANNOTATION).cloned();
    // A job running: its progress (a verification gives way to an upload due: it must never
    // hold backups back); a job done: its outcome.
    let finished = {
        let Ok(mut jobs) = cx.backup_jobs.lock() else {
            return Some(Duration::from_secs(1));
        };
        match jobs.get(&job_key(sr)) {
            Some(job)
                if !job.handle.is_finished()
                    && job.preemptible
                    && backup_due(&b, interval, asked.as_deref(), Utc::now()).is_zero() =>
            {
                if let Some(job) = jobs.remove(&job_key(sr)) {
                    job.handle.abort();
                    tracing::info!(project = %sr.spec.project, "verification stopped: a backup is due (the next one runs through)");
                }
                memo(cx, sr, |m| m.preempted = true);
                None
            }
            Some(job) if !job.handle.is_finished() => {
                job.progress.show(&mut b);
                status.backup = Some(b);
                return Some(Duration::from_secs(2));
            }
            Some(_) => jobs.remove(&job_key(sr)),
            None => None,
        }
    };
    b.bytes_done = None;
    b.bytes_total = None;
    // (Running with no job here, the agent restarted under it: `backup_due` starts it again,
    // and the upload goes on from its stored parts.)
    if let Some(job) = finished {
        let kind = job.kind;
        job.progress.settle(&mut b);
        match job.handle.await {
            // The request it answered is told once it is answered.
            Ok(JobOutcome::Uploaded(Err(BackupError::Busy(why)), _)) => {
                // Another copy still uploads (the uploading copy changed a moment ago): this
                // one waits, still due, and tries again in a minute.
                tracing::info!(project = %sr.spec.project, reason = %why, "upload postponed");
                b.message = Some(why);
                memo(cx, sr, |m| {
                    m.upload_retry_at = Some(std::time::Instant::now() + UPLOAD_RETRY);
                    m.busy_since.get_or_insert_with(std::time::Instant::now);
                });
            }
            Ok(JobOutcome::Uploaded(done, asked)) => {
                memo(cx, sr, |m| m.busy_since = None);
                b.requested = asked.or(b.requested.take());
                uploaded(&mut b, sr, done);
            }
            Ok(JobOutcome::Verified(Err(BackupError::Busy(why)), _)) => {
                // No spare pool could take it now: tried again in a minute or two, and
                // nothing is said of the backup.
                let wait =
                    Duration::from_secs(60 + u64::from(spare_rank(&job_key(sr), "")[0]) % 60);
                tracing::info!(project = %sr.spec.project, reason = %why, "verification postponed");
                memo(cx, sr, |m| {
                    m.retry_at = Some(std::time::Instant::now() + wait)
                });
            }
            Ok(JobOutcome::Verified(outcome, asked)) => {
                b.verify_requested = asked.or(b.verify_requested.take());
                memo(cx, sr, |m| (m.retry_at, m.preempted) = (None, false));
                verified(&mut b, sr, outcome);
            }
            Err(e) if kind == JobKind::Upload => {
                uploaded(
                    &mut b,
                    sr,
                    Err(BackupError::Local(format!("the upload ended: {e}"))),
                );
            }
            Err(e) => verified(
                &mut b,
                sr,
                Err(BackupError::Local(format!("the verification ended: {e}"))),
            ),
        }
    }
    if status.phase != Some(ReplicaPhase::Ready) {
        // Nothing new starts on a copy that is not Ready.
        status.backup = Some(b);
        return Some(Duration::from_secs(5));
    }
    let upload_later = memo(cx, sr, |m| m.upload_retry_at)
        .map(|t| t.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or_default();
    let next = backup_due(&b, interval, asked.as_deref(), Utc::now());
    if next.is_zero() && upload_later.is_zero() {
        b.attempted_at = Some(now_time());
        b.phase = Some(BackupPhase::Running);
        b.bytes_done = Some(0);
        let progress = JobProgress::default();
        let (cx2, sr2, pool2) = (cx.clone(), sr.clone(), pool.clone());
        let p2 = progress.clone();
        let (turn, ns_turn) = (cx.uploads.clone(), namespace_turns(cx, &ns));
        let patient = memo(cx, sr, |m| m.busy_since).is_none_or(|t| t.elapsed() < ABANDONED_AFTER);
        start_job(cx, sr, JobKind::Upload, progress, async move {
            let waits = |what| p2.waiting.store(what, std::sync::atomic::Ordering::Relaxed);
            waits(WAITS_FOR_NAMESPACE);
            let ns_turn = ns_turn.acquire_owned().await;
            waits(WAITS_FOR_HOST);
            let (Ok(_ns_turn), Ok(_turn)) = (ns_turn, turn.acquire_owned().await) else {
                return JobOutcome::Uploaded(
                    Err(BackupError::Local("the agent is stopping".into())),
                    asked,
                );
            };
            p2.begin();
            // The project as it is now: its target or `keep` may have changed while this
            // upload waited its turn, or its backups been turned off.
            let done = match current_policy(&cx2, &sr2).await {
                Ok(policy) => {
                    let p = (&p2, patient);
                    backup_now(&cx2, &sr2, &pool2, &policy.target, &policy.keep, p).await
                }
                Err(e) => Err(e),
            };
            JobOutcome::Uploaded(done, asked)
        });
        status.backup = Some(b);
        return Some(Duration::from_secs(2));
    }
    // Verification, on the target's schedule or when asked.
    let asked_verify = project
        .annotations()
        .get(VERIFY_BACKUP_NOW_ANNOTATION)
        .cloned();
    let days = match Api::<BackupTarget>::all(cx.client.clone())
        .get_opt(&policy.target)
        .await
    {
        Ok(Some(t)) => t.spec.verify_interval_days,
        _ => 7,
    };
    if !upload_later.is_zero() {
        // An upload is due and waits for another node's: no verification meanwhile (it would
        // be stopped as soon as the wait ends, or read a chain the other node is changing).
        status.backup = Some(b);
        return Some(upload_later.max(Duration::from_secs(1)));
    }
    let mut next = next;
    let later = memo(cx, sr, |m| m.retry_at)
        .map(|t| t.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or_default();
    if let Some(due) =
        verify_due(&b, days, asked_verify.as_deref(), Utc::now()).map(|d| d.max(later))
    {
        if due.is_zero() {
            b.bytes_done = Some(0);
            let progress = JobProgress::default();
            let (cx2, sr2, pool2, target) =
                (cx.clone(), sr.clone(), pool.clone(), policy.target.clone());
            let placement = project.spec.placement.clone();
            let p2 = progress.clone();
            start_job(cx, sr, JobKind::Verify, progress, async move {
                let outcome = verify(&cx2, &sr2, &pool2, (&target, &placement), &p2).await;
                JobOutcome::Verified(outcome, asked_verify)
            });
            status.backup = Some(b);
            return Some(Duration::from_secs(2));
        }
        next = next.min(due);
    }
    status.backup = Some(b);
    Some(next.max(Duration::from_secs(1)))
}

/// The turns of namespace `ns`'s uploads on this host (those of namespaces with none running
/// are forgotten).
fn namespace_turns(cx: &AgentContext, ns: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
    let fresh = || std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_NAMESPACE_UPLOADS));
    let Ok(mut all) = cx.namespace_uploads.lock() else {
        return fresh();
    };
    all.retain(|_, t| std::sync::Arc::strong_count(t) > 1);
    all.entry(ns.to_owned()).or_insert_with(fresh).clone()
}

/// The backup policy of `sr`'s project, read now.
async fn current_policy(
    cx: &AgentContext,
    sr: &StreamReplica,
) -> Result<projstore_api::BackupPolicy, BackupError> {
    let ns = sr.namespace().unwrap_or_default();
    Api::<Project>::namespaced(cx.client.clone(), &ns)
        .get_opt(&sr.spec.project)
        .await
        .map_err(|e| BackupError::Local(format!("cannot read the project: {e}")))?
        .and_then(|p| p.spec.backup)
        .ok_or_else(|| {
            BackupError::Local("the project's backups were turned off before its turn came".into())
        })
}

/// On a copy that no longer uploads: its status no longer says an upload runs (nor that it
/// attempted one lately, so the Project shows the uploading copy's).
fn not_running(status: &mut StreamReplicaStatus, why: &str) {
    if let Some(b) = status.backup.as_mut()
        && (b.phase == Some(BackupPhase::Running) || b.bytes_done.is_some())
    {
        b.phase = None;
        b.attempted_at = None;
        b.bytes_done = None;
        b.bytes_total = None;
        b.message = Some(why.to_owned());
    }
}

/// What a finished upload did, into the status.
fn uploaded(b: &mut BackupStatus, sr: &StreamReplica, done: Result<Done, BackupError>) {
    match done {
        Ok(Done {
            snapshot,
            uploaded,
            message,
            short: Some(e),
        }) => {
            // The chain moved on to `snapshot`, the newest is not up yet: a failure (retried
            // with backoff) that says how far it came.
            b.bytes = uploaded;
            b.last_snapshot = Some(snapshot);
            uploaded_failed(b, sr, format!("{message}; then {e}"));
        }
        Ok(done) => {
            b.phase = Some(BackupPhase::Succeeded);
            b.failures = None;
            b.message = Some(done.message);
            if done.uploaded.is_some() || b.last_snapshot.as_ref() != Some(&done.snapshot) {
                b.bytes = Some(done.uploaded.unwrap_or(0));
                b.last_snapshot = Some(done.snapshot);
            }
            b.time = Some(now_time());
        }
        Err(e) => uploaded_failed(b, sr, e.to_string()),
    }
}

/// A failed backup into the status: retried with backoff.
fn uploaded_failed(b: &mut BackupStatus, sr: &StreamReplica, why: String) {
    tracing::warn!(project = %sr.spec.project, error = %why, "backup failed");
    crate::metrics::add(&crate::metrics::METRICS.errors, 1);
    b.phase = Some(BackupPhase::Failed);
    b.failures = Some(b.failures.unwrap_or(0).saturating_add(1));
    b.message = Some(projstore_api::s3::one_line(&why));
}

/// What a finished verification found, into the status.
fn verified(b: &mut BackupStatus, sr: &StreamReplica, outcome: Result<String, BackupError>) {
    b.verify_time = Some(now_time());
    match outcome {
        Ok(msg) => {
            b.verified = Some(true);
            b.verified_at = b.verify_time.clone();
            b.verify_message = Some(msg);
        }
        Err(e) => {
            tracing::warn!(project = %sr.spec.project, error = %e, "backup verification failed");
            b.verified = Some(false);
            b.verify_message = Some(projstore_api::s3::one_line(&e.to_string()));
        }
    }
    crate::metrics::add(
        if b.verified == Some(true) {
            &crate::metrics::METRICS.backup_verifications
        } else {
            &crate::metrics::METRICS.backup_verification_failures
        },
        1,
    );
}

/// What one backup did.
struct Done {
    snapshot: String,
    /// Bytes stored by the upload; None when the bucket already held the snapshot.
    uploaded: Option<u64>,
    message: String,
    /// Why the backup stopped short of the newest snapshot after the bucket's chain moved
    /// on to `snapshot` (a cut-off upload finished, the next one failed).
    short: Option<BackupError>,
}

async fn backup_now(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
    target: &str,
    keep: &projstore_api::BackupKeep,
    job: (&JobProgress, bool),
) -> Result<Done, BackupError> {
    let c = Copy::new(cx, sr, pool).map_err(|e| BackupError::Local(e.to_string()))?;
    let lease = backup_lease(cx, &c.key);
    lease::leased(&lease, backup_leased(cx, sr, &c, (target, keep), job)).await
}

/// This node's claim on the project's backup lease (what it saw of it before kept per
/// project).
fn backup_lease(
    cx: &AgentContext,
    key: &crate::streams::ProjectKey,
) -> projstore_api::lease::Election {
    let observed = cx
        .backup_leases
        .lock()
        .map(|mut seen| seen.entry(lease::lease_name(key)).or_default().clone())
        .unwrap_or_default();
    lease::election(
        cx.client.clone(),
        &cx.cfg.lease_namespace,
        key,
        cx.node(),
        observed,
    )
}

/// A backup, run while this node holds the project's backup lease.
async fn backup_leased(
    cx: &AgentContext,
    sr: &StreamReplica,
    c: &Copy<'_>,
    (target, keep): (&str, &projstore_api::BackupKeep),
    (progress, patient): (&JobProgress, bool),
) -> Result<Done, BackupError> {
    let bucket = open_bucket(&cx.client, target, &c.key.namespace, &c.key.name).await?;
    // Another copy's upload still running (it was the uploading copy a moment ago, or it sees
    // the copies otherwise): not two uploads, compactions or GCs of one project at once; but
    // not waited on for longer than an abandoned upload is (a record kept young for ever
    // must not stop backups).
    if patient
        && let Some((node, object)) = bucket
            .uploading_elsewhere(cx.node(), UPLOADING_ELSEWHERE)
            .await
    {
        return Err(BackupError::Busy(format!(
            "waiting: node {node} is uploading {object} (it stored a part in the last {} minutes)",
            UPLOADING_ELSEWHERE.as_secs() / 60
        )));
    }
    let streams = bucket.streams().await?;
    let edges: Vec<_> = streams.iter().map(|s| s.edge.clone()).collect();
    let rooted = plan::rooted_guids(&edges).map_err(|e| BackupError::Bucket(e.to_string()))?;
    let referenced = crate::zfs::PropertyName::parse("referenced")?;
    let local = c.zfs.snapshots(&c.ds, &[&referenced]).await?;
    let newest = local
        .last()
        .ok_or_else(|| BackupError::Local(format!("{} has no snapshot yet", c.ds)))?;
    let u = Uploading {
        cx,
        sr,
        c,
        bucket: &bucket,
        progress: &progress.done,
    };
    let uploads = cx.cfg.run_dir.join(UPLOADS_DIR);
    let prefix = upload_prefix(c);
    let done = if rooted.contains(&newest.guid) {
        Done {
            snapshot: newest.name.clone(),
            uploaded: None,
            message: format!("the bucket holds {} already", newest.name),
            short: None,
        }
    } else {
        // From the newest snapshot the bucket's chain holds (by GUID), else a full stream.
        let base = local.iter().rev().find(|s| rooted.contains(&s.guid));
        // An upload that was cut off is finished first, with the snapshot it began, then the
        // newest follows as an increment from it: chasing the newest snapshot would start
        // over whenever snapshots come faster than a large upload ends.
        let steps = match begun_upload(&bucket, &uploads, &prefix, (&local, &streams), base, newest)
        {
            Some(begun) => vec![(base, begun), (Some(begun), newest)],
            None => vec![(base, newest)],
        };
        let live = crate::live::LiveSnapshot::of;
        progress.set_total(
            steps
                .iter()
                .map(|(from, to)| crate::live::estimate(from.map(live).as_ref(), &live(to)))
                .sum(),
        );
        let (mut ids, mut stored, mut encrypted) = (Vec::new(), 0, false);
        let mut reached = None;
        for (from, to) in steps {
            match upload_stream(u, &streams, from, to, false).await {
                Ok((id, m)) => {
                    ids.push(id.to_string());
                    stored += m.stored_bytes;
                    encrypted = m.encrypted;
                    reached = Some(to);
                    progress.reach(&to.name);
                }
                // The finished stream counts: the chain ends at its snapshot now, which the
                // primary's retention then keeps.
                Err(e) => match reached {
                    Some(to) => {
                        return Ok(Done {
                            snapshot: to.name.clone(),
                            uploaded: Some(stored),
                            message: format!("uploaded {} ({stored} bytes)", ids.join(" and ")),
                            short: Some(e),
                        });
                    }
                    None => return Err(e),
                },
            }
        }
        Done {
            snapshot: newest.name.clone(),
            uploaded: Some(stored),
            message: format!(
                "uploaded {} ({stored} bytes{})",
                ids.join(" and "),
                if encrypted { ", encrypted" } else { "" }
            ),
            short: None,
        }
    };
    // Restore points `keep` lets go are bridged over, and what that supersedes removed.
    let streams = bucket.streams().await?;
    let bridged = compact(u, &streams, &local, keep).await?;
    let streams = if bridged > 0 {
        bucket.streams().await?
    } else {
        streams
    };
    gc(&bucket, &streams, keep).await?;
    // Every stream this backup wants is up: uploads of this project cut off for others are
    // given up (their parts removed from the bucket).
    bucket
        .abandon_other_uploads(&uploads, &prefix, ABANDONED_AFTER)
        .await;
    Ok(done)
}

/// The snapshot of an upload this copy began and did not finish, where it still leads from
/// `base` (the bucket chain's end here) towards `newest`, this copy still has it, the bucket
/// holds no stream of that name for other snapshots, and it was not tried too often.
fn begun_upload<'a>(
    bucket: &Bucket,
    dir: &std::path::Path,
    prefix: &str,
    (local, streams): (&'a [crate::zfs::SnapshotInfo], &[BucketStream]),
    base: Option<&crate::zfs::SnapshotInfo>,
    newest: &crate::zfs::SnapshotInfo,
) -> Option<&'a crate::zfs::SnapshotInfo> {
    bucket
        .begun_uploads(dir, prefix)
        .into_iter()
        .find_map(|(file, to_guid)| {
            let s = local.iter().find(|s| s.guid.to_string() == to_guid)?;
            let between =
                base.is_none_or(|b| b.createtxg < s.createtxg) && s.createtxg < newest.createtxg;
            let id = StreamId::for_snapshots(base.map(|b| b.name.as_str()), &s.name).ok()?;
            let taken = streams
                .iter()
                .any(|t| t.id == id && t.edge.to.guid != s.guid);
            (between && !taken && file == format!("{prefix}{id}.json")).then_some(s)
        })
}

/// How the state files of this copy's uploads are named: `<prefix><stream id>.json`.
fn upload_prefix(c: &Copy<'_>) -> String {
    format!("{}.{}.{}.", c.pool, c.key.namespace, c.key.name)
}

/// Where one backup uploads from and to, and what counts its bytes.
#[derive(Clone, Copy)]
struct Uploading<'a> {
    cx: &'a AgentContext,
    sr: &'a StreamReplica,
    c: &'a Copy<'a>,
    bucket: &'a Bucket,
    progress: &'a Progress,
}

/// Uploads `to` (incremental from `from`) from this copy, unless the bucket has that stream
/// (or `replace`: its object found broken). A stream of the same name for other snapshots is
/// never overwritten.
async fn upload_stream(
    u: Uploading<'_>,
    streams: &[BucketStream],
    from: Option<&crate::zfs::SnapshotInfo>,
    to: &crate::zfs::SnapshotInfo,
    replace: bool,
) -> Result<(StreamId, crate::backup::bucket::ObjectManifest), BackupError> {
    let Uploading {
        cx,
        sr,
        c,
        bucket,
        progress,
    } = u;
    let id = StreamId::for_snapshots(from.map(|b| b.name.as_str()), &to.name)
        .map_err(BackupError::Local)?;
    if let Some(other) = streams.iter().find(|s| s.id == id) {
        let same = other.edge.to.guid == to.guid
            && other.edge.from.as_ref().map(|f| f.guid) == from.map(|f| f.guid);
        if same && !replace {
            return Ok((id, other.manifest.clone()));
        }
        // Same names, other snapshots (another lineage): never overwritten.
        if !same {
            return Err(BackupError::Bucket(format!(
                "stream {id} exists for snapshot GUID {} (this copy's is {}): left as it is",
                other.edge.to.guid, to.guid
            )));
        }
    }
    let snap = c.ds.snapshot(&to.name)?;
    let base = from.map(|b| c.ds.snapshot(&b.name)).transpose()?;
    let json = |s: &crate::zfs::SnapshotInfo| SnapshotJson {
        name: s.name.clone(),
        guid: s.guid.to_string(),
        createtxg: s.createtxg,
        time: s.creation,
    };
    let encrypted = c.zfs.encrypted(&c.ds).await?;
    let asked = SendFlags {
        compressed: true,
        large_blocks: true,
        embedded: true,
        raw: false,
    };
    let flags = crate::live::raw_if_encrypted(asked, encrypted).map_err(BackupError::Local)?;
    let up = Upload {
        zfs: c.zfs,
        id: &id,
        snap: &snap,
        from: base.as_ref(),
        flags,
        manifest: Manifest {
            project: format!("{}/{}", c.key.namespace, c.key.name),
            from: from.map(json),
            to: json(to),
            epoch: sr.spec.epoch,
            bytes: 0,
            sha256: String::new(),
            created_at: Utc::now().to_rfc3339(),
            node: cx.node().to_owned(),
        },
        state_file: cx
            .cfg
            .run_dir
            .join(UPLOADS_DIR)
            .join(format!("{}{id}.json", upload_prefix(c))),
        hold: Some(cx.cfg.run_dir.join(crate::backup::bucket::HOLD_UPLOAD)),
        // An increment holds at most about what its snapshot holds.
        bound: crate::live::LiveSnapshot::of(to).referenced,
    };
    let m = bucket.upload(&up, progress).await?;
    crate::metrics::add(&crate::metrics::METRICS.backup_bytes, m.stored_bytes);
    Ok((id, m))
}

/// The restore points (snapshots the bucket's chain passes through) `keep` lets go: for each
/// run of them, a stream from the kept point before (a full stream when none) to the kept
/// point after is uploaded, where this copy still has both snapshots; §5.3's GC then finds
/// the bridged streams superseded. Returns how many streams were uploaded.
async fn compact(
    u: Uploading<'_>,
    streams: &[BucketStream],
    local: &[crate::zfs::SnapshotInfo],
    keep: &projstore_api::BackupKeep,
) -> Result<usize, BackupError> {
    let edges: Vec<_> = streams.iter().map(|s| s.edge.clone()).collect();
    let chain = plan::plan(&edges)
        .map_err(|e| BackupError::Bucket(e.to_string()))?
        .chain;
    let points: Vec<&crate::streams::Snap> = chain
        .iter()
        .filter_map(|id| streams.iter().find(|s| s.id.as_str() == id))
        .map(|s| &s.edge.to)
        .collect();
    let kept = keep_points(&points, keep, Utc::now().timestamp());
    let mut bridges = Vec::new();
    let (mut before, mut gap) = (None, false);
    for p in &points {
        if kept.contains(&p.guid) {
            if gap {
                bridges.push((before, *p));
            }
            before = Some(*p);
            gap = false;
        } else {
            gap = true;
        }
    }
    let here = |p: &crate::streams::Snap| local.iter().find(|l| l.guid == p.guid);
    let mut uploaded = 0;
    for (from, to) in bridges {
        let (Some(to), from) = (here(to), from.map(here)) else {
            continue;
        };
        let from = match from {
            Some(Some(f)) => Some(f),
            Some(None) => continue,
            None => None,
        };
        upload_stream(u, streams, from, to, false).await?;
        uploaded += 1;
    }
    Ok(uploaded)
}

/// Which restore points `keep` keeps: the newest in each of the N most recent UTC days, weeks
/// and months, the newest of all, and (when days are kept at all) every one of today.
pub fn keep_points(
    points: &[&crate::streams::Snap],
    keep: &projstore_api::BackupKeep,
    now: i64,
) -> std::collections::BTreeSet<u64> {
    // Ordered by their place on the chain (createtxg is per pool, and the streams may come
    // from copies on several pools).
    let facts: Vec<crate::retention::SnapshotFacts> = points
        .iter()
        .enumerate()
        .map(|(i, p)| crate::retention::SnapshotFacts {
            name: p.name.clone(),
            guid: p.guid,
            createtxg: i as u64,
            time: p.time,
            held: false,
        })
        .collect();
    let policy = crate::retention::RetentionPolicy {
        frequent: 0,
        hourly: 0,
        daily: keep.daily,
        weekly: keep.weekly,
        monthly: keep.monthly,
        frequent_secs: 60,
    };
    let mut kept = crate::retention::retain(&facts, now, &policy).keep;
    // A day's restore points collapse to its newest once the day is over: until then each
    // backup stays (and the next one is an increment, not a bridge to a full stream).
    if keep.daily > 0 {
        let today = now - now.rem_euclid(86400);
        kept.extend(points.iter().filter(|p| p.time >= today).map(|p| p.guid));
    }
    kept
}

/// Removes the objects §5.3's GC finds superseded (never one on the chain, never a fork),
/// except those on the chain to a restore point `keep` keeps: a chain to the newest that no
/// longer passes an older kept point (a stream routed around a broken one, a full stream
/// after the chain's base was lost) never takes that point with it.
async fn gc(
    bucket: &Bucket,
    streams: &[BucketStream],
    keep: &projstore_api::BackupKeep,
) -> Result<(), BackupError> {
    let edges: Vec<_> = streams.iter().map(|s| s.edge.clone()).collect();
    let plan = plan::plan(&edges).map_err(|e| BackupError::Bucket(e.to_string()))?;
    let kept = kept_chains(&edges, keep, Utc::now().timestamp())
        .map_err(|e| BackupError::Bucket(e.to_string()))?;
    for id in plan.deletable.into_iter().filter(|id| !kept.contains(id)) {
        let id = StreamId::parse(&id).map_err(BackupError::Bucket)?;
        bucket.delete(&id).await?;
        tracing::info!(stream = %id, "superseded backup object removed");
    }
    Ok(())
}

/// The streams of the chains (as the planner chooses them) to the restore points `keep`
/// keeps among every snapshot a chain reaches.
fn kept_chains(
    edges: &[crate::streams::plan::Edge],
    keep: &projstore_api::BackupKeep,
    now: i64,
) -> Result<std::collections::HashSet<String>, plan::PlanError> {
    let rooted = plan::rooted_guids(edges)?;
    let mut points: Vec<&crate::streams::Snap> = Vec::new();
    for e in edges {
        if rooted.contains(&e.to.guid) && !points.iter().any(|p| p.guid == e.to.guid) {
            points.push(&e.to);
        }
    }
    points.sort_by(|a, b| (a.time, &a.name, a.guid).cmp(&(b.time, &b.name, b.guid)));
    let mut ids = std::collections::HashSet::new();
    for guid in keep_points(&points, keep, now) {
        if let Some(chain) = plan::chain_to(edges, guid)? {
            ids.extend(chain);
        }
    }
    Ok(ids)
}

/// The chain of `streams` to the snapshot named `snapshot` (the newest when None).
fn chain_of<'a>(
    streams: &'a [BucketStream],
    snapshot: Option<&str>,
) -> Result<Vec<&'a BucketStream>, BackupError> {
    let edges: Vec<_> = streams.iter().map(|s| s.edge.clone()).collect();
    let ids = match snapshot {
        None => {
            plan::plan(&edges)
                .map_err(|e| BackupError::Bucket(e.to_string()))?
                .chain
        }
        Some(name) => {
            let guid = streams
                .iter()
                .find(|s| s.edge.to.name == name)
                .map(|s| s.edge.to.guid)
                .ok_or_else(|| {
                    BackupError::Bucket(format!("no backed-up snapshot is named {name}"))
                })?;
            plan::chain_to(&edges, guid)
                .map_err(|e| BackupError::Bucket(e.to_string()))?
                .ok_or_else(|| {
                    BackupError::Bucket(format!("no chain of streams leads to {name}"))
                })?
        }
    };
    if ids.is_empty() {
        return Err(BackupError::Bucket("the bucket holds no backup".into()));
    }
    ids.iter()
        .map(|id| {
            streams
                .iter()
                .find(|s| s.id.as_str() == id)
                .ok_or_else(|| BackupError::Bucket(format!("stream {id} vanished")))
        })
        .collect()
}

/// Verifies the newest backup: restored into a scratch dataset of a spare pool (one that holds
/// no copy of the project and that its placement allows: on another host, through its agent,
/// or on this one), else of this copy's own pool; every stream's SHA-256 checked against its
/// manifest, the snapshot received compared by GUID with the chain's end and with this copy's
/// own snapshot of that name; the scratch dataset removed.
async fn verify(
    cx: &AgentContext,
    sr: &StreamReplica,
    pool: &PoolName,
    (target, placement): (&str, &projstore_api::Placement),
    progress: &JobProgress,
) -> Result<String, BackupError> {
    let c = Copy::new(cx, sr, pool).map_err(|e| BackupError::Local(e.to_string()))?;
    // The error, and the stream whose object was found broken.
    let with_stream = |e: BackupError| {
        let stream = match &e {
            BackupError::Broken { stream, .. } => Some(stream.clone()),
            _ => None,
        };
        (e, stream)
    };
    let spares = spare_pools(cx, sr, placement);
    let mut found = Err((
        BackupError::Busy("no spare pool could take it".into()),
        None,
    ));
    // What failed on hosts tried before for what may be their own trouble (unreachable, their
    // pool or ZFS failing, no way to the bucket): a failing spare host does not fail every
    // verification, so one more is tried; a second such failure is the verification's (it may
    // well be the backup's: a chain ZFS refuses fails the same everywhere).
    let mut elsewhere: Vec<String> = Vec::new();
    let mut tried_all = false;
    for spare in spares
        .iter()
        .map(Some)
        .chain(spares.is_empty().then_some(None))
    {
        // Whether it failed for that host's own reasons.
        let mut host = false;
        found = match spare {
            Some(Spare::Peer(peer)) => {
                // What the peer must find: the chain's end as this copy lists the bucket.
                let bucket = open_bucket(&cx.client, target, &c.key.namespace, &c.key.name).await?;
                let listed = bucket.streams().await?;
                let chain = chain_of(&listed, None)?;
                progress.set_total(chain.iter().map(|s| s.manifest.stream.bytes).sum());
                let end = chain.last().map(|s| s.edge.to.guid).unwrap_or_default();
                let links = chain.len();
                let on = |why: String| BackupError::Local(format!("on node {}: {why}", peer.node));
                match peer.verify_backup(&c.key, &progress.done).await {
                    Err(e) => {
                        host = true;
                        Err((on(e.to_string()), None))
                    }
                    Ok(Err(failed)) if failed.busy => Err((
                        BackupError::Busy(format!("on node {}: {}", peer.node, failed.message)),
                        None,
                    )),
                    Ok(Err(failed)) => {
                        host = failed.host;
                        Err((on(failed.message), failed.stream))
                    }
                    Ok(Ok(v)) if v.guid != end.to_string() || v.streams != links => Err((
                        on(format!(
                            "it restored GUID {} from {} streams; the chain ends at {end} after {links}",
                            v.guid, v.streams
                        )),
                        None,
                    )),
                    Ok(Ok(v)) => {
                        let place = format!("spare pool {} (node {})", v.pool, peer.node);
                        Ok((v.snapshot, end, v.streams, place))
                    }
                }
            }
            Some(Spare::Here(zpool, name, free)) => {
                let found = restore_into_scratch(cx, zpool, *free, &c.key, target, progress)
                    .await
                    .map(|(s, n)| (s.name, s.guid, n, format!("spare pool {name}")));
                host = found.as_ref().is_err_and(host_side);
                found.map_err(|e| match e {
                    e if host => (
                        BackupError::Local(format!("on spare pool {name}: {e}")),
                        None,
                    ),
                    e => with_stream(e),
                })
            }
            None => {
                let free = cx
                    .pools
                    .state()
                    .iter()
                    .find(|p| p.name_any() == sr.spec.pool)
                    .and_then(|p| p.status.as_ref()?.free_bytes);
                restore_into_scratch(cx, pool, free, &c.key, target, progress)
                    .await
                    .map(|(s, n)| {
                        let place =
                            format!("this copy's own pool {} (no spare pool)", sr.spec.pool);
                        (s.name, s.guid, n, place)
                    })
                    .map_err(with_stream)
            }
        };
        // Busy there, or that host failed: the next spare pool.
        tried_all = true;
        match &found {
            Err((BackupError::Busy(_), _)) => {}
            Err((e, _)) if host && elsewhere.len() + 1 < MAX_SPARE_FAILURES => {
                elsewhere.push(e.to_string());
            }
            _ => {
                tried_all = false;
                break;
            }
        }
    }
    let (newest, guid, streams, place) = match found {
        Ok(found) => found,
        Err((e, stream)) if !elsewhere.is_empty() && (tried_all || stream.is_none()) => {
            // Those that failed, the last one too (when the spares ran out, it is among them
            // or was busy).
            let last = (!tried_all).then(|| e.to_string());
            let failed: Vec<String> = elsewhere.into_iter().chain(last).collect();
            return Err(BackupError::Local(format!(
                "verification failed on {} spare host(s): {}",
                failed.len(),
                failed.join("; ")
            )));
        }
        Err((e, Some(stream))) => {
            let u = (cx, sr, &c, &progress.done);
            return Err(upload_again(u, target, &stream, e).await);
        }
        Err((e, _)) => return Err(e),
    };
    let local = c.zfs.snapshots(&c.ds, &[]).await?;
    if let Some(mine) = local.iter().find(|s| s.name == newest)
        && mine.guid != guid
    {
        return Err(BackupError::Unverified(format!(
            "the backup's {newest} has GUID {guid}, this copy's {}",
            mine.guid
        )));
    }
    Ok(format!(
        "restored {newest} ({streams} streams) into a scratch dataset on {place}: SHA-256 and snapshot GUID {guid} match"
    ))
}

/// Spare hosts a verification tries that fail for what may be their own reasons.
const MAX_SPARE_FAILURES: usize = 2;

/// Whether a verification's failure may lie with the host that ran it (its setup, its pool,
/// its ZFS, its way to the bucket) rather than with the backup: another spare host may
/// succeed. Objects that fail their checks, chains that do not add up and unusable Secrets
/// are the backup's (or the target's) on every host.
fn host_side(e: &BackupError) -> bool {
    matches!(
        e,
        BackupError::Local(_) | BackupError::Zfs(_) | BackupError::Target(_)
    )
}

/// A stream verification found broken in the bucket is uploaded again from this copy, once
/// this copy read its object itself and found it broken too (a spare host's word alone
/// replaces nothing), and when it still has both snapshots of it; the verification stays
/// failed (loudly), and the next one checks the new object.
async fn upload_again(
    (cx, sr, c, progress): (&AgentContext, &StreamReplica, &Copy<'_>, &Progress),
    target: &str,
    stream: &str,
    failure: BackupError,
) -> BackupError {
    let again = async {
        let bucket = open_bucket(&cx.client, target, &c.key.namespace, &c.key.name).await?;
        let streams = bucket.streams().await?;
        let s = streams
            .iter()
            .find(|s| s.id.as_str() == stream)
            .ok_or_else(|| BackupError::Bucket(format!("{stream} is not in the bucket")))?;
        match crate::backup::restore::check_object(&bucket, &c.key, s).await {
            Err(BackupError::Broken { .. }) => {}
            Err(e) => return Err(e),
            Ok(()) => {
                return Err(BackupError::Local(
                    "its object reads whole and matches its manifest from this copy: left as it is"
                        .into(),
                ));
            }
        }
        let local = c.zfs.snapshots(&c.ds, &[]).await?;
        let here = |guid: u64| local.iter().find(|l| l.guid == guid);
        let u = Uploading {
            cx,
            sr,
            c,
            bucket: &bucket,
            progress,
        };
        let (from, to) = (
            s.edge.from.as_ref().map(|f| here(f.guid)),
            here(s.edge.to.guid),
        );
        if let (Some(to), None | Some(Some(_))) = (to, from) {
            let from = from.flatten();
            return upload_stream(u, &streams, from, to, true)
                .await
                .map(|(id, _)| format!("{id} was uploaded again from this copy"));
        }
        // This copy no longer has both its snapshots: the chain is routed around it, by a
        // stream from the last point before it this copy has (or a full stream) to the first
        // after it; the chain then takes the new stream (fewer streams), and GC removes the
        // broken one with those it bridges.
        let chain = chain_of(&streams, None)?;
        let points: Vec<u64> = chain.iter().map(|t| t.edge.to.guid).collect();
        let at = chain
            .iter()
            .position(|t| t.id.as_str() == stream)
            .ok_or_else(|| {
                BackupError::Local(format!(
                    "{stream} is not on the chain to the newest backup: left as it is"
                ))
            })?;
        let held: std::collections::HashSet<u64> = local.iter().map(|l| l.guid).collect();
        let broken = StreamId::parse(stream).map_err(BackupError::Bucket)?;
        let Some((before, after)) = bridge_over(&points, at, &held) else {
            // Nothing after it to route to (the restore points from there on are lost with it):
            // left, the chain would still end past it and every next backup build on it. Removed,
            // the chain ends before it, and the next backup continues from the last restore point
            // this copy has there (a full stream when none).
            // With it go the streams after it that no chain reaches then (restorable only
            // through it, that is never): GC keeps only what a chain reaches, and would never
            // find them. Those first, newest first, the broken one last: cut off half-way, the
            // next verification still finds it broken and this runs again.
            let edges: Vec<_> = streams
                .iter()
                .filter(|t| t.id != broken)
                .map(|t| t.edge.clone())
                .collect();
            let tail: Vec<_> = chain[at + 1..].iter().map(|t| t.edge.clone()).collect();
            let gone = stranded(&edges, &tail).map_err(|e| BackupError::Bucket(e.to_string()))?;
            for id in gone.iter().rev() {
                bucket
                    .delete(&StreamId::parse(id).map_err(BackupError::Bucket)?)
                    .await?;
            }
            bucket.delete(&broken).await?;
            return Ok(format!(
                "this copy has no snapshot the chain reaches after it, so {broken}{} removed: the chain ends before it, and the next backup continues it from there",
                if gone.is_empty() {
                    " was".to_owned()
                } else {
                    format!(" and the {} streams after it were", gone.len())
                }
            ));
        };
        let to =
            here(points[after]).ok_or_else(|| BackupError::Local("a snapshot vanished".into()))?;
        let from = match before {
            Some(i) => Some(
                here(points[i]).ok_or_else(|| BackupError::Local("a snapshot vanished".into()))?,
            ),
            None => None,
        };
        let (id, _) = upload_stream(u, &streams, from, to, false).await?;
        // The broken stream itself goes now (this copy read it broken): left, GC would keep
        // it as long as `keep` keeps the point it leads to, a point no chain restores.
        bucket.delete(&broken).await?;
        Ok(format!(
            "this copy no longer has both its snapshots, so {id} was uploaded to route the chain around it and {broken} removed"
        ))
    };
    // A repair is an upload: it takes one of this host's upload turns, and writes the bucket
    // only while this node holds the project's backup lease.
    let lease = backup_lease(cx, &c.key);
    let ns_turn = namespace_turns(cx, &c.key.namespace).acquire_owned().await;
    let turn = cx.uploads.clone().acquire_owned().await;
    let repaired = match (ns_turn, turn) {
        (Ok(_ns_turn), Ok(_turn)) => lease::leased(&lease, again).await,
        _ => Err(BackupError::Local("the agent is stopping".into())),
    };
    match repaired {
        Ok(done) => {
            tracing::warn!(project = %sr.spec.project, stream = %stream, done = %done, "a broken backup object repaired");
            BackupError::Local(format!(
                "{failure}; {done}: the next verification checks it"
            ))
        }
        Err(e) => BackupError::Local(format!("{failure}; {stream} not repaired: {e}")),
    }
}

/// The streams of `tail` (a chain's streams after a broken one that was removed) that no chain
/// of the `remaining` streams reaches: none reaches their base from the start.
fn stranded(remaining: &[plan::Edge], tail: &[plan::Edge]) -> Result<Vec<String>, plan::PlanError> {
    let rooted = plan::rooted_guids(remaining)?;
    Ok(tail
        .iter()
        .filter(|e| e.from.as_ref().is_some_and(|f| !rooted.contains(&f.guid)))
        .map(|e| e.id.clone())
        .collect())
}

/// Where a stream around the broken `points[at - 1] → points[at]` link of a chain (whose
/// points are the GUIDs its streams lead to, oldest first, after the empty start) goes, with
/// the snapshots `held`: from the last point before the link held (None: a full stream) to the
/// first point at or after its end held (indices into `points`). None when no point after it
/// is held.
fn bridge_over(
    points: &[u64],
    at: usize,
    held: &std::collections::HashSet<u64>,
) -> Option<(Option<usize>, usize)> {
    let after = (at..points.len()).find(|&j| held.contains(&points[j]))?;
    let before = (0..at).rev().find(|&i| held.contains(&points[i]));
    Some((before, after))
}

/// Where a verification restores to.
enum Spare {
    /// A pool of another host, through its agent (which picks its spare pool).
    Peer(crate::fetch::Peer),
    /// A pool of this host that holds no copy: its ZFS name, StoragePool name and free bytes.
    Here(PoolName, String, Option<u64>),
}

/// Whether a verification of a project placed by `placement` may use pool `p` for its
/// scratch dataset: Ready, and where the project's copies could go (a pinned project's data
/// goes to no other pool).
fn spare_for(p: &projstore_api::StoragePool, placement: &projstore_api::Placement) -> bool {
    p.status.as_ref().and_then(|s| s.phase) == Some(projstore_api::PoolPhase::Ready)
        && placement.pool.is_none()
        && (!p.spec.experimental || placement.tolerate_experimental)
        && placement.selects(p.labels())
}

/// Spare pools are tried in the order of a hash of project and pool, so projects spread.
fn spare_rank(key: &str, pool: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{key}\n{pool}").as_bytes()).to_vec()
}

/// Pools that hold a StreamReplica of the project, in any state.
fn holding(cx: &AgentContext, ns: &str, name: &str) -> std::collections::HashSet<String> {
    cx.copies_of(ns, name)
        .iter()
        .map(|r| r.spec.pool.clone())
        .collect()
}

/// The pools a verification may use that hold no copy of the project, best first.
fn spare_pools(
    cx: &AgentContext,
    sr: &StreamReplica,
    placement: &projstore_api::Placement,
) -> Vec<Spare> {
    let ns = sr.namespace().unwrap_or_default();
    let held = holding(cx, &ns, &sr.spec.project);
    let key = format!("{ns}/{}", sr.spec.project);
    let mut spares: Vec<_> = cx
        .all_pools
        .state()
        .into_iter()
        .filter(|p| !held.contains(&p.name_any()) && spare_for(p, placement))
        .collect();
    spares.sort_by_key(|p| spare_rank(&key, &p.name_any()));
    spares
        .into_iter()
        .filter_map(|p| {
            if p.spec.node_name == cx.node() {
                let zpool = PoolName::parse(&p.spec.pool_name).ok()?;
                let free = p.status.as_ref().and_then(|s| s.free_bytes);
                return Some(Spare::Here(zpool, p.name_any(), free));
            }
            let endpoint = p.status.as_ref()?.agent.as_ref()?.stream_endpoint.clone()?;
            let peer =
                crate::fetch::Peer::new(&endpoint, &p.spec.node_name, cx.tls().ok()?).ok()?;
            Some(Spare::Peer(peer))
        })
        .collect()
}

/// Restores the newest backup into the scratch dataset of `pool` (which has `free` bytes),
/// checks it, removes it (also when the work is dropped half-way); the newest snapshot
/// received, and how many streams the chain had. One verification at a time on this host (the
/// free space it was checked against is then its own), and none that would take more than
/// four fifths of the pool's free space: those are `Busy`.
async fn restore_into_scratch(
    cx: &AgentContext,
    pool: &PoolName,
    free: Option<u64>,
    key: &ProjectKey,
    target: &str,
    progress: &JobProgress,
) -> Result<(crate::zfs::SnapshotInfo, usize), BackupError> {
    let zfs = cx.zfs().map_err(|e| BackupError::Local(e.to_string()))?;
    let slot = Verifying::mark(cx)?;
    let bucket = open_bucket(&cx.client, target, &key.namespace, &key.name).await?;
    let streams = bucket.streams().await?;
    let chain: Vec<BucketStream> = chain_of(&streams, None)?.into_iter().cloned().collect();
    let bytes: u64 = chain.iter().map(|s| s.manifest.stream.bytes).sum();
    progress.set_total(bytes);
    if let Some(free) = free
        && bytes > free / 5 * 4
    {
        return Err(BackupError::Busy(format!(
            "the backup's {bytes} bytes would take more than four fifths of pool {pool}'s {free} free bytes"
        )));
    }
    // A scratch dataset of this run alone: a dropped run's cleanup never meets another's.
    let scratch = verify_scratch(pool, key)?;
    let mut guard = ScratchGuard(Some((zfs.clone(), scratch.clone())), Some(slot));
    let received = receive_chain(zfs, &bucket, key, &chain, &scratch, &progress.done, None).await;
    let cleared = crate::transfer::clear_staging(zfs, &scratch).await;
    if cleared.is_ok() {
        guard.0 = None;
    }
    drop(guard);
    let newest = received?;
    cleared.map_err(|e| BackupError::Local(e.to_string()))?;
    let want = chain.last().map(|s| s.edge.to.guid).unwrap_or_default();
    if newest.guid != want {
        return Err(BackupError::Unverified(format!(
            "the restored snapshot has GUID {}, the chain ends at {want}",
            newest.guid
        )));
    }
    Ok((newest, chain.len()))
}

/// Clears a scratch dataset when the verification that fills it is dropped half-way (or its
/// last clearing failed), in the background; the host's verification slot is given back
/// once that is done.
struct ScratchGuard(Option<(crate::zfs::Zfs, DatasetName)>, Option<Verifying>);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let slot = self.1.take();
        if let Some((zfs, ds)) = self.0.take() {
            tokio::spawn(async move {
                if let Err(e) = crate::transfer::clear_staging(&zfs, &ds).await {
                    tracing::warn!(dataset = %ds, error = %e, "cannot clear a verification's scratch dataset");
                }
                drop(slot);
            });
        }
    }
}

/// The stream server's side of a verification on a spare pool of this host, for the agent of
/// a copy of the project (the server checked that its node holds one): the project's own
/// backup target and placement, a pool of this node that holds no copy of it, and one such
/// verification at a time on this host.
pub fn verifier(cx: std::sync::Arc<AgentContext>) -> crate::server::VerifyBackup {
    std::sync::Arc::new(move |key, progress| {
        let cx = cx.clone();
        Box::pin(async move {
            verify_here(&cx, &key, progress)
                .await
                .map_err(|e| crate::server::VerifyFailed {
                    message: projstore_api::s3::one_line(&e.to_string()),
                    busy: matches!(e, BackupError::Busy(_)),
                    host: !matches!(e, BackupError::Busy(_)) && host_side(&e),
                    stream: match e {
                        BackupError::Broken { stream, .. } => Some(stream),
                        _ => None,
                    },
                })
        })
    })
}

async fn verify_here(
    cx: &AgentContext,
    key: &ProjectKey,
    progress: Progress,
) -> Result<crate::server::BackupVerified, BackupError> {
    let local = BackupError::Local;
    let project = Api::<Project>::namespaced(cx.client.clone(), &key.namespace)
        .get_opt(&key.name)
        .await
        .map_err(|e| local(format!("cannot read project {key}: {e}")))?
        .ok_or_else(|| local(format!("no project {key}")))?;
    let target = project
        .spec
        .backup
        .as_ref()
        .map(|b| b.target.clone())
        .ok_or_else(|| local(format!("{key} is not backed up")))?;
    let held = holding(cx, &key.namespace, &key.name);
    let mut mine: Vec<_> = cx
        .pools
        .state()
        .into_iter()
        .filter(|p| p.spec.node_name == cx.node() && !held.contains(&p.name_any()))
        .filter(|p| spare_for(p, &project.spec.placement))
        .collect();
    mine.sort_by_key(|p| spare_rank(&key.to_string(), &p.name_any()));
    let pool = mine.first().ok_or_else(|| {
        BackupError::Busy(format!("no pool of node {} is spare for {key}", cx.node()))
    })?;
    let zpool = PoolName::parse(&pool.spec.pool_name)?;
    let free = pool.status.as_ref().and_then(|s| s.free_bytes);
    let job = JobProgress {
        done: progress,
        ..JobProgress::default()
    };
    let (newest, streams) = restore_into_scratch(cx, &zpool, free, key, &target, &job).await?;
    tracing::info!(project = %key, pool = %pool.name_any(), snapshot = %newest.name, "backup verified on a spare pool");
    Ok(crate::server::BackupVerified {
        pool: pool.name_any(),
        snapshot: newest.name,
        guid: newest.guid.to_string(),
        streams,
    })
}

/// This host's one verification slot (a verification writes a project's whole chain); given
/// back when dropped.
struct Verifying(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Verifying {
    fn mark(cx: &AgentContext) -> Result<Self, BackupError> {
        let slot = cx.verifying.clone();
        if slot.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(BackupError::Busy(
                "this host verifies another backup now".into(),
            ));
        }
        Ok(Self(slot))
    }
}

impl Drop for Verifying {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `<pool>/recv/backup.<ns>/<name>`: a verification's scratch dataset (the `recv` staging
/// area, cleared at start-up).
fn verify_scratch(pool: &PoolName, key: &ProjectKey) -> Result<DatasetName, BackupError> {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pool.dataset(&format!(
        "{}/backup.{}/{}.v{run}",
        crate::transfer::RECV_STAGING,
        key.namespace,
        key.name
    ))
    .map_err(|e| BackupError::Local(e.to_string()))
}

/// Builds a new primary's dataset `ds` from the backup `from` names: the chain downloaded,
/// verified and received into the staging dataset, then renamed into place. Returns what
/// `status.restoredFrom` says.
pub(super) async fn restore_from_backup(
    cx: &AgentContext,
    sr: &StreamReplica,
    c: &Copy<'_>,
    from: &projstore_api::RestoreFrom,
    quota: u64,
) -> Result<String, ReplicaError> {
    // A namespace reads only its own backups (CRD rules cannot see an object's namespace).
    if from.namespace != c.key.namespace {
        return Err(format!(
            "restoreFrom names namespace {}: only backups of namespace {} may be restored here",
            from.namespace, c.key.namespace
        )
        .into());
    }
    restore(cx, sr, c, from, quota)
        .await
        .map_err(|e| ReplicaError::from(format!("restore from backup: {e}")))
}

async fn restore(
    cx: &AgentContext,
    sr: &StreamReplica,
    c: &Copy<'_>,
    from: &projstore_api::RestoreFrom,
    quota: u64,
) -> Result<String, BackupError> {
    let bucket = open_bucket(&cx.client, &from.target, &from.namespace, &from.name).await?;
    let streams = bucket.streams().await?;
    let chain: Vec<BucketStream> = chain_of(&streams, from.snapshot.as_deref())?
        .into_iter()
        .cloned()
        .collect();
    // The quota holds for a restore too: a backup larger than it is refused before a byte
    // lands (the streams' sizes are the data's, about).
    let bytes: u64 = chain.iter().map(|s| s.manifest.stream.bytes).sum();
    if bytes > quota {
        return Err(BackupError::Local(format!(
            "the backup's streams hold {bytes} bytes, more than the quota of {quota}"
        )));
    }
    let staging = crate::transfer::staging_dataset(c.pool, &c.key)?;
    crate::transfer::clear_staging(c.zfs, &staging)
        .await
        .map_err(|e| BackupError::Local(e.to_string()))?;
    let source = ProjectKey::new(&from.namespace, &from.name).map_err(BackupError::Local)?;
    // Bytes received so far show in status.transfer while it runs (the controller shows
    // them in the Project's status.backup).
    let progress = Progress::new();
    let _reporter = super::secondary::report_transfer(&cx.client, sr, progress.clone(), bytes);
    let hold = cx.cfg.run_dir.join(crate::backup::restore::HOLD_RESTORE);
    let received = receive_chain(
        c.zfs,
        &bucket,
        &source,
        &chain,
        &staging,
        &progress,
        Some(&hold),
    )
    .await;
    let newest = match received {
        Ok(n) => n,
        Err(e) => {
            let _ = crate::transfer::clear_staging(c.zfs, &staging).await;
            return Err(e);
        }
    };
    // Received without properties: the quota is set before the data is anyone's.
    let refquota = crate::zfs::PropertyName::parse("refquota")?;
    c.zfs.set(&staging, &refquota, &quota.to_string()).await?;
    c.zfs.create_parents(&c.ds).await?;
    c.zfs.rename(&staging, &c.ds).await?;
    Ok(describe(
        &from.target,
        &from.namespace,
        &from.name,
        &newest.name,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: i64) -> Option<Time> {
        Some(Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()))
    }
    fn now(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(s, 0).unwrap()
    }
    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn backups_come_on_interval_on_request_and_back_off_after_failures() {
        let never = BackupStatus::default();
        assert_eq!(backup_due(&never, DAY, None, now(1000)), Duration::ZERO);
        let done = BackupStatus {
            phase: Some(BackupPhase::Succeeded),
            time: at(1000),
            requested: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(
            backup_due(&done, DAY, Some("1"), now(1060)),
            DAY - Duration::from_secs(60)
        );
        assert_eq!(backup_due(&done, DAY, Some("2"), now(1060)), Duration::ZERO);
        // Said to run, but no job runs it (the agent restarted): again at once.
        let cut = BackupStatus {
            phase: Some(BackupPhase::Running),
            ..done.clone()
        };
        assert_eq!(backup_due(&cut, DAY, Some("1"), now(1060)), Duration::ZERO);
        let failed = |n| BackupStatus {
            phase: Some(BackupPhase::Failed),
            failures: Some(n),
            attempted_at: at(1000),
            time: at(0),
            ..Default::default()
        };
        assert_eq!(
            backup_due(&failed(1), DAY, None, now(1005)),
            Duration::from_secs(10)
        );
        assert_eq!(
            backup_due(&failed(3), DAY, None, now(1000)),
            Duration::from_secs(60)
        );
        assert_eq!(backup_due(&failed(30), DAY, None, now(1000)), MAX_BACKOFF);
        // Never longer than the interval itself.
        let short = Duration::from_secs(300);
        assert_eq!(backup_due(&failed(30), short, None, now(1000)), short);
    }

    #[test]
    fn restore_points_kept_are_the_newest_per_day_week_month_and_the_newest() {
        let snap = |i: u64, t: i64| crate::streams::Snap {
            name: crate::retention::managed_name(t),
            guid: 100 + i,
            // Another pool's txgs: not the order.
            createtxg: 1000 - i,
            time: t,
        };
        // Two a day for 10 days (day 0 = 1970-01-05, a Monday).
        let points: Vec<_> = (0..20u64)
            .map(|i| {
                snap(
                    i,
                    4 * 86400 + (i as i64 / 2) * 86400 + (i as i64 % 2) * 3600,
                )
            })
            .collect();
        let refs: Vec<&crate::streams::Snap> = points.iter().collect();
        let now = 20 * 86400;
        let keep = |d, w, m| projstore_api::BackupKeep {
            daily: d,
            weekly: w,
            monthly: m,
        };
        let none = keep_points(&refs, &keep(0, 0, 0), now);
        assert_eq!(none.into_iter().collect::<Vec<_>>(), vec![119]);
        let daily3 = keep_points(&refs, &keep(3, 0, 0), now);
        assert_eq!(daily3.into_iter().collect::<Vec<_>>(), vec![115, 117, 119]);
        // Weeks start on Monday: the newest of week 1 (days 0..6) and of week 2.
        let weekly = keep_points(&refs, &keep(0, 2, 0), now);
        assert_eq!(weekly.into_iter().collect::<Vec<_>>(), vec![113, 119]);
        // Today's points all stay while days are kept; yesterday's collapse to its newest.
        let late = 13 * 86400 + 7200;
        let daily1 = keep_points(&refs, &keep(1, 0, 0), late);
        assert_eq!(daily1.into_iter().collect::<Vec<_>>(), vec![118, 119]);
        let daily0 = keep_points(&refs, &keep(0, 0, 0), late);
        assert_eq!(daily0.into_iter().collect::<Vec<_>>(), vec![119]);
    }

    #[test]
    fn an_upload_waiting_for_its_turn_says_so_and_then_shows_its_bytes() {
        let p = JobProgress::default();
        let mut b = BackupStatus {
            message: Some("uploaded a--b (10 bytes)".into()),
            ..Default::default()
        };
        p.waiting
            .store(WAITS_FOR_NAMESPACE, std::sync::atomic::Ordering::Relaxed);
        p.show(&mut b);
        assert_eq!(
            b.message.as_deref(),
            Some("waiting: 2 uploads of this namespace already run on this host")
        );
        p.waiting
            .store(WAITS_FOR_HOST, std::sync::atomic::Ordering::Relaxed);
        p.show(&mut b);
        assert_eq!((b.bytes_done, b.bytes_total), (Some(0), None));
        assert_eq!(
            b.message.as_deref(),
            Some("waiting: 4 uploads already run on this host")
        );
        assert_eq!(b.attempted_at, None, "not begun: no attempt yet");
        p.begin();
        p.set_total(100);
        p.done.add(30);
        let mut b = BackupStatus::default();
        p.show(&mut b);
        assert_eq!(
            (b.bytes_done, b.bytes_total, b.message),
            (Some(30), Some(100), None)
        );
        assert!(b.attempted_at.is_some(), "the attempt counts from its turn");
    }

    #[test]
    fn only_what_may_be_a_hosts_own_trouble_sends_a_verification_to_another_spare() {
        let refusal = projstore_api::s3::Refusal {
            phase: projstore_api::BackupTargetPhase::Unreachable,
            reason: "Unreachable",
            message: "connection refused".into(),
        };
        for e in [
            BackupError::Local("on node b: the verification stalled".into()),
            BackupError::Target(refusal),
        ] {
            assert!(host_side(&e), "{e}");
        }
        for e in [
            BackupError::Broken {
                stream: "full--s1".into(),
                why: "SHA-256 differs".into(),
            },
            BackupError::Unverified("GUID differs".into()),
            BackupError::Bucket("no chain".into()),
            BackupError::Config("Secret x/y does not exist".into()),
            BackupError::Busy("another verification runs".into()),
        ] {
            assert!(!host_side(&e), "{e}");
        }
    }

    #[test]
    fn gc_never_takes_a_kept_restore_point_the_chain_to_the_newest_no_longer_passes() {
        use crate::streams::{Edge, Snap};
        let day = 86400;
        let snap = |name: &str, guid: u64, d: i64| Snap {
            name: name.into(),
            guid,
            createtxg: guid,
            time: d * day + 3600,
        };
        // (Managed names: retention keeps every snapshot a user named.)
        let (a, b, c, d) = (
            snap("ps-19700102T010000Z", 1, 1),
            snap("ps-19700103T010000Z", 2, 2),
            snap("ps-19700104T010000Z", 3, 3),
            snap("ps-19700105T010000Z", 4, 4),
        );
        let edge = |id: &str, from: Option<&Snap>, to: &Snap| Edge {
            id: id.into(),
            from: from.cloned(),
            to: to.clone(),
            bytes: 10,
        };
        // b--c broke, the uploader held neither b nor a: full--c routes the chain around it.
        let edges = vec![
            edge("full--a", None, &a),
            edge("a--b", Some(&a), &b),
            edge("b--c", Some(&b), &c),
            edge("c--d", Some(&c), &d),
            edge("full--c", None, &c),
        ];
        let plan = crate::streams::plan(&edges).unwrap();
        assert_eq!(plan.chain, vec!["full--c", "c--d"]);
        assert_eq!(plan.deletable, vec!["a--b", "b--c", "full--a"]);
        let keep = |daily| projstore_api::BackupKeep {
            daily,
            weekly: 0,
            monthly: 0,
        };
        let now = 4 * day + 7200;
        // a and b are kept (a day each): their streams stay; only the broken one goes.
        let kept = kept_chains(&edges, &keep(7), now).unwrap();
        let mut gone: Vec<_> = plan
            .deletable
            .iter()
            .filter(|id| !kept.contains(*id))
            .collect();
        gone.sort();
        assert_eq!(gone, vec!["b--c"]);
        // Nothing but the newest kept: everything superseded goes, as before.
        let kept = kept_chains(&edges, &keep(0), now).unwrap();
        assert!(
            plan.deletable.iter().all(|id| !kept.contains(id)),
            "{kept:?}"
        );
    }

    #[test]
    fn a_broken_link_is_bridged_from_the_last_point_held_before_it_to_the_first_after() {
        // Chain: (start) → 10 → 20 → 30 → 40 → 50; the link into 30 (index 2) is broken.
        let points = [10, 20, 30, 40, 50];
        let held = |g: &[u64]| {
            g.iter()
                .copied()
                .collect::<std::collections::HashSet<u64>>()
        };
        // 20 and 30 pruned here: from 10 to 40.
        assert_eq!(
            bridge_over(&points, 2, &held(&[10, 40, 50])),
            Some((Some(0), 3))
        );
        // Nothing before it held: a full stream to the first point after.
        assert_eq!(bridge_over(&points, 2, &held(&[50])), Some((None, 4)));
        // Its end held, its start not: from the last point before.
        assert_eq!(
            bridge_over(&points, 2, &held(&[10, 30])),
            Some((Some(0), 2))
        );
        // The full stream broken (index 0): a full stream to the first point held.
        assert_eq!(bridge_over(&points, 0, &held(&[20, 50])), Some((None, 1)));
        // Nothing after it held: no bridge.
        assert_eq!(bridge_over(&points, 2, &held(&[10, 20])), None);
    }

    #[test]
    fn streams_only_a_removed_broken_stream_led_to_are_stranded() {
        use crate::streams::{Edge, Snap};
        let snap = |guid: u64| Snap {
            name: format!("ps-{guid}"),
            guid,
            createtxg: guid,
            time: 0,
        };
        let edge = |from: Option<u64>, to: u64| Edge {
            id: format!("{}--{to}", from.map_or("full".into(), |f| f.to_string())),
            from: from.map(snap),
            to: snap(to),
            bytes: 1,
        };
        // full → 1 → 2 (broken, removed) → 3 → 4: 2--3 and 3--4 are reached by nothing.
        let remaining = [edge(None, 1), edge(Some(2), 3), edge(Some(3), 4)];
        let tail = [edge(Some(2), 3), edge(Some(3), 4)];
        assert_eq!(stranded(&remaining, &tail).unwrap(), vec!["2--3", "3--4"]);
        // A full stream to 3 keeps 3--4 reached: only 2--3 is stranded.
        let remaining = [
            edge(None, 1),
            edge(Some(2), 3),
            edge(Some(3), 4),
            edge(None, 3),
        ];
        assert_eq!(stranded(&remaining, &tail).unwrap(), vec!["2--3"]);
        // A full stream to 2 beside the broken one: nothing is.
        let remaining = [
            edge(None, 1),
            edge(None, 2),
            edge(Some(2), 3),
            edge(Some(3), 4),
        ];
        assert_eq!(stranded(&remaining, &tail).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_job_cut_off_after_finishing_a_stream_still_moves_the_chains_end() {
        let p = JobProgress::default();
        let mut b = BackupStatus {
            last_snapshot: Some("ps-1".into()),
            ..Default::default()
        };
        p.show(&mut b);
        assert_eq!(b.last_snapshot.as_deref(), Some("ps-1"));
        p.reach("ps-2");
        p.settle(&mut b);
        assert_eq!(b.last_snapshot.as_deref(), Some("ps-2"));
    }

    #[test]
    fn a_spare_pool_is_ready_and_one_the_projects_placement_allows() {
        let pool = |labels: serde_json::Value, experimental: bool, phase: &str| {
            serde_json::from_value::<projstore_api::StoragePool>(serde_json::json!({
                "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool",
                "metadata": {"name": "p", "labels": labels},
                "spec": {"nodeName": "n", "poolName": "tank", "vdevs": [{"type": "file", "path": "/x"}],
                    "experimental": experimental},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let placement =
            |v: serde_json::Value| serde_json::from_value::<projstore_api::Placement>(v).unwrap();
        let any = placement(serde_json::json!({}));
        let ssd = placement(serde_json::json!({"poolSelector": {"matchLabels": {"disk": "ssd"}}}));
        let pinned = placement(serde_json::json!({"pool": "p"}));
        let brave = placement(serde_json::json!({"tolerateExperimental": true}));
        let plain = pool(serde_json::json!({"disk": "ssd"}), false, "Ready");
        assert!(spare_for(&plain, &any) && spare_for(&plain, &ssd));
        assert!(!spare_for(
            &pool(serde_json::json!({"disk": "hdd"}), false, "Ready"),
            &ssd
        ));
        assert!(
            !spare_for(&plain, &pinned),
            "a pinned project's data goes nowhere else"
        );
        assert!(!spare_for(
            &pool(serde_json::json!({}), false, "NotReady"),
            &any
        ));
        let trial = pool(serde_json::json!({}), true, "Ready");
        assert!(!spare_for(&trial, &any) && spare_for(&trial, &brave));
    }

    #[test]
    fn a_copy_that_stops_uploading_no_longer_says_it_runs_one() {
        let mut st = StreamReplicaStatus {
            backup: Some(BackupStatus {
                phase: Some(BackupPhase::Running),
                attempted_at: at(5),
                bytes_done: Some(7),
                last_snapshot: Some("ps-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        not_running(&mut st, "another copy uploads the backups");
        let b = st.backup.unwrap();
        assert_eq!((b.phase, b.attempted_at, b.bytes_done), (None, None, None));
        assert_eq!(
            b.last_snapshot.as_deref(),
            Some("ps-1"),
            "what was backed up stays"
        );
    }

    #[test]
    fn verification_follows_the_target_and_requests_at_most_every_spacing() {
        assert_eq!(
            verify_due(&BackupStatus::default(), 7, Some("1"), now(0)),
            None
        );
        let b = BackupStatus {
            last_snapshot: Some("ps-1".into()),
            verify_time: at(1000),
            verify_requested: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(
            verify_due(&b, 7, Some("1"), now(1000 + 86400)),
            Some(6 * DAY)
        );
        assert_eq!(
            verify_due(&b, 7, Some("2"), now(1010)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            verify_due(&b, 7, Some("2"), now(1100)),
            Some(Duration::ZERO)
        );
        let first = BackupStatus {
            last_snapshot: Some("ps-1".into()),
            ..Default::default()
        };
        assert_eq!(verify_due(&first, 7, None, now(5)), Some(Duration::ZERO));
    }
}

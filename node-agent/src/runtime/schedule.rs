//! When the agent works on its StreamReplicas: event-driven, never polled.
//!
//! A replica is reconciled when it changes (spec, labels, annotations: not its status, which
//! the agent writes itself), when it asked to be (a primary's next scheduled snapshot), after
//! a failure with a growing backoff, when the space its dataset uses changed (one `zfs list`
//! per pool and tick finds those), once an hour as a resync, and all of them whenever the
//! agent opens again for work (sanity checks passing, heartbeat renewed). The controller
//! turns what the agent must act on into changes of its replicas: the primary's newest
//! snapshot for secondaries, the Project's generation and on-demand annotations for the
//! primary. At most [`CONCURRENCY`] replicas are worked on at once, never one twice, and at
//! most [`RECEIVES`] of them receive.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{StreamExt, TryStreamExt, stream};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ApplierConfig, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use projstore_api::{ReplicaPhase, StreamReplica, StreamReplicaStatus};
use serde_json::Value;

use super::{AgentContext, replica};

/// Replicas worked on at once.
pub const CONCURRENCY: u16 = 8;
/// Of those, passes that receive a live send at once: the other slots stay free for
/// primaries' snapshots and every short pass, however long receives take (a new copy's full
/// send, a slow source). A copy that finds none free waits outside the scheduler's slots and
/// is woken when one is given back ([`ReceiveSlots`]).
pub const RECEIVES: usize = CONCURRENCY as usize / 2;
/// A replica with nothing due is still looked at this often.
pub const RESYNC: Duration = Duration::from_secs(3600);
/// A replica is poked (looked at for a change outside its object) at most this often.
pub const POKE_EVERY: Duration = Duration::from_secs(30);
/// Backoff after the first failure; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The replica scheduler of one agent.
pub struct Replicas {
    /// This node's replicas (server-side label selector `projstore.io/node=<node>`).
    pub store: Store<StreamReplica>,
    shared: Arc<AgentContext>,
    everything: mpsc::UnboundedSender<()>,
    pokes: mpsc::UnboundedSender<ObjectRef<StreamReplica>>,
    poked: Mutex<HashMap<ObjectRef<StreamReplica>, std::time::Instant>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replicas {
    /// Starts watching this node's replicas; no work is done until [`Replicas::open`].
    pub fn start(shared: Arc<AgentContext>) -> Self {
        let (client, cfg) = (&shared.client, &shared.cfg);
        let (store, writer) = reflector::store::<StreamReplica>();
        let selector = format!("{}={}", projstore_api::NODE_LABEL, cfg.node_name);
        let mut seen: HashMap<ObjectRef<StreamReplica>, u64> = HashMap::new();
        let changes = reflector::reflector(
            writer,
            watcher(
                Api::<StreamReplica>::all(client.clone()),
                watcher::Config::default().labels(&selector),
            )
            .default_backoff(),
        )
        .applied_objects()
        .try_filter_map(move |sr| {
            let key = ObjectRef::from_obj(&sr);
            let print = fingerprint(&sr);
            let changed = seen.insert(key.clone(), print) != Some(print);
            futures::future::ready(Ok(changed.then_some(key)))
        });
        let (everything, all_rx) = mpsc::unbounded::<()>();
        let all_of = store.clone();
        let all = all_rx
            .flat_map(move |()| {
                stream::iter(
                    all_of
                        .state()
                        .iter()
                        .map(|sr| ObjectRef::from_obj(&**sr))
                        .collect::<Vec<_>>(),
                )
            })
            .map(Ok);
        let (pokes, poked) = mpsc::unbounded::<ObjectRef<StreamReplica>>();
        let _ = shared.receives.wake.set(pokes.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let queue = stream::select(stream::select(changes, all), poked.map(Ok)).take_until(stopped);
        let work = applier(
            |sr, sh| Box::pin(reconcile(sr, sh)),
            |_, never: &Infallible, _| match *never {},
            shared.clone(),
            store.clone(),
            queue,
            ApplierConfig::default().concurrency(CONCURRENCY),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "replica scheduler");
            }
        });
        Self {
            store,
            shared,
            everything,
            pokes,
            poked: Mutex::default(),
            stop: Some(stop),
            task: tokio::spawn(work),
        }
    }

    /// Work may start: every replica is looked at once now, then as events say.
    pub fn open(&self) {
        if !self.shared.open.swap(true, Ordering::SeqCst) {
            let _ = self.everything.unbounded_send(());
        }
    }

    /// Looks at `sr` now: something the agent sees outside the replica object changed (the
    /// space its dataset uses).
    /// At most once per [`POKE_EVERY`] per replica, whatever the caller sees.
    pub fn poke(&self, sr: &StreamReplica) {
        let key = ObjectRef::from_obj(sr);
        let mut last = self.poked.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < POKE_EVERY)
        {
            return;
        }
        last.insert(key.clone(), now);
        let _ = self.pokes.unbounded_send(key);
    }

    /// No new work (a pass already running finishes).
    pub fn close(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
    }

    /// Stops taking work and waits for passes in progress (a receive, a stream write) to end.
    pub async fn stop(mut self) {
        self.close();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(120), &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("replica work still running after 120 s: leaving it to crash recovery");
            self.task.abort();
        }
    }
}

/// How long a slot given back is kept for the copy woken for it.
pub const RESERVED_FOR: Duration = Duration::from_secs(30);

/// The live receives this host runs at once, and the copies waiting for one, first come
/// first served: a slot given back is kept for the copy that waited longest, which is woken,
/// for [`RESERVED_FOR`]; if it does not come for it by then (it no longer needs one, or is
/// gone), the next in line gets it.
pub struct ReceiveSlots {
    limit: usize,
    reserved_for: Duration,
    state: Mutex<Waiting>,
    /// Where a waiting copy is woken: the scheduler's queue.
    wake: std::sync::OnceLock<mpsc::UnboundedSender<ObjectRef<StreamReplica>>>,
}

#[derive(Default)]
struct Waiting {
    /// Slots taken or kept for a woken copy.
    running: usize,
    queue: std::collections::VecDeque<ObjectRef<StreamReplica>>,
    kept: Vec<(ObjectRef<StreamReplica>, std::time::Instant)>,
}

impl Waiting {
    /// Slots kept longer than `reserved_for` for copies that did not come (but `coming`) go
    /// to the next in line.
    fn expire(
        &mut self,
        reserved_for: Duration,
        coming: Option<&ObjectRef<StreamReplica>>,
        woken: &mut Vec<ObjectRef<StreamReplica>>,
    ) {
        let now = std::time::Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.kept)
            .into_iter()
            .partition(|(c, at)| Some(c) != coming && now.duration_since(*at) > reserved_for);
        self.kept = kept;
        for _ in expired {
            self.give_back(woken);
        }
    }

    /// A slot given back: kept for the first in line, who is to be woken; else free.
    fn give_back(&mut self, woken: &mut Vec<ObjectRef<StreamReplica>>) {
        match self.queue.pop_front() {
            Some(next) => {
                self.kept.push((next.clone(), std::time::Instant::now()));
                woken.push(next);
            }
            None => self.running = self.running.saturating_sub(1),
        }
    }
}

/// One of the [`RECEIVES`]; dropping it hands it on.
pub struct ReceiveSlot(Arc<ReceiveSlots>);

impl ReceiveSlots {
    pub fn new(limit: usize, reserved_for: Duration) -> Self {
        Self {
            limit,
            reserved_for,
            state: Mutex::default(),
            wake: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` on the state, then wakes whom it says, and hands on what is kept for them if
    /// they do not come for it in time.
    fn with<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Waiting, &mut Vec<ObjectRef<StreamReplica>>) -> T,
    ) -> T {
        let mut woken = Vec::new();
        let out = f(
            &mut self.state.lock().unwrap_or_else(|p| p.into_inner()),
            &mut woken,
        );
        self.wake_up(woken);
        out
    }

    fn wake_up(self: &Arc<Self>, woken: Vec<ObjectRef<StreamReplica>>) {
        for copy in woken {
            if let Some(wake) = self.wake.get() {
                let _ = wake.unbounded_send(copy);
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let slots = self.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(slots.reserved_for + Duration::from_millis(100)).await;
                    slots.expire();
                });
            }
        }
    }

    /// Hands on the slots kept too long for copies that did not come.
    fn expire(self: &Arc<Self>) {
        self.with(|w, woken| w.expire(self.reserved_for, None, woken));
    }

    /// A slot for `copy`, or None: it then waits in line and is woken when one is kept for
    /// it.
    pub fn take(self: &Arc<Self>, copy: ObjectRef<StreamReplica>) -> Option<ReceiveSlot> {
        let got = self.with(|w, woken| {
            w.expire(self.reserved_for, Some(&copy), woken);
            if let Some(i) = w.kept.iter().position(|(c, _)| c == &copy) {
                w.kept.remove(i);
                return true;
            }
            if w.running < self.limit {
                w.running += 1;
                w.queue.retain(|q| q != &copy);
                return true;
            }
            if !w.queue.contains(&copy) {
                w.queue.push_back(copy);
            }
            false
        });
        got.then(|| ReceiveSlot(self.clone()))
    }
}

impl Drop for ReceiveSlot {
    fn drop(&mut self) {
        self.0.with(Waiting::give_back);
    }
}

/// What of a replica the agent acts on: everything but its status.
fn fingerprint(sr: &StreamReplica) -> u64 {
    let m = &sr.metadata;
    let what = serde_json::to_string(&(&sr.spec, &m.annotations, &m.labels, &m.deletion_timestamp))
        .unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    what.hash(&mut h);
    h.finish()
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// A replica this agent cannot work on: it keeps what it held and says why.
fn refused(sr: &StreamReplica, why: String) -> StreamReplicaStatus {
    StreamReplicaStatus {
        phase: Some(ReplicaPhase::Error),
        last_error: Some(why),
        ..sr.status.clone().unwrap_or_default()
    }
}

/// The merge patch from the status as the agent last saw it (`current`) to `new`: the fields
/// that changed, and nulls for those `new` no longer has. A field `new` only carries over is
/// not sent, so a newer value on the server stays. `transfer` is the one field written
/// during a pass (the progress reporter): a status without it always clears it.
fn status_patch(current: &Value, new: &Value) -> Value {
    let mut patch = serde_json::Map::new();
    if let Some(new) = new.as_object() {
        for (k, v) in new {
            if current.get(k) != Some(v) {
                patch.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(old) = current.as_object() {
        for k in old.keys() {
            if new.get(k).is_none() {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    if new.get("transfer").is_none() {
        patch.insert("transfer".into(), Value::Null);
    }
    Value::Object(patch)
}

/// What a pass writes, if anything: the merge patch from `seen` (the status as the watch last
/// brought it) to `new`. When `seen` is not what this agent's last pass wrote (`last`), the
/// watch has not brought that back yet (a pass right after another, e.g. one woken for a
/// receive just after it wrote Syncing) or someone else changed it: a difference from `seen`
/// would then leave out fields that `seen` already shows as `new` has them, and the server
/// would keep what the last pass wrote (a copy Syncing for good). So every field of `new` is
/// sent.
fn pass_patch(seen: &Value, last: Option<&Value>, new: &Value) -> Option<Value> {
    let mut patch = status_patch(seen, new);
    let stale = last.is_some_and(|last| !super::same_status(seen, last));
    if stale {
        if let (Some(p), Some(new)) = (patch.as_object_mut(), new.as_object()) {
            for (k, v) in new {
                p.insert(k.clone(), v.clone());
            }
        }
        return Some(patch);
    }
    (!super::same_status(seen, &patch)).then_some(patch)
}

#[tracing::instrument(skip_all, fields(project = %format!("{}/{}", sr.namespace().unwrap_or_default(), sr.spec.project), pool = %sr.spec.pool))]
async fn reconcile(sr: Arc<StreamReplica>, sh: Arc<AgentContext>) -> Result<Action, Infallible> {
    if sh.zfs.is_none() || !sh.open.load(Ordering::SeqCst) {
        // Opening again looks at every replica.
        return Ok(Action::await_change());
    }
    let key = format!("{}/{}", sr.namespace().unwrap_or_default(), sr.name_any());
    if sh.cfg.tls.is_none() || sh.own_pool(&sr.spec.pool).is_none() {
        // Not this agent's to work on: no backup work from it either.
        replica::stop_backup_job(&sh, &sr);
    }
    let (status, due) = match sh.own_pool(&sr.spec.pool) {
        Some(_) if sh.cfg.tls.is_none() => (
            refused(&sr, "this agent has no TLS identity (--tls-dir)".into()),
            None,
        ),
        Some(pool) => replica::reconcile(&sh, &sr, &pool).await,
        None => (
            refused(
                &sr,
                format!("pool {} is not one of this node's", sr.spec.pool),
            ),
            None,
        ),
    };
    let current = serde_json::to_value(&sr.status).unwrap_or_default();
    let new = serde_json::to_value(&status).unwrap_or_default();
    let uid = sr.metadata.uid.clone().unwrap_or_default();
    let last = sh
        .written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .cloned();
    if let Some(patch) = pass_patch(&current, last.as_ref(), &new) {
        let api: Api<StreamReplica> =
            Api::namespaced(sh.client.clone(), &sr.namespace().unwrap_or_default());
        let written = api
            .patch_status(
                &sr.name_any(),
                &PatchParams::apply(super::MANAGER),
                &Patch::Merge(&serde_json::json!({ "status": patch })),
            )
            .await;
        let mut last = sh.written.lock().unwrap_or_else(|p| p.into_inner());
        match written {
            Ok(_) => {
                // Replicas gone from this node leave theirs behind: every 256 new ones, only
                // those still here are kept.
                if last.insert(uid, new).is_none() && last.len().is_multiple_of(256) {
                    let here: std::collections::HashSet<String> = sh
                        .replicas
                        .state()
                        .iter()
                        .filter_map(|r| r.metadata.uid.clone())
                        .collect();
                    last.retain(|uid, _| here.contains(uid));
                }
            }
            Err(e) => {
                // What the server holds is not known: the next pass goes by the watch.
                last.remove(&uid);
                tracing::warn!(replica = %key, error = %e, "cannot write replica status");
            }
        }
    }
    let mut failures = sh.failures.lock().unwrap_or_else(|p| p.into_inner());
    let next = if replica::plans::unsettled(&status) {
        let n = failures.entry(key).or_default();
        *n = n.saturating_add(1);
        backoff(*n)
    } else {
        failures.remove(&key);
        due.unwrap_or(RESYNC).min(RESYNC)
    };
    Ok(Action::requeue(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_beyond_the_receive_slots_wait_in_line_and_are_woken_in_turn() {
        let copy = |name: &str| ObjectRef::<StreamReplica>::new(name).within("ns");
        let slots = Arc::new(ReceiveSlots::new(2, Duration::from_millis(200)));
        let (wake, mut woken) = mpsc::unbounded();
        slots.wake.set(wake).unwrap();
        let a = slots.take(copy("a")).unwrap();
        let b = slots.take(copy("b")).unwrap();
        // Full: c, d wait in line (c asking twice keeps its place), and nobody is woken yet.
        assert!(slots.take(copy("c")).is_none());
        assert!(slots.take(copy("d")).is_none());
        assert!(slots.take(copy("c")).is_none());
        assert!(woken.try_recv().is_err());
        // A slot given back is kept for the first in line, who is woken: nobody else gets it.
        drop(a);
        assert_eq!(woken.try_recv().unwrap(), copy("c"));
        assert!(
            slots.take(copy("e")).is_none(),
            "a slot kept for c went to e"
        );
        let c = slots.take(copy("c")).unwrap();
        // Next in line: d; d does not come for it, and after a while it goes on to e.
        drop(b);
        assert_eq!(woken.try_recv().unwrap(), copy("d"));
        assert!(slots.take(copy("f")).is_none());
        std::thread::sleep(Duration::from_millis(300));
        assert!(slots.take(copy("f")).is_none(), "f is behind e");
        assert_eq!(woken.try_recv().unwrap(), copy("e"));
        let e = slots.take(copy("e")).unwrap();
        // d, late, waits in line again; then f and d get the slots given back, in turn.
        assert!(slots.take(copy("d")).is_none());
        drop(c);
        assert_eq!(woken.try_recv().unwrap(), copy("f"));
        drop(e);
        assert_eq!(woken.try_recv().unwrap(), copy("d"));
        let (f, d) = (
            slots.take(copy("f")).unwrap(),
            slots.take(copy("d")).unwrap(),
        );
        drop((f, d));
        // Nobody waits: the slots are free for anyone.
        assert!(woken.try_recv().is_err());
        let both = (slots.take(copy("g")), slots.take(copy("h")));
        assert!(both.0.is_some() && both.1.is_some());
    }

    #[tokio::test]
    async fn a_slot_kept_for_a_copy_that_does_not_come_goes_on_by_itself() {
        let copy = |name: &str| ObjectRef::<StreamReplica>::new(name).within("ns");
        let slots = Arc::new(ReceiveSlots::new(1, Duration::from_millis(200)));
        let (wake, mut woken) = mpsc::unbounded();
        slots.wake.set(wake).unwrap();
        let a = slots.take(copy("a")).unwrap();
        assert!(slots.take(copy("b")).is_none());
        assert!(slots.take(copy("c")).is_none());
        drop(a);
        assert_eq!(woken.next().await, Some(copy("b")));
        // b never comes, and nobody else asks: c is woken all the same, and its slot waits.
        let next = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(next.unwrap(), Some(copy("c")));
        assert!(slots.take(copy("c")).is_some());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn only_what_the_agent_acts_on_changes_the_fingerprint() {
        let sr: StreamReplica = serde_json::from_value(serde_json::json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StreamReplica",
            "metadata": {"name": "p-a", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"project": "p", "pool": "a", "node": "n", "role": "Secondary", "epoch": 1},
        }))
        .unwrap();
        let mut status_only = sr.clone();
        status_only.metadata.resource_version = Some("2".into());
        status_only.status = serde_json::from_value(serde_json::json!({"phase": "Ready"})).unwrap();
        assert_eq!(fingerprint(&sr), fingerprint(&status_only));
        let mut annotated = sr.clone();
        annotated.metadata.annotations = Some(
            [(
                projstore_api::contract::PRIMARY_SNAPSHOT.to_owned(),
                "42".to_owned(),
            )]
            .into(),
        );
        assert_ne!(fingerprint(&sr), fingerprint(&annotated));
        let mut promoted = sr.clone();
        promoted.spec.role = projstore_api::ReplicaRole::Primary;
        assert_ne!(fingerprint(&sr), fingerprint(&promoted));
    }

    #[test]
    fn a_pass_after_a_write_the_watch_has_not_brought_back_sends_its_whole_status() {
        let ready = serde_json::json!({"phase": "Ready", "appliedSnapshot": {"guid": "1"}});
        let syncing = serde_json::json!({"phase": "Syncing", "appliedSnapshot": {"guid": "1"}});
        let applied = serde_json::json!({"phase": "Ready", "appliedSnapshot": {"guid": "2"}});
        // The last pass wrote Syncing; the watch still shows Ready: the phase is sent although
        // `seen` has it so.
        let patch = pass_patch(&ready, Some(&syncing), &applied).unwrap();
        assert_eq!(patch["phase"], "Ready");
        assert_eq!(patch["appliedSnapshot"]["guid"], "2");
        // Once the watch shows what was written, only the difference goes.
        let patch = pass_patch(&syncing, Some(&syncing), &applied).unwrap();
        assert_eq!(patch["phase"], "Ready");
        let patch = pass_patch(&applied, Some(&applied), &applied);
        assert!(patch.is_none(), "nothing changed: nothing written");
        // Nothing written before (a new agent): the watch is all there is.
        let patch = pass_patch(&ready, None, &applied).unwrap();
        assert!(patch.get("phase").is_none());
    }

    #[test]
    fn a_status_patch_sends_what_changed_and_always_clears_the_transfer() {
        let current = serde_json::json!({"phase": "Syncing", "usedBytes": 5, "lagSeconds": 9});
        let new = serde_json::json!({"phase": "Ready", "usedBytes": 5});
        assert_eq!(
            status_patch(&current, &new),
            serde_json::json!({"phase": "Ready", "lagSeconds": null, "transfer": null})
        );
        // Nothing changed: only the transfer's null, which writes nothing new.
        let same = status_patch(&new, &new);
        assert_eq!(same, serde_json::json!({"transfer": null}));
        assert!(super::super::same_status(&new, &same));
    }

    #[test]
    fn errors_behind_copies_and_failed_mounts_are_retried() {
        let unsettled =
            |v: serde_json::Value| replica::plans::unsettled(&serde_json::from_value(v).unwrap());
        let cond = |status: &str| {
            serde_json::json!({"type": "Mounted", "status": status, "reason": "R", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"})
        };
        assert!(unsettled(serde_json::json!({"phase": "Error"})));
        assert!(unsettled(serde_json::json!({"phase": "Syncing"})));
        assert!(unsettled(
            serde_json::json!({"phase": "Ready", "conditions": [cond("False")]})
        ));
        assert!(!unsettled(
            serde_json::json!({"phase": "Ready", "conditions": [cond("True")]})
        ));
        assert!(!unsettled(serde_json::json!({"phase": "Trashed"})));
    }
}

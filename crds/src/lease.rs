//! One holder at a time, on a `coordination.k8s.io/v1` Lease: the controller's leader
//! election, and the agents' backup leases (one node at a time writes a project's objects in
//! its bucket). A holder renews; another takes over once it has not renewed for the lease's
//! duration. Every write carries the resourceVersion it read, so of two that try at once,
//! one wins.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Who we are and which Lease we compete for.
#[derive(Debug, Clone)]
pub struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The field manager our writes are recorded under.
    pub manager: String,
    /// The Lease's resourceVersion as we last saw it, and since when (our monotonic clock):
    /// whether a holder stopped renewing is told by how long its Lease stood unchanged here,
    /// never by comparing its clock with ours. Clones share it.
    pub observed: Observed,
}

/// See [`Election::observed`].
#[derive(Debug, Clone, Default)]
pub struct Observed(std::sync::Arc<std::sync::Mutex<Option<(String, tokio::time::Instant)>>>);

impl Observed {
    /// How long the Lease has stood at `version` as far as we saw (zero when it just changed
    /// or was never seen before).
    fn unchanged_for(&self, version: &str) -> Duration {
        let now = tokio::time::Instant::now();
        let Ok(mut seen) = self.0.lock() else {
            return Duration::ZERO;
        };
        match &*seen {
            Some((v, since)) if v == version => now - *since,
            _ => {
                *seen = Some((version.to_owned(), now));
                Duration::ZERO
            }
        }
    }
}

/// Why a holder stopped holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Another holder has it now (None: nobody, it was released under us).
    TakenBy(Option<String>),
    /// Renewals failed for two thirds of the duration: another may take it any moment.
    Unrenewed(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TakenBy(Some(h)) => write!(f, "{h} holds the lease now"),
            Self::TakenBy(None) => write!(f, "the lease was released"),
            Self::Unrenewed(e) => write!(f, "the lease could not be renewed: {e}"),
        }
    }
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(crate::units::jiff_of(t))
}

/// The longest any Lease is waited for, whatever duration it claims.
pub const MAX_LEASE: Duration = Duration::from_secs(300);

/// Whether a Lease as it stands is free for `identity`: unheld (no holder, or released), ours,
/// or unchanged (not renewed) for longer than its duration as we saw it. The duration is the
/// longer of the Lease's own and `ours` (a holder configured with a longer one is not taken
/// early), at most [`MAX_LEASE`] (a Lease cannot hold others off for ever by claiming more).
pub fn free_for(spec: &LeaseSpec, identity: &str, unchanged_for: Duration, ours: Duration) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let lasts = spec
        .lease_duration_seconds
        .map_or(ours, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .max(ours)
        .min(MAX_LEASE);
    unchanged_for > lasts
}

impl Election {
    fn post_params(&self) -> PostParams {
        PostParams {
            field_manager: Some(self.manager.clone()),
            ..Default::default()
        }
    }

    fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.manager.clone()),
            ..Default::default()
        }
    }

    /// One attempt to take or keep the Lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Utc::now();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(micro(now)),
                        renew_time: Some(micro(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&self.post_params(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                // Without a version, no write of ours could be conditional: never taken so.
                let Some(version) = lease
                    .metadata
                    .resource_version
                    .clone()
                    .filter(|v| !v.is_empty())
                else {
                    return Ok(false);
                };
                let unchanged = self.observed.unchanged_for(&version);
                if !free_for(&spec, &self.identity, unchanged, self.duration) {
                    return Ok(false);
                }
                let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": version},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": secs,
                        "renewTime": micro(now),
                        "acquireTime": if mine { spec.acquire_time.clone() } else { Some(micro(now)) },
                        "leaseTransitions": transitions,
                    }
                });
                // The resourceVersion makes this a compare-and-swap: two cannot both win.
                match self
                    .api
                    .patch(&self.name, &self.patch_params(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Who holds the Lease now (None: nobody, or no Lease).
    pub async fn holder(&self) -> Result<Option<String>, kube::Error> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// [`Self::try_acquire`], given up when the API server has not answered by `deadline`.
    pub async fn try_acquire_by(&self, deadline: tokio::time::Instant) -> Result<bool, String> {
        match tokio::time::timeout_at(deadline, self.try_acquire()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the API server did not answer in time".into()),
        }
    }

    /// Waits until we hold the Lease; returns when the request that took it was sent (what
    /// [`Self::hold_since`] counts from).
    pub async fn acquire(&self) -> tokio::time::Instant {
        loop {
            let sent = tokio::time::Instant::now();
            match self.try_acquire_by(sent + self.duration / 3).await {
                Ok(true) => return sent,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "cannot take the lease"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews the Lease taken (or last renewed) by a request sent at `taken` until another
    /// holder has it or no renewal got through for two thirds of the duration, counted from
    /// when the last successful one was sent; no request is waited on past that (a hung API
    /// server stops us too). Returns why, by then at the latest: the caller stops at once, a
    /// third of the duration before another may take over.
    pub async fn hold_since(&self, taken: tokio::time::Instant) -> Lost {
        let mut renewed = taken;
        let mut wait = self.duration / 3;
        loop {
            let deadline = renewed + self.duration * 2 / 3;
            tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(deadline)).await;
            let sent = tokio::time::Instant::now();
            if sent >= deadline {
                return Lost::Unrenewed(format!(
                    "not renewed for {} s",
                    (sent - renewed).as_secs()
                ));
            }
            // After a failure, tried again soon: there is until the deadline.
            wait = self.duration / 10;
            match self.try_acquire_by(deadline).await {
                Ok(true) => (renewed, wait) = (sent, self.duration / 3),
                Ok(false) => match tokio::time::timeout_at(deadline, self.holder()).await {
                    // A write of someone else's in between (a label): still ours.
                    Ok(Ok(Some(h))) if h == self.identity => {}
                    Ok(Ok(h)) => return Lost::TakenBy(h),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, lease = %self.name, "cannot read the lease")
                    }
                    Err(_) => {}
                },
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "lease renewal failed"),
            }
        }
    }

    /// Gives the Lease up if we hold it (the holder removed, conditional on the version read),
    /// so another need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.unwrap_or_default();
        let Some(version) = lease.metadata.resource_version.filter(|v| !v.is_empty()) else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": version},
            "spec": {"holderIdentity": null}
        });
        match self
            .api
            .patch(&self.name, &self.patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Changed under us: not ours to release any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(micro(Utc::now())),
            lease_duration_seconds: duration,
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_ours_or_unchanged_here_for_its_duration() {
        let ours = Duration::from_secs(60);
        let secs = Duration::from_secs;
        assert!(
            free_for(&spec(None, Some(60)), "a", secs(0), ours),
            "released"
        );
        assert!(
            free_for(&spec(Some(""), Some(60)), "a", secs(0), ours),
            "empty holder"
        );
        assert!(
            free_for(&spec(Some("a"), Some(60)), "a", secs(0), ours),
            "ours"
        );
        assert!(
            !free_for(&spec(Some("b"), Some(60)), "a", secs(59), ours),
            "b's, fresh"
        );
        assert!(
            free_for(&spec(Some("b"), Some(60)), "a", secs(61), ours),
            "b's, expired"
        );
        assert!(
            !free_for(&spec(Some("b"), Some(30)), "a", secs(59), ours),
            "ours is longer"
        );
        assert!(
            !free_for(&spec(Some("b"), Some(120)), "a", secs(100), ours),
            "b's is longer"
        );
        assert!(
            free_for(&spec(Some("b"), Some(120)), "a", secs(121), ours),
            "b's is longer"
        );
        assert!(
            free_for(
                &spec(Some("b"), Some(i32::MAX)),
                "a",
                MAX_LEASE + secs(1),
                ours
            ),
            "no lease holds others off for ever"
        );
        assert!(
            free_for(&spec(Some("b"), None), "a", secs(61), ours),
            "no duration: ours"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn how_long_a_lease_stood_unchanged_is_counted_on_our_own_clock() {
        let seen = Observed::default();
        assert_eq!(seen.unchanged_for("5"), Duration::ZERO, "first seen");
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(seen.unchanged_for("5"), Duration::from_secs(40));
        assert_eq!(
            seen.unchanged_for("6"),
            Duration::ZERO,
            "renewed: a new version"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            seen.clone().unchanged_for("6"),
            Duration::from_secs(10),
            "clones share it"
        );
    }
}

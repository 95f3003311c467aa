//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder reconciles; a standby
//! takes over once the holder has not renewed for the lease duration.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch};

use crate::context::{patch_params, post_params};

/// Who we are and which Lease we compete for.
#[derive(Debug, Clone)]
pub struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl Election {
    /// One attempt to take or keep the Lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(crate::view::jiff_of(Utc::now()));
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
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&post_params(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                let expired = spec.renew_time.as_ref().is_none_or(|t| {
                    Utc::now() - crate::view::chrono_of(&t.0)
                        > chrono::Duration::seconds(i64::from(
                            spec.lease_duration_seconds.unwrap_or(secs),
                        ))
                });
                if !mine && !expired {
                    return Ok(false);
                }
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": lease.metadata.resource_version},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": secs,
                        "renewTime": now,
                        "acquireTime": if mine { spec.acquire_time.clone() } else { Some(now.clone()) },
                        "leaseTransitions": transitions,
                    }
                });
                // The resourceVersion makes this a compare-and-swap: two standbys cannot both win.
                match self
                    .api
                    .patch(&self.name, &patch_params(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until we hold the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts; returns when leadership is
    /// lost (the caller stops reconciling at once).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() >= self.duration * 2 / 3 {
                        return;
                    }
                }
            }
        }
    }
}

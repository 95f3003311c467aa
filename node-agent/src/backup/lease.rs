//! The backup lease: one node at a time writes a project's objects in its bucket (uploads,
//! compaction, GC, repairs). A `coordination.k8s.io/v1` Lease
//! `projstore-backup.<namespace>.<name>` in the agents' lease namespace, taken with the API
//! server's compare-and-swap: of two copies that decide to upload at the same moment, one
//! uploads and the other waits. Renewed while the work runs, released when it ends; a holder
//! that dies is taken over once its lease was not renewed for [`BACKUP_LEASE`].

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use projstore_api::lease::{Election, Observed};

use super::BackupError;
use crate::streams::ProjectKey;

/// How long a backup lease lasts without a renewal (renewed every third of it).
pub const BACKUP_LEASE: Duration = Duration::from_secs(90);

/// The Lease's name: namespace and name are DNS labels (no dots), so the name is unambiguous.
pub fn lease_name(key: &ProjectKey) -> String {
    format!("projstore-backup.{}.{}", key.namespace, key.name)
}

/// `node`'s claim on `key`'s backup lease, in `namespace`; `observed` is what this process saw
/// of that Lease before (kept per project across backups: a holder that stopped renewing is
/// taken over once its Lease stood unchanged here for its duration).
pub fn election(
    client: Client,
    namespace: &str,
    key: &ProjectKey,
    node: &str,
    observed: Observed,
) -> Election {
    Election {
        api: Api::<Lease>::namespaced(client, namespace),
        name: lease_name(key),
        identity: node.to_owned(),
        duration: BACKUP_LEASE,
        manager: crate::runtime::MANAGER.into(),
        observed,
    }
}

/// Runs `work` holding `lease`: `Busy` at once when another node holds it; stopped (its
/// future dropped: a multipart upload stays resumable) when the lease is lost meanwhile;
/// released when `work` ends.
pub async fn leased<T>(
    lease: &Election,
    work: impl Future<Output = Result<T, BackupError>>,
) -> Result<T, BackupError> {
    let taken = tokio::time::Instant::now();
    let answer_by = taken + lease.duration / 3;
    match lease.try_acquire_by(answer_by).await {
        Ok(true) => {}
        Ok(false) => {
            let holder = tokio::time::timeout_at(answer_by, lease.holder()).await;
            return Err(BackupError::Busy(format!(
                "waiting: node {} holds this project's backup lease {} (it writes the bucket; taken over when not renewed for {} s)",
                holder
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .as_deref()
                    .unwrap_or("(another)"),
                lease.name,
                lease.duration.as_secs()
            )));
        }
        Err(e) => {
            // (The write may have got through unanswered: given back, or it expires.)
            let _ = tokio::time::timeout(lease.duration / 3, lease.release()).await;
            return Err(BackupError::Local(format!(
                "cannot take this project's backup lease {}: {e}",
                lease.name
            )));
        }
    }
    let out = tokio::select! {
        out = work => out,
        lost = lease.hold_since(taken) => Err(BackupError::Busy(format!(
            "waiting: stopped writing the bucket, {lost} ({})",
            lease.name
        ))),
    };
    match tokio::time::timeout(lease.duration / 3, lease.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, lease = %lease.name, "cannot release the backup lease (it expires)");
        }
        Err(_) => {
            tracing::warn!(lease = %lease.name, "no answer releasing the backup lease (it expires)");
        }
    }
    out
}

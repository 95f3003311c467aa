//! A BackupTarget's phase: the bucket listed with its credentials — `Ready`, or
//! `Unreachable` / `Denied` with the service's own message (DESIGN §3, §5.9).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use projstore_api::s3::{self, Credentials, Patience, Refusal};
use projstore_api::{BackupTarget, BackupTargetPhase};
use serde_json::json;

use super::apply::{Context, Error};
use crate::context::patch_params;
use crate::view::condition;

/// How often a Ready target is checked again; one that is not, sooner.
const RECHECK: Duration = Duration::from_secs(300);
const RECHECK_FAILED: Duration = Duration::from_secs(30);

/// Checks the target: its Secret, then one listing of the bucket under the prefix.
async fn check(client: &kube::Client, bt: &BackupTarget) -> Result<(), Refusal> {
    let refuse = |reason: &'static str, message: String| Refusal {
        phase: BackupTargetPhase::Denied,
        reason,
        message,
    };
    let r = &bt.spec.credentials_secret;
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
        .map_err(|e| {
            refuse(
                "SecretUnreadable",
                format!("cannot read Secret {}/{}: {e}", r.namespace, r.name),
            )
        })?
        .ok_or_else(|| {
            refuse(
                "SecretMissing",
                format!("Secret {}/{} does not exist", r.namespace, r.name),
            )
        })?;
    let creds =
        Credentials::from_secret(secret.data.as_ref()).map_err(|m| refuse("SecretInvalid", m))?;
    if let Some(k) = &bt.spec.encryption_key_secret {
        let key = Api::<Secret>::namespaced(client.clone(), &k.namespace)
            .get_opt(&k.name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.data)
            .and_then(|d| d.get(s3::ENCRYPTION_KEY).cloned());
        let usable = key.is_some_and(|v| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&v.0).trim())
                .is_ok_and(|b| b.len() == 32)
        });
        if !usable {
            return Err(refuse(
                "EncryptionKeyInvalid",
                format!(
                    "Secret {}/{} has no key {:?} of 32 bytes in base64",
                    k.namespace,
                    k.name,
                    s3::ENCRYPTION_KEY
                ),
            ));
        }
    }
    let store = s3::store(&bt.spec, &creds, Patience::Check).map_err(|m| Refusal {
        phase: BackupTargetPhase::Unreachable,
        reason: "InvalidSpec",
        message: m,
    })?;
    let prefix = bt
        .spec
        .prefix
        .as_deref()
        .map(object_store::path::Path::from);
    s3::check(store.as_ref(), prefix.as_ref()).await
}

/// Reconciles one BackupTarget.
pub async fn reconcile_target(bt: Arc<BackupTarget>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics
        .reconciles
        .with_label_values(&["BackupTarget"])
        .inc();
    let outcome = check(&ctx.client, &bt).await;
    let status = bt.status.clone().unwrap_or_default();
    let now = Utc::now();
    let (phase, ok, reason, message) = match &outcome {
        Ok(()) => (
            BackupTargetPhase::Ready,
            true,
            "BucketReachable",
            format!("listed bucket {} at {}", bt.spec.bucket, bt.spec.endpoint),
        ),
        Err(r) => (r.phase, false, r.reason, r.message.clone()),
    };
    let ready = condition(
        &status.conditions,
        "Ready",
        ok,
        reason,
        message.clone(),
        now,
        bt.metadata.generation,
    );
    let patch = json!({
        "status": {
            "phase": phase,
            "lastCheck": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now()),
            "conditions": [ready],
            "observedGeneration": bt.metadata.generation,
        },
    });
    let api: Api<BackupTarget> = Api::all(ctx.client.clone());
    api.patch_status(&bt.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?;
    if status.phase != Some(phase) {
        let ev = Event {
            type_: if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: format!("Target{phase:?}"),
            note: Some(format!("{reason}: {message}").chars().take(1000).collect()),
            action: "Check".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &bt.object_ref(&())).await {
            tracing::warn!(target = %bt.name_any(), error = %e, "cannot record event");
        }
    }
    ctx.metrics
        .duration
        .with_label_values(&["BackupTarget"])
        .observe(start.elapsed().as_secs_f64());
    ctx.forget_failures(&format!("BackupTarget//{}", bt.name_any()));
    Ok(Action::requeue(if ok { RECHECK } else { RECHECK_FAILED }))
}

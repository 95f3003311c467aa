//! A `BackupTarget` and its Secrets, read from the API server, as a project's bucket.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use projstore_api::BackupTarget;
use projstore_api::s3::{self, Credentials, Patience};

use super::BackupError;
use super::bucket::Bucket;
use super::seal::SealKey;

/// The bucket of project `<namespace>/<name>` in target `target`.
pub async fn open_bucket(
    client: &Client,
    target: &str,
    namespace: &str,
    name: &str,
) -> Result<Bucket, BackupError> {
    let bt = Api::<BackupTarget>::all(client.clone())
        .get_opt(target)
        .await
        .map_err(|e| BackupError::Config(format!("cannot read BackupTarget {target}: {e}")))?
        .ok_or_else(|| BackupError::Config(format!("BackupTarget {target} does not exist")))?;
    let spec = &bt.spec;
    let creds = secret(client, &spec.credentials_secret).await?;
    let creds = Credentials::from_secret(creds.data.as_ref()).map_err(BackupError::Config)?;
    let key = match &spec.encryption_key_secret {
        Some(r) => {
            let s = secret(client, r).await?;
            let value = s
                .data
                .as_ref()
                .and_then(|d| d.get(s3::ENCRYPTION_KEY))
                .ok_or_else(|| {
                    BackupError::Config(format!(
                        "the encryption-key Secret {}/{} has no key {:?}",
                        r.namespace,
                        r.name,
                        s3::ENCRYPTION_KEY
                    ))
                })?;
            Some(SealKey::from_base64(&value.0).map_err(|e| {
                BackupError::Config(format!(
                    "the encryption-key Secret {}/{}: {e}",
                    r.namespace, r.name
                ))
            })?)
        }
        None => None,
    };
    let store = s3::store(spec, &creds, Patience::Transfer).map_err(BackupError::Config)?;
    let root = s3::project_path(spec, namespace, name).map_err(BackupError::Config)?;
    Ok(Bucket::new(store, root, key, format!("{namespace}/{name}"))
        .at(format!("{}/{}", spec.endpoint, spec.bucket)))
}

/// How a target names a backup in `status.restoredFrom`.
pub fn describe(target: &str, namespace: &str, name: &str, snapshot: &str) -> String {
    format!("{target}:{namespace}/{name}@{snapshot}")
}

async fn secret(client: &Client, r: &projstore_api::SecretRef) -> Result<Secret, BackupError> {
    let what = format!("Secret {}/{}", r.namespace, r.name);
    Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await
        .map_err(|e| BackupError::Config(format!("cannot read {what}: {e}")))?
        .ok_or_else(|| BackupError::Config(format!("{what} does not exist")))
}

//! A `BackupTarget` as an S3 object store (DESIGN §5.9): how it is built from the spec and the
//! credentials Secret, where a project's objects live in it, and what the service's answers
//! mean for the target's phase. Signing, retries and multipart uploads are `object_store`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::{BackupTargetPhase, BackupTargetSpec, names};

/// Keys of the credentials Secret.
pub const ACCESS_KEY_ID: &str = "accessKeyId";
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// Key of the encryption-key Secret.
pub const ENCRYPTION_KEY: &str = "key";

/// Access key pair read from a credentials Secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `accessKeyId` and `secretAccessKey` from a Secret's data.
    pub fn from_secret(data: Option<&BTreeMap<String, ByteString>>) -> Result<Self, String> {
        let get = |key: &str| -> Result<String, String> {
            let value = data
                .and_then(|d| d.get(key))
                .ok_or_else(|| format!("the credentials Secret has no key {key:?}"))?;
            let text = String::from_utf8(value.0.clone())
                .map_err(|_| format!("the credentials Secret's {key:?} is not UTF-8"))?;
            let text = text.trim().to_owned();
            if text.is_empty() || text.len() > 1024 || text.chars().any(char::is_control) {
                return Err(format!(
                    "the credentials Secret's {key:?} is empty, too long or has control characters"
                ));
            }
            Ok(text)
        };
        Ok(Self {
            access_key_id: get(ACCESS_KEY_ID)?,
            secret_access_key: get(SECRET_ACCESS_KEY)?,
        })
    }
}

/// How hard a store retries: the agent's uploads retry with backoff for up to a few minutes;
/// the controller's reachability check answers within seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    Transfer,
    Check,
}

/// The spec checked again (defence in depth: the API server checked the same rules).
pub fn check_spec(spec: &BackupTargetSpec) -> Result<(), String> {
    if !names::matches(names::ENDPOINT_URL, &spec.endpoint) || spec.endpoint.len() > 512 {
        return Err(format!(
            "endpoint {:?} is not an http(s) URL",
            spec.endpoint
        ));
    }
    if !names::is_valid_bucket(&spec.bucket) {
        return Err(format!("bucket {:?} breaks S3's naming rules", spec.bucket));
    }
    if !names::matches(names::REGION, &spec.region) {
        return Err(format!("region {:?} is not a region name", spec.region));
    }
    if let Some(p) = &spec.prefix
        && (!names::is_relative_path(p) || p.len() > 512)
    {
        return Err(format!("prefix {p:?} is not a relative key prefix"));
    }
    // Project data crosses the network only encrypted (DESIGN invariant 7): plain http only
    // with client-side encryption, or to this host itself.
    if spec.endpoint.starts_with("http://")
        && spec.encryption_key_secret.is_none()
        && !is_loopback(&spec.endpoint)
    {
        return Err(format!(
            "endpoint {} is plain http and the target has no encryption key: project data would cross the network in clear (use https, or set encryptionKeySecret)",
            spec.endpoint
        ));
    }
    Ok(())
}

/// Whether an `http://` endpoint's host is this host (127.0.0.0/8, ::1, localhost).
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint.trim_start_matches("http://");
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split([':', '/']).next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The bucket of `spec` as an object store, signed with `creds` (path-style requests, so any
/// S3-compatible service works; plain http only when the endpoint says `http://`).
pub fn store(
    spec: &BackupTargetSpec,
    creds: &Credentials,
    patience: Patience,
) -> Result<Arc<AmazonS3>, String> {
    check_spec(spec)?;
    // reqwest's TLS needs a process-wide rustls provider; ring, as everywhere else here. An
    // error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (retry, timeout) = match patience {
        Patience::Transfer => (
            RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: Duration::from_secs(180),
            },
            Duration::from_secs(300),
        ),
        Patience::Check => (
            RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 1,
                retry_timeout: Duration::from_secs(5),
            },
            Duration::from_secs(10),
        ),
    };
    let client = ClientOptions::new()
        .with_allow_http(spec.endpoint.starts_with("http://"))
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(timeout);
    AmazonS3Builder::new()
        .with_endpoint(spec.endpoint.trim_end_matches('/'))
        .with_region(&spec.region)
        .with_bucket_name(&spec.bucket)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(&creds.secret_access_key)
        .with_virtual_hosted_style_request(false)
        // The payload is not hashed into the signature (UNSIGNED-PAYLOAD): TLS protects it in
        // flight, sealed objects authenticate themselves, and every stream's SHA-256 is in its
        // manifest; hashing each part twice more (here and at the service) halves throughput.
        .with_unsigned_payload(true)
        .with_client_options(client)
        .with_retry(retry)
        .build()
        .map(Arc::new)
        .map_err(|e| format!("cannot set up the S3 client: {e}"))
}

/// Where a project's objects live: `<prefix>/<namespace>/<name>/`.
pub fn project_path(spec: &BackupTargetSpec, namespace: &str, name: &str) -> Result<Path, String> {
    if !names::is_dns1123_label(namespace) || !names::is_dns1123_label(name) {
        return Err(format!("{namespace}/{name} is not a project identity"));
    }
    let key = match &spec.prefix {
        Some(p) => format!("{p}/{namespace}/{name}"),
        None => format!("{namespace}/{name}"),
    };
    Path::parse(&key).map_err(|e| format!("bad object key {key:?}: {e}"))
}

/// What a failed request says about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub phase: BackupTargetPhase,
    /// Condition reason: `Unreachable`, `Denied`, `NoSuchBucket`.
    pub reason: &'static str,
    /// The service's own message (or the connection error), on one line.
    pub message: String,
}

/// Classifies an object-store error: refused credentials are `Denied`; everything else (no
/// answer, no such bucket, a server error) leaves the target `Unreachable`.
pub fn classify(e: &object_store::Error) -> Refusal {
    let message = one_line(&e.to_string());
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Refusal {
            phase: BackupTargetPhase::Denied,
            reason: "Denied",
            message,
        },
        _ if message.contains("NoSuchBucket")
            || matches!(e, object_store::Error::NotFound { .. }) =>
        {
            Refusal {
                phase: BackupTargetPhase::Unreachable,
                reason: "NoSuchBucket",
                message,
            }
        }
        _ if message.contains("InvalidAccessKeyId")
            || message.contains("SignatureDoesNotMatch")
            || message.contains("AccessDenied") =>
        {
            Refusal {
                phase: BackupTargetPhase::Denied,
                reason: "Denied",
                message,
            }
        }
        _ => Refusal {
            phase: BackupTargetPhase::Unreachable,
            reason: "Unreachable",
            message,
        },
    }
}

/// Lists (at most one page of) the bucket under `prefix`: the service answers, accepts the
/// credentials, and the bucket exists.
pub async fn check(store: &dyn ObjectStore, prefix: Option<&Path>) -> Result<(), Refusal> {
    let mut listing = store.list(prefix);
    match listing.next().await {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(classify(&e)),
    }
}

/// Text from elsewhere as it may go into status: one line, at most 400 characters.
pub fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(400) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(endpoint: &str, key: bool) -> BackupTargetSpec {
        serde_json::from_value(serde_json::json!({
            "endpoint": endpoint, "bucket": "backups",
            "credentialsSecret": {"namespace": "ops", "name": "s3"},
            "encryptionKeySecret": if key { serde_json::json!({"namespace": "ops", "name": "k"}) } else { serde_json::Value::Null },
        }))
        .unwrap()
    }

    #[test]
    fn plain_http_carries_data_only_sealed_or_to_this_host() {
        assert!(check_spec(&spec("https://s3.example.org", false)).is_ok());
        assert!(check_spec(&spec("http://s3.example.org:9000", true)).is_ok());
        for local in [
            "http://127.0.0.1:9000",
            "http://[::1]:9000",
            "http://localhost/x",
        ] {
            assert!(check_spec(&spec(local, false)).is_ok(), "{local}");
        }
        for remote in [
            "http://s3.example.org",
            "http://10.0.0.5:9000",
            "http://127.0.0.1.example.org",
        ] {
            let e = check_spec(&spec(remote, false)).unwrap_err();
            assert!(e.contains("in clear"), "{remote}: {e}");
        }
    }

    #[test]
    fn project_paths_are_identities_only() {
        let s = spec("https://s3.example.org", false);
        assert_eq!(
            project_path(&s, "alice", "thesis").unwrap().as_ref(),
            "alice/thesis"
        );
        assert!(project_path(&s, "../x", "thesis").is_err());
        assert!(project_path(&s, "alice", "a/b").is_err());
    }
}

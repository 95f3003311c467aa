//! `BackupTarget`: an S3-compatible bucket that projects are backed up to (DESIGN §5.9).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names;

/// Where offsite backups go: a bucket of an S3-compatible service, the credentials to use it
/// and, optionally, the key that encrypts every object before it leaves the host.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "projstore.io",
    version = "v1alpha1",
    kind = "BackupTarget",
    doc = "An S3-compatible bucket holding offsite backups of projects (stream chains with manifests, optionally encrypted client-side).",
    status = "BackupTargetStatus",
    shortname = "bt",
    category = "projstore",
    derive = "PartialEq",
    printcolumn = r#"{"name":"ENDPOINT","type":"string","jsonPath":".spec.endpoint"}"#,
    printcolumn = r#"{"name":"BUCKET","type":"string","jsonPath":".spec.bucket"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    /// URL of the S3-compatible service, e.g. `https://s3.eu-central-1.amazonaws.com` or
    /// `http://10.0.0.5:9000` (path-style requests are used).
    #[schemars(length(min = 8, max = 512), pattern(names::ENDPOINT_URL))]
    pub endpoint: String,

    /// Region the requests are signed for (SigV4), e.g. `us-east-1`.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 63), pattern(names::REGION))]
    pub region: String,

    /// Bucket name (S3 rules: 3..63 characters of `a-z`, `0-9`, `.`, `-`; not an IP address).
    #[schemars(length(min = 3, max = 63), pattern(names::BUCKET))]
    #[x_kube(validation = Rule::new("!self.contains('..') && !self.matches('^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$')")
        .message("bucket must not contain '..' or look like an IP address"))]
    pub bucket: String,

    /// Key prefix inside the bucket (`a/b`, no leading or trailing `/`, no `..`). Objects of a
    /// project go under `<prefix>/<namespace>/<name>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(names::BUCKET_PREFIX))]
    pub prefix: Option<String>,

    /// Secret with the keys `accessKeyId` and `secretAccessKey`.
    pub credentials_secret: SecretRef,

    /// Secret with the key `key`: 32 bytes, base64. When set, every object (streams and
    /// manifests) is encrypted on the host with AES-256-GCM before upload; without the key
    /// the bucket's contents cannot be read or restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_secret: Option<SecretRef>,

    /// Days between verifications of each project's newest backup (1..365): restored into a
    /// scratch dataset and compared.
    #[serde(default = "default_verify_days")]
    #[schemars(range(min = 1, max = 365))]
    pub verify_interval_days: u32,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn default_verify_days() -> u32 {
    7
}

/// A Secret by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63), pattern(names::DNS1123_LABEL))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(names::DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// Whether the bucket can be used.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BackupTargetPhase {
    /// The service answered and accepted the credentials; the bucket exists.
    Ready,
    /// The service could not be reached (or the bucket does not exist).
    Unreachable,
    /// The service refused the credentials.
    Denied,
}

/// What the controller found when it last checked the bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Unreachable or Denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupTargetPhase>,
    /// When the bucket was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Time>,
    /// Ready: reason and the service's own message when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

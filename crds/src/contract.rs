//! The contract between the controller and the agents beyond the CRDs' specs: the labels,
//! annotations and finalizer each side writes for the other, and their values. Both sides
//! name, write and read them here only, so a value has one spelling and one parser.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// Label the controller sets on StreamReplicas: the node whose agent acts on them.
pub const NODE_LABEL: &str = "projstore.io/node";
/// Label on every StreamReplica: the name of its Project (in the same namespace).
pub const PROJECT_LABEL: &str = "projstore.io/project";
/// Label on StreamReplicas: their pool.
pub const POOL_LABEL: &str = "projstore.io/pool";
/// Finalizer the controller keeps on Projects until their data is in the trash.
pub const CLEANUP_FINALIZER: &str = "projstore.io/cleanup";

/// Annotation: any new value asks the primary for a snapshot now.
pub const SNAPSHOT_NOW_ANNOTATION: &str = "projstore.io/snapshot-now";
/// Annotation: any new value asks the copy that uploads backups to back the project up now.
pub const BACKUP_NOW_ANNOTATION: &str = "projstore.io/backup-now";
/// Annotation: any new value asks the copy that uploads backups to verify the newest backup
/// now (restore it into a scratch dataset and compare), besides the target's schedule.
pub const VERIFY_BACKUP_NOW_ANNOTATION: &str = "projstore.io/verify-backup-now";
/// Annotation the controller keeps on every copy of a backed-up project: a digest of its
/// `spec.backup` and of the backup-now and verify-backup-now requests, so the agent of the
/// copy that uploads backups (often a secondary) wakes when one of them changes.
pub const BACKUP_ECHO: &str = "projstore.io/backup-echo";
/// Annotation: any new value asks the primary to repair ownership of the project tree.
pub const REPAIR_OWNERSHIP_ANNOTATION: &str = "projstore.io/repair-ownership";
/// Annotation the controller keeps on a consumer's primary StreamReplica: where each mounted
/// source project is served now ([`MountSources`] as a JSON object by project name). The
/// consumer's agent mounts from there; the source's agent lets that node's sftp client in.
pub const MOUNT_SOURCES_ANNOTATION: &str = "projstore.io/mount-sources";
/// Annotation on a Trashed replica: when it went to the trash (RFC 3339, [`trashed_at`]).
pub const TRASHED_AT: &str = "projstore.io/trashed-at";
/// Annotation on a Trashed replica: how many days its data is kept ([`retain_days`]).
pub const RETAIN_DAYS: &str = "projstore.io/retain-days";
/// Annotation on the primary's replica during a move: the pool taking over.
pub const HANDOFF_TO: &str = "projstore.io/handoff-to";
/// Annotation on the old primary after a move: it is the copy to drop.
pub const MOVED_FROM: &str = "projstore.io/moved-from";
/// Annotation on secondaries: the GUID of the primary's newest snapshot (wakes their agent).
pub const PRIMARY_SNAPSHOT: &str = "projstore.io/primary-snapshot";
/// Annotation on the primary: the Project's generation, so its agent (which watches only its
/// replicas) wakes when the Project's spec changes. The Project's `snapshot-now` and
/// `repair-ownership` annotations are copied next to it for the same reason.
pub const PROJECT_GENERATION: &str = "projstore.io/project-generation";

/// Days a trashed project is kept when its replica does not say.
pub const DEFAULT_RETAIN_DAYS: i64 = 7;

/// Where a mounted source project is served: one value of [`MOUNT_SOURCES_ANNOTATION`].
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MountSource {
    pub pool: String,
    pub node: String,
    #[serde(default)]
    pub epoch: u64,
    /// The source host's sftp endpoint (`host:port`), when its agent serves sftp.
    #[serde(default)]
    pub sftp: Option<String>,
    /// That sshd's own host key, trusted for exactly that endpoint.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Every mount of the project is read-only: the source host lets the consumer's node read
    /// it, not write it. Missing (an annotation of an older controller): read-only, until the
    /// controller writes it again.
    #[serde(default = "read_only_unless_said")]
    pub read_only: bool,
}

fn read_only_unless_said() -> bool {
    true
}

/// The value of [`MOUNT_SOURCES_ANNOTATION`]: each mounted project's source, by project name.
pub type MountSources = BTreeMap<String, MountSource>;

/// An annotation of the contract that is there but cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("annotation {key}={value:?}: {reason}")]
pub struct BadAnnotation {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

type Annotations = BTreeMap<String, String>;

fn bad(key: &'static str, value: &str, reason: impl ToString) -> BadAnnotation {
    BadAnnotation {
        key,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// The mount sources a replica carries; none when it has no such annotation.
pub fn mount_sources(annotations: &Annotations) -> Result<MountSources, BadAnnotation> {
    match annotations.get(MOUNT_SOURCES_ANNOTATION) {
        None => Ok(MountSources::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| bad(MOUNT_SOURCES_ANNOTATION, v, e)),
    }
}

/// The value of [`MOUNT_SOURCES_ANNOTATION`] for `sources`: every object's keys sorted, at every
/// level, so an unchanged set gives an unchanged string (and the string controllers before this
/// module wrote).
pub fn mount_sources_value(sources: &MountSources) -> String {
    serde_json::to_value(sources)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// When a trashed replica went to the trash; `None` when it carries no such annotation.
pub fn trashed_at(annotations: &Annotations) -> Result<Option<DateTime<Utc>>, BadAnnotation> {
    annotations
        .get(TRASHED_AT)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| bad(TRASHED_AT, v, e))
        })
        .transpose()
}

/// The value of [`TRASHED_AT`] for a time.
pub fn trashed_at_value(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How many days a trashed replica's data is kept: its [`RETAIN_DAYS`], else
/// [`DEFAULT_RETAIN_DAYS`] (also when the annotation is not a number).
pub fn retain_days(annotations: &Annotations) -> i64 {
    annotations
        .get(RETAIN_DAYS)
        .and_then(|d| d.parse().ok())
        .unwrap_or(DEFAULT_RETAIN_DAYS)
}

/// The pool a moving primary hands over to.
pub fn handoff_to(annotations: &Annotations) -> Option<&str> {
    annotations.get(HANDOFF_TO).map(String::as_str)
}

/// The replica is the old primary of a finished move: the copy to drop.
pub fn moved_from(annotations: &Annotations) -> bool {
    annotations.contains_key(MOVED_FROM)
}

/// The GUID of the primary's newest snapshot, as the controller last told a secondary.
pub fn primary_snapshot(annotations: &Annotations) -> Option<&str> {
    annotations.get(PRIMARY_SNAPSHOT).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(k: &str, v: &str) -> Annotations {
        Annotations::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn mount_sources_round_trip_and_default_read_only() {
        let mut s = MountSources::new();
        s.insert(
            "b".into(),
            MountSource {
                pool: "p".into(),
                node: "n".into(),
                read_only: false,
                ..Default::default()
            },
        );
        let v = mount_sources_value(&s);
        assert_eq!(
            v,
            r#"{"b":{"epoch":0,"hostKey":null,"node":"n","pool":"p","readOnly":false,"sftp":null}}"#,
            "keys sorted, as the annotation has always been written"
        );
        assert_eq!(mount_sources(&ann(MOUNT_SOURCES_ANNOTATION, &v)), Ok(s));
        let old = mount_sources(&ann(
            MOUNT_SOURCES_ANNOTATION,
            r#"{"a":{"pool":"p","node":"n"}}"#,
        ));
        assert!(old.expect("parses")["a"].read_only);
        assert!(mount_sources(&ann(MOUNT_SOURCES_ANNOTATION, "{")).is_err());
        assert_eq!(mount_sources(&Annotations::new()), Ok(MountSources::new()));
    }

    #[test]
    fn trash_annotations() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(trashed_at_value(at), "2026-01-02T03:04:05Z");
        assert_eq!(
            trashed_at(&ann(TRASHED_AT, "2026-01-02T03:04:05Z")),
            Ok(Some(at))
        );
        assert!(trashed_at(&ann(TRASHED_AT, "yesterday")).is_err());
        assert_eq!(trashed_at(&Annotations::new()), Ok(None));
        assert_eq!(retain_days(&ann(RETAIN_DAYS, "30")), 30);
        assert_eq!(retain_days(&ann(RETAIN_DAYS, "x")), DEFAULT_RETAIN_DAYS);
        assert_eq!(retain_days(&Annotations::new()), DEFAULT_RETAIN_DAYS);
    }
}

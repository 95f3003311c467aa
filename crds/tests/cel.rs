//! The CEL rules of the CRDs, evaluated with Kubernetes' CEL libraries (kube-cel), including
//! the transition rules that compare with `oldSelf` on update.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod support;

use serde_json::json;
use support::*;

fn messages(errors: &[projstore_api::validate::FieldError]) -> Vec<String> {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

#[test]
fn quota_bounds_are_quantities_not_strings() {
    // "900Ki" < "1Mi" and "1024Ki" == "1Mi": a string comparison would get these wrong.
    let low = validate(&set(project(), "spec.quota", json!("900Ki")), None);
    assert_eq!(
        messages(&low),
        ["spec.quota: quota must be a quantity between 1Mi and 1Pi"]
    );
    assert!(validate(&set(project(), "spec.quota", json!("1024Ki")), None).is_empty());
    assert!(validate(&set(project(), "spec.quota", json!("1048576")), None).is_empty());
    assert!(!validate(&set(project(), "spec.quota", json!("1048575")), None).is_empty());
    assert!(validate(&set(project(), "spec.quota", json!("1024Ti")), None).is_empty());
    assert!(!validate(&set(project(), "spec.quota", json!("1025Ti")), None).is_empty());
}

#[test]
fn project_names_must_be_dns_labels() {
    let errors = validate(&set(project(), "metadata.name", json!("Thesis")), None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .contains("metadata.name must be a DNS-1123 label")
    );
}

#[test]
fn a_project_cannot_mount_itself() {
    let obj = set(
        project(),
        "spec.mounts",
        json!([{"project": "thesis", "path": "a", "mountPath": "b"}]),
    );
    assert_eq!(
        messages(&validate(&obj, None)),
        ["spec.mounts: a project cannot mount a folder of itself"]
    );
}

#[test]
fn reserved_pool_names_are_refused_with_a_reason() {
    for name in [
        "mirror", "mirror-1", "raidz", "raidz3", "draid2", "spare", "log", "cache", "special",
        "dedup",
    ] {
        let errors = validate(&set(storage_pool(), "spec.poolName", json!(name)), None);
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        assert_eq!(errors[0].field, "spec.poolName");
        assert!(
            errors[0].message.contains("reserved ZFS word"),
            "{name}: {errors:?}"
        );
    }
    for name in ["logs", "tankmirror", "storage"] {
        assert!(
            validate(&set(storage_pool(), "spec.poolName", json!(name)), None).is_empty(),
            "{name}"
        );
    }
}

#[test]
fn storage_pool_node_and_pool_names_are_immutable() {
    let old = storage_pool();
    let moved = set(old.clone(), "spec.nodeName", json!("host-b"));
    assert_eq!(
        messages(&validate(&moved, Some(&old))),
        ["spec.nodeName: nodeName is immutable"]
    );
    let renamed = set(old.clone(), "spec.poolName", json!("tank"));
    assert_eq!(
        messages(&validate(&renamed, Some(&old))),
        ["spec.poolName: poolName is immutable"]
    );
    // The same change is fine on create, and an unchanged update is fine.
    assert!(validate(&moved, None).is_empty());
    assert!(validate(&old, Some(&old)).is_empty());
}

#[test]
fn vdevs_may_only_grow() {
    let old = set(
        storage_pool(),
        "spec.vdevs",
        json!([{"path": "/dev/sdb"}, {"path": "/dev/sdc"}]),
    );
    let grown = set(
        old.clone(),
        "spec.vdevs",
        json!([{"path": "/dev/sdb"}, {"path": "/dev/sdc"}, {"path": "/dev/sdd"}]),
    );
    assert!(validate(&grown, Some(&old)).is_empty());
    let reordered = set(
        old.clone(),
        "spec.vdevs",
        json!([{"path": "/dev/sdc"}, {"path": "/dev/sdb"}]),
    );
    assert!(validate(&reordered, Some(&old)).is_empty());
    let shrunk = set(old.clone(), "spec.vdevs", json!([{"path": "/dev/sdb"}]));
    assert_eq!(
        messages(&validate(&shrunk, Some(&old))),
        ["spec.vdevs: vdevs may only grow: an existing vdev cannot be removed"]
    );
    let replaced = set(
        old.clone(),
        "spec.vdevs",
        json!([{"path": "/dev/sdb"}, {"path": "/dev/sde"}]),
    );
    assert_eq!(validate(&replaced, Some(&old)).len(), 1);
}

#[test]
fn stream_replica_identity_is_immutable_and_epochs_never_go_back() {
    let old = set(stream_replica(), "spec.epoch", json!(4));
    for (field, value) in [
        ("spec.project", "other"),
        ("spec.pool", "host-c-storage"),
        ("spec.node", "host-c"),
    ] {
        let changed = set(old.clone(), field, json!(value));
        let errors = validate(&changed, Some(&old));
        assert_eq!(errors.len(), 1, "{field}: {errors:?}");
        assert_eq!(errors[0].field, field);
        assert!(errors[0].message.ends_with("is immutable"));
    }
    let promoted = set(
        set(old.clone(), "spec.epoch", json!(5)),
        "spec.role",
        json!("Primary"),
    );
    assert!(validate(&promoted, Some(&old)).is_empty());
    let back = set(old.clone(), "spec.epoch", json!(3));
    assert_eq!(
        messages(&validate(&back, Some(&old))),
        ["spec.epoch: epoch never decreases"]
    );
}

#[test]
fn mount_paths_must_be_unique() {
    let obj = set(
        project(),
        "spec.mounts",
        json!([
        {"project": "a", "path": "x", "mountPath": "m"},
        {"project": "b", "path": "y", "mountPath": "n"},
        {"project": "c", "path": "z", "mountPath": "m"}]),
    );
    assert_eq!(
        messages(&validate(&obj, None)),
        ["spec.mounts: each mount needs its own mountPath"]
    );
}

#[test]
fn backup_targets_are_checked_by_s3_rules() {
    assert!(validate(&backup_target(), None).is_empty());
    for (path, bad) in [
        ("spec.endpoint", json!("s3.example.org")),
        ("spec.endpoint", json!("ftp://s3.example.org")),
        ("spec.endpoint", json!("https://user:pw@s3.example.org")),
        ("spec.endpoint", json!("https://s3.example.org/?x=1")),
        ("spec.bucket", json!("Backups")),
        ("spec.bucket", json!("ab")),
        ("spec.bucket", json!("a..b")),
        ("spec.bucket", json!("192.168.1.10")),
        ("spec.bucket", json!("-backups")),
        ("spec.prefix", json!("/cluster-a")),
        ("spec.prefix", json!("cluster-a/")),
        ("spec.prefix", json!("a/../b")),
        ("spec.prefix", json!("a b")),
        ("spec.verifyIntervalDays", json!(0)),
        ("spec.verifyIntervalDays", json!(366)),
        ("spec.credentialsSecret.name", json!("Bad Name")),
    ] {
        let errors = validate(&set(backup_target(), path, bad.clone()), None);
        assert!(!errors.is_empty(), "{path} = {bad} was accepted");
    }
    for (path, good) in [
        ("spec.endpoint", json!("http://127.0.0.1:9000")),
        ("spec.endpoint", json!("http://[::1]:9000")),
        ("spec.bucket", json!("my.backups-2026")),
        ("spec.bucket", json!("123")),
    ] {
        let errors = validate(&set(backup_target(), path, good.clone()), None);
        assert!(errors.is_empty(), "{path} = {good}: {errors:?}");
    }
}

#[test]
fn backup_keep_counts_and_interval_are_bounded() {
    let backup = |b: serde_json::Value| set(project(), "spec.backup", b);
    assert!(validate(&backup(json!({"target": "offsite"})), None).is_empty());
    for bad in [
        json!({"target": "offsite", "intervalMinutes": 1}),
        json!({"target": "offsite", "keep": {"daily": 1001}}),
        json!({"target": "Off Site"}),
        json!({"intervalMinutes": 60}),
    ] {
        assert!(!validate(&backup(bad.clone()), None).is_empty(), "{bad}");
    }
}

#[test]
fn restore_from_is_set_only_at_creation_and_never_changed() {
    let from = json!({"target": "offsite", "namespace": "alice", "name": "thesis"});
    let restored = set(project(), "spec.restoreFrom", from.clone());
    assert!(validate(&restored, None).is_empty());
    // Added later: refused.
    assert_eq!(
        messages(&validate(&restored, Some(&project()))),
        [
            "spec.restoreFrom: restoreFrom is immutable and can only be set when the project is created"
        ]
    );
    // Changed or removed: refused.
    let other = set(
        restored.clone(),
        "spec.restoreFrom.snapshot",
        json!("ps-20261129T000000Z"),
    );
    assert!(!validate(&other, Some(&restored)).is_empty());
    assert!(!validate(&project(), Some(&restored)).is_empty());
    // Left as it was while something else changes: fine.
    let grown = set(restored.clone(), "spec.quota", json!("20Gi"));
    assert!(validate(&grown, Some(&restored)).is_empty());
    // A snapshot name is checked.
    let bad = set(restored, "spec.restoreFrom.snapshot", json!("-rf"));
    assert!(!validate(&bad, None).is_empty());
}

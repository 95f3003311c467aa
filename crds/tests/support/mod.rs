//! Shared helpers: load the committed CRD manifests and validate objects against them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support code

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use projstore_api::validate::{FieldError, ObjectValidator};
use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The validator for `kind`, built from the committed manifest (what users install), not from
/// the types: a manifest that drifted would be caught here as well as by the sync test.
pub fn validator(kind: &str) -> ObjectValidator {
    let file = match kind {
        "Project" => "projects.yaml",
        "StoragePool" => "storagepools.yaml",
        "StreamReplica" => "streamreplicas.yaml",
        "BackupTarget" => "backuptargets.yaml",
        other => panic!("unknown kind {other}"),
    };
    let text = std::fs::read_to_string(repo_root().join("crds/manifests").join(file)).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    ObjectValidator::for_crd(&crd, "v1alpha1").unwrap()
}

pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let kind = obj["kind"].as_str().unwrap();
    validator(kind).validate(obj, old)
}

pub fn project() -> Value {
    json!({
        "apiVersion": "projstore.io/v1alpha1",
        "kind": "Project",
        "metadata": {"name": "thesis", "namespace": "alice"},
        "spec": {"quota": "10Gi", "owner": {"uid": 1000, "gid": 1000}}
    })
}

pub fn backup_target() -> Value {
    json!({
        "apiVersion": "projstore.io/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {"name": "offsite"},
        "spec": {
            "endpoint": "https://s3.example.org:9000",
            "bucket": "projstore-backups",
            "prefix": "cluster-a/projects",
            "credentialsSecret": {"namespace": "projstore-system", "name": "s3-credentials"}
        }
    })
}

pub fn storage_pool() -> Value {
    json!({
        "apiVersion": "projstore.io/v1alpha1",
        "kind": "StoragePool",
        "metadata": {"name": "host-a-storage"},
        "spec": {
            "nodeName": "host-a",
            "poolName": "storage",
            "vdevs": [{"path": "/var/lib/projstore/storage-0.img", "sizeBytes": 1073741824u64}],
            "topology": {"datacenter": "dc1", "zone": "dc1-a"}
        }
    })
}

pub fn stream_replica() -> Value {
    json!({
        "apiVersion": "projstore.io/v1alpha1",
        "kind": "StreamReplica",
        "metadata": {"name": "thesis-host-b-storage", "namespace": "alice"},
        "spec": {
            "project": "thesis", "pool": "host-b-storage", "node": "host-b",
            "role": "Secondary", "epoch": 1,
            "source": {"pool": "host-a-storage", "node": "host-a", "streamEndpoint": "http://127.0.0.2:7420"}
        }
    })
}

/// Sets `path` (dotted, `[i]` for list items) in `obj`, creating objects on the way.
pub fn set(mut obj: Value, path: &str, value: Value) -> Value {
    let mut cur = &mut obj;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (*part, None),
        };
        let last = i + 1 == parts.len();
        if last && index.is_none() {
            cur[key] = value;
            return obj;
        }
        if cur.get(key).is_none() {
            cur[key] = if index.is_some() {
                json!([])
            } else {
                json!({})
            };
        }
        cur = &mut cur[key];
        if let Some(idx) = index {
            let list = cur.as_array_mut().unwrap();
            while list.len() <= idx {
                list.push(json!({}));
            }
            if last {
                list[idx] = value;
                return obj;
            }
            cur = &mut list[idx];
        }
    }
    obj
}

/// Removes `path` (dotted) from `obj`.
pub fn remove(mut obj: Value, path: &str) -> Value {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut cur = &mut obj;
    if !parent.is_empty() {
        for part in parent.split('.') {
            cur = &mut cur[part];
        }
    }
    cur.as_object_mut().unwrap().remove(key);
    obj
}

/// Whether one of `errors` names `field` (as its path, or in its message for root-level rules
/// that the API server reports at the object).
pub fn names_field(errors: &[FieldError], field: &str) -> bool {
    errors
        .iter()
        .any(|e| e.field == field || (e.field.is_empty() && e.message.contains(field)))
}

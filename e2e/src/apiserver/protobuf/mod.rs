//! Protobuf request bodies of built-in kinds, as kubectl's typed `create` commands send them
//! (`kubectl create namespace|secret|configmap|serviceaccount|role|rolebinding|clusterrole`).
//!
//! The Kubernetes envelope is the magic `k8s\0` followed by a `runtime.Unknown` whose
//! `typeMeta` names the kind and whose `raw` holds the object; both are decoded with the
//! `k8s-pb` types, and the object is turned into the JSON the store holds. Answers go the
//! other way in `answer.rs`.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use super::registry::ResourceType;
use super::status::ApiError;

pub mod answer;

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Whether a `Content-Type` is the Kubernetes protobuf one.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim() == "application/vnd.kubernetes.protobuf")
}

/// The `typeMeta` (apiVersion, kind) and `raw` bytes of a protobuf envelope; `what` names
/// what was expected, for the error.
fn open_envelope(body: &[u8], what: &str) -> Result<(String, String, Vec<u8>), ApiError> {
    let bad = |why: String| {
        ApiError::bad_request(format!(
            "the protobuf body of the request could not be read as a {what}: {why}"
        ))
    };
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        bad("it does not start with the Kubernetes protobuf prefix \"k8s\\0\"".into())
    })?;
    let unknown = Unknown::decode(envelope).map_err(|e| bad(e.to_string()))?;
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(bad(format!("content encoding {enc:?} is not supported")));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    Ok((
        type_meta.api_version.unwrap_or_default(),
        type_meta.kind.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    ))
}

/// The `DeleteOptions` of a protobuf DELETE body (client-go sends them so), as JSON.
pub fn decode_delete_options(body: &[u8]) -> Result<Value, ApiError> {
    let (_, kind, raw) = open_envelope(body, "DeleteOptions")?;
    let bad = |why: String| {
        ApiError::bad_request(format!(
            "the protobuf body of the request could not be read as DeleteOptions: {why}"
        ))
    };
    if kind != "DeleteOptions" {
        return Err(bad(format!("it holds a {kind}")));
    }
    let o = meta::DeleteOptions::decode(&*raw).map_err(|e| bad(e.to_string()))?;
    let preconditions = o.preconditions.map(|p| {
        Obj::default()
            .opt("uid", p.uid)
            .opt("resourceVersion", p.resource_version)
    });
    Ok(Obj::default()
        .opt("gracePeriodSeconds", o.grace_period_seconds)
        .object("preconditions", preconditions)
        .opt("orphanDependents", o.orphan_dependents)
        .opt("propagationPolicy", o.propagation_policy)
        .strings("dryRun", &o.dry_run)
        .done())
}

/// The object of a protobuf `body` sent to the collection (or an object) of `t`, as JSON.
pub fn decode(t: &ResourceType, body: &[u8]) -> Result<Value, ApiError> {
    let bad = |why: String| {
        ApiError::bad_request(format!(
            "the protobuf body of the request could not be read as a {}: {why}",
            t.qualified_kind()
        ))
    };
    let (api_version, kind, raw) = open_envelope(body, &t.qualified_kind())?;
    if api_version != t.api_version() || kind != t.kind {
        return Err(bad(format!(
            "it holds a {kind} of {api_version:?}, not a {} of {:?}",
            t.kind,
            t.api_version()
        )));
    }
    let decoded = match (t.group.as_str(), t.kind.as_str()) {
        ("", "Namespace") => core::Namespace::decode(&*raw).map(namespace),
        ("", "Secret") => core::Secret::decode(&*raw).map(secret),
        ("", "ConfigMap") => core::ConfigMap::decode(&*raw).map(config_map),
        ("", "ServiceAccount") => core::ServiceAccount::decode(&*raw).map(service_account),
        ("rbac.authorization.k8s.io", "Role") => {
            rbac::Role::decode(&*raw).map(|r| rules_object(r.metadata, &r.rules, None))
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => rbac::ClusterRole::decode(&*raw)
            .map(|r| rules_object(r.metadata, &r.rules, r.aggregation_rule)),
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            rbac::RoleBinding::decode(&*raw).map(|b| binding(b.metadata, &b.subjects, b.role_ref))
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            rbac::ClusterRoleBinding::decode(&*raw)
                .map(|b| binding(b.metadata, &b.subjects, b.role_ref))
        }
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "protobuf bodies of {} are not supported by the projstore test API server; send JSON (kubectl apply -f / create -f do)",
                    t.qualified_kind()
                ),
            ));
        }
    };
    let mut obj = decoded.map_err(|e| bad(e.to_string()))?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

/// A JSON object that leaves out what protobuf left unset (as the real server's JSON does).
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn opt<T: Into<Value>>(mut self, key: &str, v: Option<T>) -> Self {
        if let Some(v) = v {
            self.0.insert(key.into(), v.into());
        }
        self
    }
    fn list(mut self, key: &str, v: Vec<Value>) -> Self {
        if !v.is_empty() {
            self.0.insert(key.into(), Value::Array(v));
        }
        self
    }
    fn strings(self, key: &str, v: &[String]) -> Self {
        self.list(key, v.iter().map(|s| json!(s)).collect())
    }
    fn map(mut self, key: &str, v: Map<String, Value>) -> Self {
        if !v.is_empty() {
            self.0.insert(key.into(), Value::Object(v));
        }
        self
    }
    fn object(self, key: &str, v: Option<Obj>) -> Self {
        self.opt(key, v.map(Obj::done))
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn strings_map(m: &BTreeMap<String, String>) -> Map<String, Value> {
    m.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

fn bytes_map(m: &BTreeMap<String, Vec<u8>>) -> Map<String, Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    m.iter()
        .map(|(k, v)| (k.clone(), json!(b64.encode(v))))
        .collect()
}

/// What a client may set in `metadata`; the rest the server sets itself.
fn metadata(m: Option<meta::ObjectMeta>) -> Obj {
    let m = m.unwrap_or_default();
    let owners = m
        .owner_references
        .into_iter()
        .map(|o| {
            Obj::default()
                .opt("apiVersion", o.api_version)
                .opt("kind", o.kind)
                .opt("name", o.name)
                .opt("uid", o.uid)
                .opt("controller", o.controller)
                .opt("blockOwnerDeletion", o.block_owner_deletion)
                .done()
        })
        .collect();
    Obj::default()
        .opt("name", m.name)
        .opt("generateName", m.generate_name)
        .opt("namespace", m.namespace)
        .opt("resourceVersion", m.resource_version)
        .opt("uid", m.uid)
        .map("labels", strings_map(&m.labels))
        .map("annotations", strings_map(&m.annotations))
        .list("ownerReferences", owners)
        .strings("finalizers", &m.finalizers)
}

fn namespace(n: core::Namespace) -> Value {
    let spec = n
        .spec
        .map(|s| Obj::default().strings("finalizers", &s.finalizers));
    Obj::default()
        .object("metadata", Some(metadata(n.metadata)))
        .object("spec", spec)
        .done()
}

fn secret(s: core::Secret) -> Value {
    Obj::default()
        .object("metadata", Some(metadata(s.metadata)))
        .opt("type", s.r#type)
        .opt("immutable", s.immutable)
        .map("data", bytes_map(&s.data))
        .map("stringData", strings_map(&s.string_data))
        .done()
}

fn config_map(c: core::ConfigMap) -> Value {
    Obj::default()
        .object("metadata", Some(metadata(c.metadata)))
        .opt("immutable", c.immutable)
        .map("data", strings_map(&c.data))
        .map("binaryData", bytes_map(&c.binary_data))
        .done()
}

fn service_account(a: core::ServiceAccount) -> Value {
    let secrets = a
        .secrets
        .into_iter()
        .map(|r| {
            Obj::default()
                .opt("apiVersion", r.api_version)
                .opt("kind", r.kind)
                .opt("namespace", r.namespace)
                .opt("name", r.name)
                .opt("uid", r.uid)
                .opt("fieldPath", r.field_path)
                .done()
        })
        .collect();
    let pulls = a
        .image_pull_secrets
        .into_iter()
        .map(|r| Obj::default().opt("name", r.name).done())
        .collect();
    Obj::default()
        .object("metadata", Some(metadata(a.metadata)))
        .list("secrets", secrets)
        .list("imagePullSecrets", pulls)
        .opt(
            "automountServiceAccountToken",
            a.automount_service_account_token,
        )
        .done()
}

fn label_selector(s: meta::LabelSelector) -> Value {
    let exprs = s
        .match_expressions
        .into_iter()
        .map(|e| {
            Obj::default()
                .opt("key", e.key)
                .opt("operator", e.operator)
                .strings("values", &e.values)
                .done()
        })
        .collect();
    Obj::default()
        .map("matchLabels", strings_map(&s.match_labels))
        .list("matchExpressions", exprs)
        .done()
}

/// A Role or ClusterRole.
fn rules_object(
    m: Option<meta::ObjectMeta>,
    rules: &[rbac::PolicyRule],
    aggregation: Option<rbac::AggregationRule>,
) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| {
            Obj::default()
                .strings("verbs", &r.verbs)
                .strings("apiGroups", &r.api_groups)
                .strings("resources", &r.resources)
                .strings("resourceNames", &r.resource_names)
                .strings("nonResourceURLs", &r.non_resource_ur_ls)
                .done()
        })
        .collect();
    let mut o = Obj::default().object("metadata", Some(metadata(m)));
    // An empty rule list is written out: `rules: []` is what a Role without rules holds.
    o.0.insert("rules".into(), Value::Array(rules));
    o.object(
        "aggregationRule",
        aggregation.map(|a| {
            Obj::default().list(
                "clusterRoleSelectors",
                a.cluster_role_selectors
                    .into_iter()
                    .map(label_selector)
                    .collect(),
            )
        }),
    )
    .done()
}

/// A RoleBinding or ClusterRoleBinding.
fn binding(
    m: Option<meta::ObjectMeta>,
    subjects: &[rbac::Subject],
    role_ref: Option<rbac::RoleRef>,
) -> Value {
    let subjects = subjects
        .iter()
        .map(|s| {
            Obj::default()
                .opt("kind", s.kind.clone())
                .opt("apiGroup", s.api_group.clone())
                .opt("name", s.name.clone())
                .opt("namespace", s.namespace.clone())
                .done()
        })
        .collect();
    Obj::default()
        .object("metadata", Some(metadata(m)))
        .list("subjects", subjects)
        .object(
            "roleRef",
            role_ref.map(|r| {
                Obj::default()
                    .opt("apiGroup", r.api_group)
                    .opt("kind", r.kind)
                    .opt("name", r.name)
            }),
        )
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    fn secrets() -> ResourceType {
        Registry::with_builtins()
            .get("", "v1", "secrets")
            .cloned()
            .unwrap()
    }

    fn a_secret() -> Vec<u8> {
        let s = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("db".into()),
                namespace: Some("demo".into()),
                labels: [("app".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
            data: [("password".to_owned(), b"s3cret".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        envelope("v1", "Secret", s.encode_to_vec())
    }

    #[test]
    fn a_secret_in_protobuf_becomes_the_json_the_store_holds() {
        let v = decode(&secrets(), &a_secret()).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db", "namespace": "demo", "labels": {"app": "x"}},
                "type": "Opaque",
                "data": {"password": "czNjcmV0"},
            })
        );
    }

    #[test]
    fn a_truncated_body_is_a_bad_request_that_says_so() {
        let body = a_secret();
        for cut in [2, 5, body.len() / 2, body.len() - 1] {
            let e = decode(&secrets(), &body[..cut]).unwrap_err();
            assert_eq!(e.code, 400, "cut at {cut}: {}", e.message);
            assert!(
                e.message.contains("could not be read as a Secret"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_body_of_another_kind_is_refused_by_name() {
        let ns = core::Namespace::default().encode_to_vec();
        let e = decode(&secrets(), &envelope("v1", "Namespace", ns)).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("holds a Namespace"), "{}", e.message);
    }

    #[test]
    fn a_role_without_rules_holds_an_empty_list_and_a_binding_its_ref() {
        let reg = Registry::with_builtins();
        let roles = reg.get("rbac.authorization.k8s.io", "v1", "roles").unwrap();
        let r = rbac::Role {
            metadata: Some(meta::ObjectMeta {
                name: Some("r".into()),
                ..Default::default()
            }),
            rules: vec![],
        };
        let v = decode(
            roles,
            &envelope("rbac.authorization.k8s.io/v1", "Role", r.encode_to_vec()),
        )
        .unwrap();
        assert_eq!(v["rules"], json!([]));
        let rbs = reg
            .get("rbac.authorization.k8s.io", "v1", "rolebindings")
            .unwrap();
        let b = rbac::RoleBinding {
            metadata: None,
            subjects: vec![rbac::Subject {
                kind: Some("User".into()),
                name: Some("u".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("Role".into()),
                name: Some("r".into()),
            }),
        };
        let v = decode(
            rbs,
            &envelope(
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                b.encode_to_vec(),
            ),
        )
        .unwrap();
        assert_eq!(v["roleRef"]["name"], "r");
        assert_eq!(v["subjects"][0]["kind"], "User");
    }
}

//! Answers in protobuf, for a client that asks for them first (kubectl's typed clients send
//! `Accept: application/vnd.kubernetes.protobuf, */*`), as the real server gives them for its
//! built-in kinds: the stored JSON object (or list, or `Status`) is turned into its `k8s-pb`
//! message and wrapped in the `k8s\0` + `runtime.Unknown` envelope.
//!
//! The kinds are those whose protobuf bodies are read ([`super::decode`]); every other kind is
//! answered in JSON, as the real server answers custom resources.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message;
use serde_json::Value;

use super::MAGIC;

/// The media type of a Kubernetes protobuf answer.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Whether objects of `api_version`/`kind` (and their lists) can be answered in protobuf.
pub fn answers(api_version: &str, kind: &str) -> bool {
    kind != "Status" && encoder(api_version, kind).is_some()
}

/// The encoder of a value of `api_version`/`kind` into its `k8s-pb` message: an object or list
/// of one of the kinds read in protobuf, or a `Status`.
fn encoder(api_version: &str, kind: &str) -> Option<fn(&Value) -> Vec<u8>> {
    macro_rules! list {
        ($list:path, $one:ident) => {
            |v| {
                $list {
                    metadata: Some(list_meta(v)),
                    items: items(v, $one),
                }
                .encode_to_vec()
            }
        };
    }
    let encode: fn(&Value) -> Vec<u8> = match (api_version, kind) {
        (_, "Status") => |v| status(v).encode_to_vec(),
        ("v1", "Namespace") => |v| namespace(v).encode_to_vec(),
        ("v1", "Secret") => |v| secret(v).encode_to_vec(),
        ("v1", "ConfigMap") => |v| config_map(v).encode_to_vec(),
        ("v1", "ServiceAccount") => |v| service_account(v).encode_to_vec(),
        ("v1", "NamespaceList") => list!(core::NamespaceList, namespace),
        ("v1", "SecretList") => list!(core::SecretList, secret),
        ("v1", "ConfigMapList") => list!(core::ConfigMapList, config_map),
        ("v1", "ServiceAccountList") => list!(core::ServiceAccountList, service_account),
        (RBAC, "Role") => |v| role(v).encode_to_vec(),
        (RBAC, "ClusterRole") => |v| cluster_role(v).encode_to_vec(),
        (RBAC, "RoleBinding") => |v| role_binding(v).encode_to_vec(),
        (RBAC, "ClusterRoleBinding") => |v| cluster_role_binding(v).encode_to_vec(),
        (RBAC, "RoleList") => list!(rbac::RoleList, role),
        (RBAC, "ClusterRoleList") => list!(rbac::ClusterRoleList, cluster_role),
        (RBAC, "RoleBindingList") => list!(rbac::RoleBindingList, role_binding),
        (RBAC, "ClusterRoleBindingList") => {
            list!(rbac::ClusterRoleBindingList, cluster_role_binding)
        }
        _ => return None,
    };
    Some(encode)
}

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// `v` (an object, a list of one of the kinds of [`answers`], or a `Status`) as a Kubernetes
/// protobuf body; None for anything else.
pub fn encode(v: &Value) -> Option<Vec<u8>> {
    let api_version = text(v, "apiVersion")?;
    let kind = text(v, "kind")?;
    let raw = encoder(&api_version, &kind)?(v);
    let envelope = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version),
            kind: Some(kind),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(envelope.encode_to_vec());
    Some(out)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

fn texts(v: &Value, key: &str) -> Vec<String> {
    each(v, key)
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn each<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn items<T>(v: &Value, one: fn(&Value) -> T) -> Vec<T> {
    each(v, "items").map(one).collect()
}

fn text_map(v: &Value, key: &str) -> BTreeMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, s)| Some((k.clone(), s.as_str()?.to_owned())))
        .collect()
}

/// A map of base64 strings (Secret `data`, ConfigMap `binaryData`) as bytes.
fn bytes_map(v: &Value, key: &str) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    text_map(v, key)
        .into_iter()
        .filter_map(|(k, s)| Some((k, b64.decode(s).ok()?)))
        .collect()
}

fn time(v: &Value, key: &str) -> Option<meta::Time> {
    let t = chrono::DateTime::parse_from_rfc3339(v.get(key)?.as_str()?).ok()?;
    Some(meta::Time {
        seconds: Some(t.timestamp()),
        nanos: Some(i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0)),
    })
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn object_meta(v: &Value) -> Option<meta::ObjectMeta> {
    let m = v.get("metadata")?;
    Some(meta::ObjectMeta {
        name: text(m, "name"),
        generate_name: text(m, "generateName"),
        namespace: text(m, "namespace"),
        self_link: text(m, "selfLink"),
        uid: text(m, "uid"),
        resource_version: text(m, "resourceVersion"),
        generation: int(m, "generation"),
        creation_timestamp: time(m, "creationTimestamp"),
        deletion_timestamp: time(m, "deletionTimestamp"),
        deletion_grace_period_seconds: int(m, "deletionGracePeriodSeconds"),
        labels: text_map(m, "labels"),
        annotations: text_map(m, "annotations"),
        owner_references: each(m, "ownerReferences")
            .map(|o| meta::OwnerReference {
                api_version: text(o, "apiVersion"),
                kind: text(o, "kind"),
                name: text(o, "name"),
                uid: text(o, "uid"),
                controller: flag(o, "controller"),
                block_owner_deletion: flag(o, "blockOwnerDeletion"),
            })
            .collect(),
        finalizers: texts(m, "finalizers"),
        managed_fields: each(m, "managedFields")
            .map(|f| meta::ManagedFieldsEntry {
                manager: text(f, "manager"),
                operation: text(f, "operation"),
                api_version: text(f, "apiVersion"),
                time: time(f, "time"),
                fields_type: text(f, "fieldsType"),
                // FieldsV1 travels as the JSON text of its field set.
                fields_v1: f.get("fieldsV1").map(|s| meta::FieldsV1 {
                    raw: Some(s.to_string().into_bytes()),
                }),
                subresource: text(f, "subresource"),
            })
            .collect(),
    })
}

fn list_meta(v: &Value) -> meta::ListMeta {
    let m = field(v, "metadata");
    meta::ListMeta {
        self_link: text(m, "selfLink"),
        resource_version: text(m, "resourceVersion"),
        r#continue: text(m, "continue"),
        remaining_item_count: int(m, "remainingItemCount"),
    }
}

fn status(v: &Value) -> meta::Status {
    let details = v.get("details").map(|d| meta::StatusDetails {
        name: text(d, "name"),
        group: text(d, "group"),
        kind: text(d, "kind"),
        uid: text(d, "uid"),
        causes: each(d, "causes")
            .map(|c| meta::StatusCause {
                reason: text(c, "reason"),
                message: text(c, "message"),
                field: text(c, "field"),
            })
            .collect(),
        retry_after_seconds: int(d, "retryAfterSeconds").and_then(|s| i32::try_from(s).ok()),
    });
    meta::Status {
        metadata: Some(list_meta(v)),
        status: text(v, "status"),
        message: text(v, "message"),
        reason: text(v, "reason"),
        details,
        code: int(v, "code").and_then(|c| i32::try_from(c).ok()),
    }
}

fn namespace(v: &Value) -> core::Namespace {
    let spec = v.get("spec").map(|s| core::NamespaceSpec {
        finalizers: texts(s, "finalizers"),
    });
    let status = v.get("status").map(|s| core::NamespaceStatus {
        phase: text(s, "phase"),
        conditions: each(s, "conditions")
            .map(|c| core::NamespaceCondition {
                r#type: text(c, "type"),
                status: text(c, "status"),
                last_transition_time: time(c, "lastTransitionTime"),
                reason: text(c, "reason"),
                message: text(c, "message"),
            })
            .collect(),
    });
    core::Namespace {
        metadata: object_meta(v),
        spec,
        status,
    }
}

fn secret(v: &Value) -> core::Secret {
    core::Secret {
        metadata: object_meta(v),
        immutable: flag(v, "immutable"),
        data: bytes_map(v, "data"),
        string_data: text_map(v, "stringData"),
        r#type: text(v, "type"),
    }
}

fn config_map(v: &Value) -> core::ConfigMap {
    core::ConfigMap {
        metadata: object_meta(v),
        immutable: flag(v, "immutable"),
        data: text_map(v, "data"),
        binary_data: bytes_map(v, "binaryData"),
    }
}

fn service_account(v: &Value) -> core::ServiceAccount {
    core::ServiceAccount {
        metadata: object_meta(v),
        secrets: each(v, "secrets")
            .map(|r| core::ObjectReference {
                kind: text(r, "kind"),
                namespace: text(r, "namespace"),
                name: text(r, "name"),
                uid: text(r, "uid"),
                api_version: text(r, "apiVersion"),
                resource_version: text(r, "resourceVersion"),
                field_path: text(r, "fieldPath"),
            })
            .collect(),
        image_pull_secrets: each(v, "imagePullSecrets")
            .map(|r| core::LocalObjectReference {
                name: text(r, "name"),
            })
            .collect(),
        automount_service_account_token: flag(v, "automountServiceAccountToken"),
    }
}

fn rules(v: &Value) -> Vec<rbac::PolicyRule> {
    each(v, "rules")
        .map(|r| rbac::PolicyRule {
            verbs: texts(r, "verbs"),
            api_groups: texts(r, "apiGroups"),
            resources: texts(r, "resources"),
            resource_names: texts(r, "resourceNames"),
            non_resource_ur_ls: texts(r, "nonResourceURLs"),
        })
        .collect()
}

fn label_selector(v: &Value) -> meta::LabelSelector {
    meta::LabelSelector {
        match_labels: text_map(v, "matchLabels"),
        match_expressions: each(v, "matchExpressions")
            .map(|e| meta::LabelSelectorRequirement {
                key: text(e, "key"),
                operator: text(e, "operator"),
                values: texts(e, "values"),
            })
            .collect(),
    }
}

fn role(v: &Value) -> rbac::Role {
    rbac::Role {
        metadata: object_meta(v),
        rules: rules(v),
    }
}

fn cluster_role(v: &Value) -> rbac::ClusterRole {
    rbac::ClusterRole {
        metadata: object_meta(v),
        rules: rules(v),
        aggregation_rule: v.get("aggregationRule").map(|a| rbac::AggregationRule {
            cluster_role_selectors: each(a, "clusterRoleSelectors")
                .map(label_selector)
                .collect(),
        }),
    }
}

fn subjects(v: &Value) -> Vec<rbac::Subject> {
    each(v, "subjects")
        .map(|s| rbac::Subject {
            kind: text(s, "kind"),
            api_group: text(s, "apiGroup"),
            name: text(s, "name"),
            namespace: text(s, "namespace"),
        })
        .collect()
}

fn role_ref(v: &Value) -> Option<rbac::RoleRef> {
    v.get("roleRef").map(|r| rbac::RoleRef {
        api_group: text(r, "apiGroup"),
        kind: text(r, "kind"),
        name: text(r, "name"),
    })
}

fn role_binding(v: &Value) -> rbac::RoleBinding {
    rbac::RoleBinding {
        metadata: object_meta(v),
        subjects: subjects(v),
        role_ref: role_ref(v),
    }
}

fn cluster_role_binding(v: &Value) -> rbac::ClusterRoleBinding {
    rbac::ClusterRoleBinding {
        metadata: object_meta(v),
        subjects: subjects(v),
        role_ref: role_ref(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;
    use serde_json::json;

    fn opened(v: &Value) -> (TypeMeta, Vec<u8>) {
        let body = encode(v).unwrap();
        let u = Unknown::decode(body.strip_prefix(MAGIC).unwrap()).unwrap();
        (u.type_meta.unwrap(), u.raw.unwrap())
    }

    #[test]
    fn what_a_client_may_send_comes_back_as_it_was_read() {
        let reg = Registry::with_builtins();
        for (plural, group, v) in [
            (
                "configmaps",
                "",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "c", "namespace": "n", "annotations": {"a": "b"},
                        "finalizers": ["f"], "ownerReferences": [{"apiVersion": "v1",
                        "kind": "Secret", "name": "s", "uid": "u", "controller": true}]},
                    "immutable": true, "data": {"k": "v"}, "binaryData": {"b": "AAEC"}}),
            ),
            (
                "clusterroles",
                "rbac.authorization.k8s.io",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "r", "labels": {"x": "y"}},
                    "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"],
                        "resourceNames": ["p"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}],
                    "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"},
                        "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}),
            ),
            (
                "serviceaccounts",
                "",
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "sa", "namespace": "n"},
                    "secrets": [{"name": "t"}], "imagePullSecrets": [{"name": "pull"}],
                    "automountServiceAccountToken": false}),
            ),
            (
                "clusterrolebindings",
                "rbac.authorization.k8s.io",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "b"},
                    "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "n"}],
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "r"}}),
            ),
        ] {
            let t = reg.get(group, "v1", plural).unwrap();
            let body = encode(&v).unwrap();
            assert_eq!(super::super::decode(t, &body).unwrap(), v, "{plural}");
        }
    }

    #[test]
    fn what_the_server_sets_is_answered_too() {
        let (tm, raw) = opened(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "demo", "uid": "1-2", "resourceVersion": "7", "generation": 1,
                "creationTimestamp": "2026-11-30T10:00:00Z",
                "deletionTimestamp": "2026-11-30T10:00:05.250Z",
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {}}}]},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating", "conditions": [{"type": "NamespaceDeletionContentFailure",
                "status": "False", "lastTransitionTime": "2026-11-30T10:00:05Z", "reason": "r"}]}}));
        assert_eq!(tm.kind.as_deref(), Some("Namespace"));
        let n = core::Namespace::decode(&*raw).unwrap();
        let m = n.metadata.unwrap();
        assert_eq!(m.uid.as_deref(), Some("1-2"));
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(m.generation, Some(1));
        let created = m.creation_timestamp.unwrap();
        assert_eq!(created.seconds, Some(1_796_032_800));
        assert_eq!(m.deletion_timestamp.unwrap().nanos, Some(250_000_000));
        let f = &m.managed_fields[0];
        assert_eq!(f.manager.as_deref(), Some("kubectl"));
        assert_eq!(
            f.fields_v1.as_ref().unwrap().raw.as_deref(),
            Some(&br#"{"f:metadata":{}}"#[..])
        );
        assert_eq!(n.spec.unwrap().finalizers, ["kubernetes"]);
        let s = n.status.unwrap();
        assert_eq!(s.phase.as_deref(), Some("Terminating"));
        assert_eq!(s.conditions[0].reason.as_deref(), Some("r"));
    }

    #[test]
    fn a_list_and_a_status_are_answered_and_other_kinds_are_not() {
        let (tm, raw) = opened(&json!({"apiVersion": "v1", "kind": "SecretList",
            "metadata": {"resourceVersion": "9", "continue": "abc"},
            "items": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"},
                "data": {"k": "czNjcmV0"}}]}));
        assert_eq!(tm.kind.as_deref(), Some("SecretList"));
        let l = core::SecretList::decode(&*raw).unwrap();
        let lm = l.metadata.unwrap();
        assert_eq!(
            (lm.resource_version.as_deref(), lm.r#continue.as_deref()),
            (Some("9"), Some("abc"))
        );
        assert_eq!(l.items[0].data["k"], b"s3cret");

        let (tm, raw) = opened(
            &json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "message": "m", "reason": "NotFound", "code": 404,
            "details": {"name": "x", "kind": "secrets", "causes": [{"field": "f"}]}}),
        );
        assert_eq!(tm.kind.as_deref(), Some("Status"));
        let s = meta::Status::decode(&*raw).unwrap();
        assert_eq!((s.code, s.reason.as_deref()), (Some(404), Some("NotFound")));
        assert_eq!(s.details.unwrap().causes[0].field.as_deref(), Some("f"));

        for (api_version, kind) in [
            ("projstore.io/v1alpha1", "Project"),
            ("apps/v1", "Deployment"),
            ("v1", "Event"),
        ] {
            assert!(!answers(api_version, kind));
            assert!(encode(&json!({"apiVersion": api_version, "kind": kind})).is_none());
        }
    }
}

//! Just enough OpenAPI v3 for kubectl: the index, and per group-version documents whose
//! operations declare the `fieldValidation` parameter (so kubectl validates server-side) and
//! whose schemas carry the CRDs' `openAPIV3Schema` (so `kubectl explain` works).

use serde_json::{Map, Value, json};

use super::registry::{Registry, ResourceType};

pub(super) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = registry
        .all()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=projstore")}),
        );
    }
    json!({"paths": paths})
}

/// The name a real API server gives the schema of `t`: its Go package's for a built-in kind
/// (`io.k8s.api.apps.v1.Deployment`), the reversed group for a custom resource
/// (`io.projstore.v1alpha1.Project`).
pub(super) fn schema_name(t: &ResourceType) -> String {
    let group = match (t.crd.is_some(), t.group.as_str()) {
        (true, g) => g.split('.').rev().collect::<Vec<_>>().join("."),
        (false, "") => "io.k8s.api.core".to_owned(),
        (false, "apiextensions.k8s.io") => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_owned()
        }
        (false, g) => format!("io.k8s.api.{}", g.split('.').next().unwrap_or(g)),
    };
    format!("{group}.{}.{}", t.version, t.kind)
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ])
}

fn operation(t: &ResourceType, action: &str, with_params: bool) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", t.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(t))}}}}},
    });
    if with_params {
        op["parameters"] = params();
    }
    op
}

/// `GET /openapi/v3/apis/<group>/<version>` (or `api/v1`).
pub fn group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = registry
        .all()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in types {
        insert_paths(&mut paths, t, operation);
        schemas.insert(schema_name(t), type_schema(t));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The schema of a served kind: a CRD's `openAPIV3Schema`, a built-in kind's real one (anything
/// for the CRD kind itself), with
/// `apiVersion`, `kind` and `metadata`, marked with its group, version and kind.
pub(super) fn type_schema(t: &ResourceType) -> Value {
    let mut schema = match (&t.validator, t.schema) {
        (Some(v), _) => v.openapi().clone(),
        (None, Some(real)) => real(),
        (None, None) => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props
            .entry("metadata")
            .or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
    }
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
    schema
}

/// Adds the collection and object paths of `t`, each verb described by `operation(t, action,
/// writes)`.
pub(super) fn insert_paths(
    paths: &mut Map<String, Value>,
    t: &ResourceType,
    operation: fn(&ResourceType, &str, bool) -> Value,
) {
    let base = format!("/{}", gv_path(&t.group, &t.version));
    let coll = if t.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", t.plural)
    } else {
        format!("{base}/{}", t.plural)
    };
    paths.insert(
        coll.clone(),
        json!({"get": operation(t, "list", false), "post": operation(t, "post", true)}),
    );
    paths.insert(
        format!("{coll}/{{name}}"),
        json!({
            "get": operation(t, "get", false),
            "put": operation(t, "put", true),
            "patch": operation(t, "patch", true),
            "delete": operation(t, "delete", false),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    #[test]
    fn schemas_are_named_as_a_real_server_names_them() {
        let reg = Registry::with_builtins();
        for (group, plural, name) in [
            ("", "namespaces", "io.k8s.api.core.v1.Namespace"),
            ("apps", "deployments", "io.k8s.api.apps.v1.Deployment"),
            (
                "rbac.authorization.k8s.io",
                "clusterroles",
                "io.k8s.api.rbac.v1.ClusterRole",
            ),
            (
                "coordination.k8s.io",
                "leases",
                "io.k8s.api.coordination.v1.Lease",
            ),
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            ),
        ] {
            let t = reg
                .all()
                .find(|t| t.group == group && t.plural == plural)
                .unwrap();
            assert_eq!(schema_name(t), name);
        }
    }
}

//! Validation of objects against a CRD's `openAPIV3Schema` the way the API server does it:
//! defaults first, then the structural schema (types, patterns, bounds, required fields,
//! unknown fields), then the CEL `x-kubernetes-validations` rules (with `oldSelf` on update).
//!
//! Errors name the offending field in the API server's notation (`spec.vdevs[0].path`).

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// One problem with an object, as the API server reports it in a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.copies` or `spec.vdevs[0].path`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The schema of a CRD could not be turned into a validator.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("CRD {crd} has no served version {version} with an openAPIV3Schema")]
    NoSchema { crd: String, version: String },
    #[error("CRD {crd}: schema does not compile: {reason}")]
    Invalid { crd: String, reason: String },
}

/// Validates objects of one version of one CRD. Build once, use for every request.
pub struct ObjectValidator {
    openapi: Value,
    structural: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
    cel_validator: kube_cel::Validator,
}

impl ObjectValidator {
    /// A validator for `version` of `crd`.
    pub fn for_crd(crd: &CustomResourceDefinition, version: &str) -> Result<Self, SchemaError> {
        let crd_name = crd.metadata.name.clone().unwrap_or_default();
        let schema = crd
            .spec
            .versions
            .iter()
            .find(|v| v.name == version)
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or_else(|| SchemaError::NoSchema {
                crd: crd_name.clone(),
                version: version.into(),
            })?;
        let openapi = serde_json::to_value(schema).map_err(|e| SchemaError::Invalid {
            crd: crd_name.clone(),
            reason: e.to_string(),
        })?;
        Self::for_schema(&crd_name, openapi)
    }

    /// A validator for a raw `openAPIV3Schema` value.
    pub fn for_schema(name: &str, openapi: Value) -> Result<Self, SchemaError> {
        let mut json_schema = to_json_schema(&openapi, true);
        // The API server always accepts these at the root, whether the CRD lists them or not.
        if let Some(Value::Object(props)) = json_schema.get_mut("properties") {
            for (field, kind) in [
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
            ] {
                props
                    .entry(field)
                    .or_insert_with(|| serde_json::json!({ "type": kind }));
            }
        }
        let structural = jsonschema::draft4::options()
            .should_validate_formats(false)
            .build(&json_schema)
            .map_err(|e| SchemaError::Invalid {
                crd: name.into(),
                reason: e.to_string(),
            })?;
        let cel = kube_cel::compile_schema(&openapi);
        Ok(Self {
            openapi,
            structural,
            cel,
            cel_validator: kube_cel::Validator::new(),
        })
    }

    /// The `openAPIV3Schema` this validator checks against.
    pub fn openapi(&self) -> &Value {
        &self.openapi
    }

    /// The object without the fields the schema does not know (what the API server does unless
    /// asked for strict field validation), and the paths of the fields it dropped.
    pub fn prune(&self, object: &Value) -> (Value, Vec<String>) {
        let mut out = object.clone();
        let mut dropped = Vec::new();
        prune_node(&self.openapi, &mut out, "", true, &mut dropped);
        (out, dropped)
    }

    /// The object with the schema's defaults filled in, as the API server stores it.
    pub fn with_defaults(&self, object: &Value) -> Value {
        kube_cel::apply_defaults(&self.openapi, object)
    }

    /// Every problem with `object` (already defaulted or not); `old` is the stored object on an
    /// update, which enables the transition rules that use `oldSelf`.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let defaulted = self.with_defaults(object);
        let mut errors: Vec<FieldError> = Vec::new();
        for e in self.structural.iter_errors(&defaulted) {
            let base = dotted(e.instance_path().segments());
            match e.kind() {
                ValidationErrorKind::Required { property } => errors.push(FieldError {
                    field: join(&base, property.as_str().unwrap_or_default()),
                    message: "Required value".into(),
                }),
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        errors.push(FieldError {
                            field: join(&base, name),
                            message: "unknown field".into(),
                        });
                    }
                }
                _ => errors.push(FieldError {
                    field: base,
                    message: e.to_string(),
                }),
            }
        }
        // CEL rules assume a structurally valid object (as in the API server, which stops
        // before CEL when the schema check fails).
        if errors.is_empty()
            && let Err(cel_errors) = self
                .cel_validator
                .validate_compiled(&self.cel, &defaulted, old)
        {
            for e in cel_errors.into_vec() {
                errors.push(FieldError {
                    field: e.field_path.trim_start_matches('.').to_owned(),
                    message: e.message,
                });
            }
        }
        errors
    }
}

fn prune_node(
    schema: &Value,
    value: &mut Value,
    path: &str,
    root: bool,
    dropped: &mut Vec<String>,
) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let unknown: Vec<String> = map
                    .keys()
                    .filter(|k| {
                        let implicit =
                            root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                        !(props.contains_key(*k) || implicit)
                    })
                    .cloned()
                    .collect();
                for k in unknown {
                    map.remove(&k);
                    dropped.push(join(path, &k));
                }
                for (k, v) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune_node(s, v, &join(path, k), false, dropped);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (k, v) in map.iter_mut() {
                    prune_node(s, v, &join(path, k), false, dropped);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    prune_node(s, v, &format!("{path}[{i}]"), false, dropped);
                }
            }
        }
        _ => {}
    }
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}.{name}")
    }
}

fn dotted<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            LocationSegment::Property(p) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&p);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Turns a Kubernetes structural schema into plain JSON Schema (draft 4): `nullable` becomes a
/// `null` type, int-or-string becomes `anyOf`, and with `strict` every object that lists its
/// properties refuses unknown ones (kubectl's default `--validate=strict`).
pub fn to_json_schema(schema: &Value, strict: bool) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (k, v) in map {
        match k.as_str() {
            "properties" | "patternProperties" => {
                let props = v.as_object().map(|p| {
                    p.iter()
                        .map(|(name, s)| (name.clone(), to_json_schema(s, strict)))
                        .collect::<Map<_, _>>()
                });
                out.insert(
                    k.clone(),
                    props.map(Value::Object).unwrap_or_else(|| v.clone()),
                );
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), to_json_schema(v, strict));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = v
                    .as_array()
                    .map(|l| l.iter().map(|s| to_json_schema(s, strict)).collect());
                out.insert(
                    k.clone(),
                    list.map(Value::Array).unwrap_or_else(|| v.clone()),
                );
            }
            "not" => {
                out.insert(k.clone(), to_json_schema(v, strict));
            }
            // Kubernetes extensions and OpenAPI-only keywords mean nothing to JSON Schema;
            // `default` is applied before validation, `nullable` is folded into `type` below.
            "nullable" | "default" | "format" | "example" | "externalDocs" => {}
            k if k.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.insert(
            "anyOf".into(),
            serde_json::json!([{ "type": "integer" }, { "type": "string" }]),
        );
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
        if let Some(Value::Array(values)) = out.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
    if strict
        && !preserve
        && out.contains_key("properties")
        && !out.contains_key("additionalProperties")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    out.into_iter().collect::<Map<_, _>>().into()
}

//! Built-in kinds checked against their real schemas: an object is read into its
//! `k8s-openapi` type (a wrong type names the field) and written back; what the round trip
//! lost are fields the kind does not have, dropped or, with `fieldValidation=Strict`, refused
//! — as the real API server does.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field the kind's schema refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An object checked against its kind's type: the fields it has that the kind does not.
pub type Check = fn(&Value) -> Result<Vec<String>, FieldError>;

/// The real schema of kind `K` (from its k8s-openapi type), every subschema inlined, as the
/// OpenAPI documents publish it. Made once per kind: a Deployment's is large.
pub fn schema<K: schemars::JsonSchema>() -> Value {
    static MADE: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    let name = K::schema_name().into_owned();
    let made = MADE.get_or_init(Mutex::default);
    if let Some(v) = made.lock().ok().and_then(|m| m.get(&name).cloned()) {
        return v;
    }
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut v = generator.into_root_schema_for::<K>().to_value();
    if let Some(m) = v.as_object_mut() {
        m.remove("title");
    }
    if let Ok(mut m) = made.lock() {
        m.insert(name, v.clone());
    }
    v
}

/// The check of kind `T`.
pub fn check<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Vec<String>, FieldError> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| FieldError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| FieldError {
        field: String::new(),
        message: e.to_string(),
    })?;
    let mut unknown = Vec::new();
    lost(obj, &back, "", &mut unknown);
    Ok(unknown)
}

/// The paths (`spec.template.spec.foo`) of what `input` has and `typed` lost; a null is not
/// a field.
fn lost(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i.iter().filter(|(_, v)| !v.is_null()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => lost(v, tv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                lost(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Removes the fields at `paths` (as [`check`] names them) from `obj`.
pub fn drop_fields(obj: &mut Value, paths: &[String]) {
    for p in paths {
        let mut parts: Vec<(String, Option<usize>)> = Vec::new();
        for seg in p.split('.') {
            let (key, idx) = seg.split_once('[').map_or((seg, None), |(k, rest)| {
                (k, rest.trim_end_matches(']').parse().ok())
            });
            parts.push((key.to_owned(), idx));
        }
        remove(obj, &parts);
    }
}

fn remove(obj: &mut Value, parts: &[(String, Option<usize>)]) {
    let Some(((key, idx), rest)) = parts.split_first() else {
        return;
    };
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    if rest.is_empty() && idx.is_none() {
        m.remove(key);
        return;
    }
    let next = match (m.get_mut(key), idx) {
        (Some(v), None) => v,
        (Some(Value::Array(a)), Some(i)) => match a.get_mut(*i) {
            Some(v) => v,
            None => return,
        },
        _ => return,
    };
    remove(next, rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn deployment(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "c", "labels": {"a": "b"}},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                    {"name": "c", "image": "x", "resources": {}, "securityContext": {"runAsNonRoot": true}}
                ]}}
            }
        });
        patch_in(&mut d, extra);
        d
    }

    fn patch_in(d: &mut Value, extra: Value) {
        crate::apiserver::patch::merge_patch(d, &extra);
    }

    #[test]
    fn a_valid_deployment_has_no_unknown_fields() {
        assert_eq!(check::<Deployment>(&deployment(json!({}))), Ok(vec![]));
    }

    #[test]
    fn unknown_fields_are_named_and_dropped() {
        let mut d = deployment(
            json!({"spec": {"replicass": 2, "template": {"spec": {"hostNetwrok": true}}}}),
        );
        let unknown = check::<Deployment>(&d).unwrap();
        assert_eq!(
            unknown,
            ["spec.replicass", "spec.template.spec.hostNetwrok"]
        );
        drop_fields(&mut d, &unknown);
        assert_eq!(check::<Deployment>(&d), Ok(vec![]));
        assert!(d["spec"]["template"]["spec"]["containers"].is_array());
    }

    #[test]
    fn an_unknown_field_inside_a_list_is_named_by_index() {
        let mut d = deployment(json!({}));
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
        let unknown = check::<Deployment>(&d).unwrap();
        assert_eq!(unknown, ["spec.template.spec.containers[0].imagePullPolcy"]);
        drop_fields(&mut d, &unknown);
        assert_eq!(check::<Deployment>(&d), Ok(vec![]));
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let e = check::<Deployment>(&deployment(json!({"spec": {"replicas": "two"}}))).unwrap_err();
        assert_eq!(e.field, "spec.replicas");
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }
}

//! `Table` responses (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), so `kubectl get`
//! shows the CRDs' printer columns.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// Evaluates the simple JSONPath of printer columns (`.status.primary.node`).
fn eval(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

/// `5s`, `3m`, `2h`, `4d` — the way kubectl shows ages.
pub fn age(timestamp: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let secs = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cell(v: Value, type_: &str, now: chrono::DateTime<chrono::Utc>) -> Value {
    match (type_, v) {
        ("date", Value::String(s)) => json!(age(&s, now)),
        (_, Value::Null) => Value::Null,
        (_, Value::String(s)) => json!(s),
        (_, other) => other,
    }
}

/// Columns of a type: Name, the printer columns (or Age when it has none).
fn columns(t: &ResourceType) -> Vec<(String, String, String, String, i32)> {
    let mut cols = vec![(
        "Name".into(),
        "string".into(),
        ".metadata.name".into(),
        "name".into(),
        0,
    )];
    if t.columns.is_empty() {
        if t.kind == "Namespace" {
            cols.push((
                "Status".into(),
                "string".into(),
                ".status.phase".into(),
                String::new(),
                0,
            ));
        }
        cols.push((
            "Age".into(),
            "date".into(),
            ".metadata.creationTimestamp".into(),
            String::new(),
            0,
        ));
    } else {
        for c in &t.columns {
            cols.push((
                c.name.clone(),
                c.type_.clone(),
                c.json_path.clone(),
                String::new(),
                c.priority,
            ));
        }
    }
    cols
}

/// A Table of `objects`; `include_object` is `None`, `Metadata` (default) or `Object`.
pub fn table(
    t: &ResourceType,
    objects: &[Value],
    resource_version: &str,
    include_object: &str,
) -> Value {
    let now = chrono::Utc::now();
    let cols = columns(t);
    let defs: Vec<Value> = cols
        .iter()
        .map(|(name, type_, _, format, priority)| {
            let type_ = if type_ == "date" { "string" } else { type_.as_str() };
            json!({"name": name, "type": type_, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols
                .iter()
                .map(|(_, type_, path, _, _)| cell(eval(o, path), type_, now))
                .collect();
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_default(),
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

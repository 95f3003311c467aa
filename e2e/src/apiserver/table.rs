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

type Now = chrono::DateTime<chrono::Utc>;

/// Where a column's cells come from.
enum Source {
    /// A printer column's JSONPath.
    Path(String),
    /// What the real API server's printer computes for a built-in kind.
    Computed(fn(&Value, Now) -> Value),
}

/// A column of a Table.
struct Col {
    name: String,
    type_: String,
    format: &'static str,
    priority: i32,
    source: Source,
}

impl Col {
    fn path(name: &'static str, type_: &str, path: &str) -> Self {
        Self {
            name: name.into(),
            type_: type_.into(),
            format: "",
            priority: 0,
            source: Source::Path(path.into()),
        }
    }
    fn computed(name: &'static str, type_: &str, f: fn(&Value, Now) -> Value) -> Self {
        Self {
            name: name.into(),
            type_: type_.into(),
            format: "",
            priority: 0,
            source: Source::Computed(f),
        }
    }
    fn wide(mut self) -> Self {
        self.priority = 1;
        self
    }
}

fn count(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn text(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The first timestamp among `ptrs` that is set.
fn first_time(o: &Value, ptrs: &[&str]) -> String {
    ptrs.iter()
        .map(|p| text(o, p))
        .find(|t| !t.is_empty())
        .unwrap_or_default()
}

/// An event's LAST SEEN: how long ago it last happened, and how often over how long.
fn event_last_seen(e: &Value, now: Now) -> Value {
    let last = first_time(
        e,
        &[
            "/series/lastObservedTime",
            "/lastTimestamp",
            "/deprecatedLastTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ],
    );
    let count = e
        .pointer("/series/count")
        .or_else(|| e.get("count"))
        .or_else(|| e.get("deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let first = first_time(
        e,
        &["/firstTimestamp", "/deprecatedFirstTimestamp", "/eventTime"],
    );
    if count > 1 && !first.is_empty() {
        json!(format!(
            "{} (x{count} over {})",
            age(&last, now),
            age(&first, now)
        ))
    } else {
        json!(age(&last, now))
    }
}

/// The object an event is about, as `kind/name` (core `involvedObject`, or `regarding`).
fn event_object(e: &Value) -> &Value {
    e.get("involvedObject")
        .or_else(|| e.get("regarding"))
        .unwrap_or(&Value::Null)
}

fn event_columns() -> Vec<Col> {
    vec![
        Col::computed("Last Seen", "string", event_last_seen),
        Col::path("Type", "string", ".type"),
        Col::path("Reason", "string", ".reason"),
        Col::computed("Object", "string", |e, _| {
            let o = event_object(e);
            json!(format!(
                "{}/{}",
                text(o, "/kind").to_ascii_lowercase(),
                text(o, "/name")
            ))
        }),
        Col::computed("Subobject", "string", |e, _| {
            json!(text(event_object(e), "/fieldPath"))
        })
        .wide(),
        Col::computed("Source", "string", |e, _| {
            let c = first_time(e, &["/source/component", "/reportingController"]);
            let host = text(e, "/source/host");
            json!(if host.is_empty() {
                c
            } else {
                format!("{c}, {host}")
            })
        })
        .wide(),
        Col::computed("Message", "string", |e, _| {
            json!(first_time(e, &["/message", "/note"]))
        }),
        Col::computed("First Seen", "string", |e, now| {
            json!(age(
                &first_time(
                    e,
                    &["/firstTimestamp", "/deprecatedFirstTimestamp", "/eventTime"]
                ),
                now
            ))
        })
        .wide(),
        Col::computed("Count", "integer", |e, _| {
            e.get("count")
                .or_else(|| e.pointer("/series/count"))
                .cloned()
                .unwrap_or(json!(1))
        })
        .wide(),
        Col::path("Name", "string", ".metadata.name").wide(),
    ]
}

/// The columns the real API server prints for a built-in kind, between Name and Age.
fn builtin_columns(t: &ResourceType) -> Vec<Col> {
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Namespace") => vec![Col::path("Status", "string", ".status.phase")],
        ("", "Secret") => vec![
            Col::path("Type", "string", ".type"),
            Col::computed("Data", "string", |o, _| json!(count(o.get("data")))),
        ],
        ("", "ConfigMap") => vec![Col::computed("Data", "string", |o, _| {
            json!(count(o.get("data")) + count(o.get("binaryData")))
        })],
        ("", "ServiceAccount") => vec![Col::computed("Secrets", "string", |o, _| {
            json!(count(o.get("secrets")))
        })],
        ("coordination.k8s.io", "Lease") => {
            vec![Col::path("Holder", "string", ".spec.holderIdentity")]
        }
        _ => Vec::new(),
    }
}

/// Columns of a type: an event's own, or Name, the printer columns (or the built-in kind's
/// columns and Age when it has none).
fn columns(t: &ResourceType) -> Vec<Col> {
    if t.crd.is_none() && t.kind == "Event" {
        return event_columns();
    }
    let mut name = Col::path("Name", "string", ".metadata.name");
    name.format = "name";
    let mut cols = vec![name];
    if t.columns.is_empty() {
        cols.extend(builtin_columns(t));
        cols.push(Col::path("Age", "date", ".metadata.creationTimestamp"));
    } else {
        for c in &t.columns {
            cols.push(Col {
                name: c.name.clone(),
                type_: c.type_.clone(),
                format: "",
                priority: c.priority,
                source: Source::Path(c.json_path.clone()),
            });
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
        .map(|c| {
            let type_ = if c.type_ == "date" { "string" } else { c.type_.as_str() };
            json!({"name": c.name, "type": type_, "format": c.format, "description": "", "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols
                .iter()
                .map(|c| match &c.source {
                    Source::Path(path) => cell(eval(o, path), &c.type_, now),
                    Source::Computed(f) => f(o, now),
                })
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

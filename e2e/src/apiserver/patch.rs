//! Patches (JSON merge, JSON patch, server-side apply) and field ownership (`managedFields`).
//!
//! Server-side apply, simplified (documented deviations from the real server):
//! - lists are atomic: a list is owned and replaced as a whole (our CRDs declare no
//!   `x-kubernetes-list-type: map`, so the real server also treats them as atomic);
//! - an `Update` (PUT or non-apply PATCH) takes ownership of exactly the leaf fields whose
//!   value it changed;
//! - `fieldsV1` lists leaves only (no `"."` entries for intermediate objects).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A field path: object keys from the root.
pub type Path = Vec<String>;

/// Fields no manager owns (identity and bookkeeping).
fn ignored(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind" | "status") => true,
        Some("metadata") => !matches!(
            path.get(1).map(String::as_str),
            Some("labels" | "annotations" | "finalizers" | "ownerReferences")
        ),
        _ => false,
    }
}

/// The leaf fields set in `v` (objects are walked; scalars, lists and empty objects are leaves).
pub fn field_set(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() && !ignored(path) {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Deep-merges `patch` into `target`: objects merge, everything else is replaced.
fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && pv.is_object() => deep_merge(tv, pv),
                    _ => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
    pub subresource: String,
}

pub fn to_fields_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for k in path {
            let entry = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            cur = match entry.as_object_mut() {
                Some(m) => m,
                None => break,
            };
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m
            .iter()
            .filter_map(|(k, c)| k.strip_prefix("f:").map(|k| (k, c)))
            .collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, c) in children {
            path.push(k.to_owned());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<Managed> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| Managed {
                    manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                    time: e["time"].as_str().unwrap_or_default().to_owned(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                    subresource: e["subresource"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields` (entries without fields are dropped).
pub fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let list: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Records an Update by `manager`: it now owns every leaf whose value changed.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: &str,
) {
    let mut managed = old.map(read_managed).unwrap_or_default();
    let new_fields = field_set(new);
    let changed: BTreeSet<Path> = match old {
        None => new_fields,
        Some(o) => new_fields
            .union(&field_set(o))
            .filter(|p| get(o, p) != get(new, p))
            .filter(|p| get(new, p).is_some())
            .cloned()
            .collect(),
    };
    if !changed.is_empty() {
        for m in managed.iter_mut() {
            m.fields.retain(|p| !changed.iter().any(|c| overlaps(c, p)));
        }
        match managed.iter_mut().find(|m| {
            m.manager == manager && m.operation == "Update" && m.subresource == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.to_owned();
            }
            None => managed.push(Managed {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                time: now.to_owned(),
                fields: changed,
                subresource: subresource.to_owned(),
            }),
        }
    }
    // Fields that no longer exist are owned by nobody.
    let present = field_set(new);
    for m in managed.iter_mut() {
        m.fields.retain(|p| present.iter().any(|q| overlaps(p, q)));
    }
    write_managed(new, &managed);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub struct ApplyConflict {
    pub manager: String,
    pub field: String,
}

/// Server-side apply of `config` by `manager` onto `current` (None: create).
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<ApplyConflict>> {
    let new_set = field_set(config);
    let mut managed = current.map(read_managed).unwrap_or_default();
    let mut conflicts = Vec::new();
    if let Some(cur) = current {
        for m in managed.iter().filter(|m| m.manager != manager) {
            for p in m
                .fields
                .iter()
                .filter(|p| new_set.iter().any(|n| overlaps(n, p)))
            {
                if get(cur, p) != get(config, p) {
                    conflicts.push(ApplyConflict {
                        manager: m.manager.clone(),
                        field: format!(".{}", p.join(".")),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let prev: BTreeSet<Path> = managed
        .iter()
        .filter(|m| m.manager == manager && m.operation == "Apply")
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    // Forcing takes the fields away from their owners.
    for m in managed.iter_mut().filter(|m| m.manager != manager) {
        m.fields.retain(|p| !new_set.iter().any(|n| overlaps(n, p)));
    }
    let mut result = current.cloned().unwrap_or_else(|| json!({}));
    let others: BTreeSet<Path> = managed
        .iter()
        .filter(|m| m.manager != manager)
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    for p in prev.difference(&new_set) {
        if !others.iter().any(|o| overlaps(o, p)) {
            remove(&mut result, p);
        }
    }
    deep_merge(&mut result, config);
    managed.retain(|m| !(m.manager == manager && m.operation == "Apply"));
    managed.push(Managed {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: api_version.to_owned(),
        time: now.to_owned(),
        fields: new_set,
        subresource: String::new(),
    });
    write_managed(&mut result, &managed);
    Ok(result)
}

/// Applies a JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a JSON patch (RFC 6902), including `test` operations.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &p).map_err(|e| e.to_string())
}

/// Keys of a map in `managedFields` order, for tests and messages.
pub fn managers(obj: &Value) -> BTreeMap<String, String> {
    read_managed(obj)
        .into_iter()
        .map(|m| (m.manager, m.operation))
        .collect()
}

/// Removes a strategic merge patch's directives (`$patch`, `$setElementOrder/…`,
/// `$retainKeys`, `$deleteFromPrimitiveList/…`), which are instructions, not fields: applied as
/// a merge patch, they would otherwise be stored, or refused as unknown fields.
pub fn strip_strategic_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_strategic_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_strategic_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_directives_are_not_fields() {
        let mut p = json!({"metadata": {"$setElementOrder/finalizers": [{"x": 1}],
            "finalizers": ["a"]}, "secrets": [{"$patch": "replace", "name": "t"}], "$retainKeys": ["a"]});
        strip_strategic_directives(&mut p);
        assert_eq!(
            p,
            json!({"metadata": {"finalizers": ["a"]}, "secrets": [{"name": "t"}]})
        );
    }

    #[test]
    fn apply_owns_removes_and_conflicts() {
        let now = "2026-11-21T00:00:00Z";
        let a = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"quota": "1Gi", "copies": 3}});
        let obj = apply(None, &a, "alice", false, "v1", now).unwrap();
        assert_eq!(obj["spec"]["copies"], 3);
        // Bob changes copies with an Update: he now owns it.
        let mut upd = obj.clone();
        upd["spec"]["copies"] = json!(2);
        record_update(Some(&obj), &mut upd, "bob", "v1", now, "");
        assert_eq!(
            managers(&upd).get("bob").map(String::as_str),
            Some("Update")
        );
        // Alice re-applies copies=3: conflict with bob, unless forced.
        let err = apply(Some(&upd), &a, "alice", false, "v1", now).unwrap_err();
        assert_eq!(err[0].manager, "bob");
        assert_eq!(err[0].field, ".spec.copies");
        let forced = apply(Some(&upd), &a, "alice", true, "v1", now).unwrap();
        assert_eq!(forced["spec"]["copies"], 3);
        assert!(!managers(&forced).contains_key("bob"));
        // Alice drops the label from her config: it is removed.
        let b = json!({"metadata": {"name": "x"}, "spec": {"quota": "1Gi", "copies": 3}});
        let applied = apply(Some(&forced), &b, "alice", false, "v1", now).unwrap();
        assert!(applied.pointer("/metadata/labels/a").is_none());
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"spec": {"a": 1, "b": {"c": [1, 2]}}, "metadata": {"labels": {"x": "y"}, "name": "n"}});
        let set = field_set(&v);
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        assert!(!set.contains(&vec!["metadata".to_owned(), "name".to_owned()]));
    }
}

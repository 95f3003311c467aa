//! Deletion: finalizers first, then the object, then what it owned (background garbage
//! collection, or orphaning); a namespace takes everything in it along.

use serde_json::{Value, json};

use super::{State, finalizers, meta_str, now};
use crate::apiserver::registry::ResourceType;
use crate::apiserver::status::ApiError;

impl State {
    /// DELETE: finalizers first, then the object, then its dependents.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        orphan: bool,
        precondition_uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let ns = if t.namespaced { ns } else { "" };
        let Some(old) = self.get(t, ns, name).cloned() else {
            return Err(ApiError::not_found(t, name));
        };
        if precondition_uid.is_some_and(|u| u != meta_str(&old, "uid")) {
            return Err(ApiError::conflict(
                t,
                name,
                "Precondition failed: UID in precondition does not match the UID in record",
            ));
        }
        if orphan {
            let uid = meta_str(&old, "uid").to_owned();
            self.orphan_dependents(&uid);
        }
        if t.kind == "Namespace" {
            return Ok(self.delete_namespace(t, name, old));
        }
        if !finalizers(&old).is_empty() {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(self.commit(t, "MODIFIED", marked));
        }
        Ok(self.remove(t, ns, name, old))
    }

    /// Removes an object for good and collects what it owned.
    pub(super) fn remove(&mut self, t: &ResourceType, ns: &str, name: &str, obj: Value) -> Value {
        let uid = meta_str(&obj, "uid").to_owned();
        let gone = self.commit(t, "DELETED", obj);
        if t.plural == "customresourcedefinitions"
            && let Some(served) = self.registry.unregister_crd(name)
        {
            {
                let ids: Vec<(String, String)> = self
                    .objects
                    .get(&served.key())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for (n, nm) in ids {
                    if let Some(o) = self.get(&served, &n, &nm).cloned() {
                        self.commit(&served, "DELETED", o);
                    }
                }
            }
        }
        self.collect_garbage(&uid);
        if t.namespaced {
            self.finish_namespace_if_empty(ns);
        }
        gone
    }

    /// Background deletion of objects whose owners are all gone.
    fn collect_garbage(&mut self, deleted_uid: &str) {
        let mut dependents = Vec::new();
        for (key, objs) in &self.objects {
            for o in objs.values() {
                let refs = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array);
                let Some(refs) = refs.filter(|r| r.iter().any(|r| r["uid"] == deleted_uid)) else {
                    continue;
                };
                let owners_left = refs
                    .iter()
                    .filter(|r| r["uid"] != deleted_uid)
                    .any(|r| self.uid_exists(r["uid"].as_str().unwrap_or_default()));
                if !owners_left {
                    dependents.push((
                        key.clone(),
                        meta_str(o, "namespace").to_owned(),
                        meta_str(o, "name").to_owned(),
                    ));
                }
            }
        }
        for (key, ns, name) in dependents {
            if let Some(t) = self.registry.by_key(&key).cloned() {
                let _ = self.delete(&t, &ns, &name, false, None);
            }
        }
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects
            .values()
            .any(|m| m.values().any(|o| meta_str(o, "uid") == uid))
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let mut changes = Vec::new();
        for (key, objs) in &self.objects {
            for o in objs.values() {
                if let Some(refs) = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    && refs.iter().any(|r| r["uid"] == uid)
                {
                    let mut n = (**o).clone();
                    let kept: Vec<Value> =
                        refs.iter().filter(|r| r["uid"] != uid).cloned().collect();
                    n["metadata"]["ownerReferences"] = json!(kept);
                    changes.push((key.clone(), n));
                }
            }
        }
        for (key, n) in changes {
            if let Some(t) = self.registry.by_key(&key).cloned() {
                self.commit(&t, "MODIFIED", n);
            }
        }
    }

    /// Namespace deletion: delete everything in it, then the namespace once empty.
    fn delete_namespace(&mut self, t: &ResourceType, name: &str, old: Value) -> Value {
        let mut marked = old.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["status"] = json!({"phase": "Terminating"});
        let marked = self.commit(t, "MODIFIED", marked);
        let types: Vec<ResourceType> = self
            .registry
            .all()
            .filter(|t| t.namespaced)
            .cloned()
            .collect();
        for rt in types {
            let names: Vec<String> = self
                .list(&rt, name, None)
                .map(|o| meta_str(o, "name").to_owned())
                .collect();
            for n in names {
                let _ = self.delete(&rt, name, &n, false, None);
            }
        }
        self.finish_namespace_if_empty(name);
        self.get(t, "", name).cloned().unwrap_or(marked)
    }

    fn finish_namespace_if_empty(&mut self, ns: &str) {
        let Some(nst) = self.registry.get("", "v1", "namespaces").cloned() else {
            return;
        };
        let Some(n) = self.get(&nst, "", ns).cloned() else {
            return;
        };
        if n.pointer("/metadata/deletionTimestamp").is_none() {
            return;
        }
        let empty = self
            .registry
            .all()
            .filter(|t| t.namespaced)
            .all(|t| self.list(t, ns, None).next().is_none());
        if empty {
            self.commit(&nst, "DELETED", n);
        }
    }
}

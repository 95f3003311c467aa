//! Objects, resource versions and the watch log: the state behind every request.
//!
//! One lock guards it all; every write gets the next global resourceVersion, lands in the
//! object map and the event log, and is broadcast to watchers — in that order, under the lock,
//! so no watcher ever sees versions go backwards or miss an event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::patch;
use super::registry::{Registry, ResKey, ResourceType};
use super::status::ApiError;

/// One change, as watchers receive it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ResKey,
    pub namespace: String,
    pub type_: &'static str,
    pub object: Arc<Value>,
    /// The object before a MODIFIED, to tell selector transitions.
    pub prev: Option<Arc<Value>>,
}

/// How a write was asked for.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub field_manager: String,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub strict: bool,
    pub dry_run: bool,
    /// Server-side apply: `managedFields` were computed by the apply, keep them.
    pub apply: bool,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

type Objects = BTreeMap<(String, String), Arc<Value>>;

pub struct State {
    pub registry: Registry,
    rv: u64,
    objects: HashMap<ResKey, Objects>,
    log: VecDeque<Arc<Change>>,
    log_cap: usize,
    pub tx: broadcast::Sender<Arc<Change>>,
    pub dirty: bool,
}

fn meta_str<'a>(o: &'a Value, field: &str) -> &'a str {
    o.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(5)
        .collect()
}

impl State {
    pub fn new(log_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self {
            registry: Registry::with_builtins(),
            rv: 1,
            objects: HashMap::new(),
            log: VecDeque::new(),
            log_cap,
            tx,
            dirty: false,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can still start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.log.front().map(|c| c.rv - 1).unwrap_or(self.rv)
    }

    /// Changes after `rv` (for a watch that resumes).
    pub fn changes_since(&self, rv: u64) -> Vec<Arc<Change>> {
        let start = self.log.partition_point(|c| c.rv <= rv);
        self.log.iter().skip(start).cloned().collect()
    }

    pub fn get(&self, t: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&t.key())?
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|o| o.as_ref())
    }

    /// Objects of `t` in `ns` (all namespaces when `ns` is empty), in (namespace, name) order,
    /// starting after `after`.
    pub fn list<'a>(
        &'a self,
        t: &ResourceType,
        ns: &'a str,
        after: Option<(String, String)>,
    ) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        use std::ops::Bound;
        let Some(m) = self.objects.get(&t.key()) else {
            return Box::new(std::iter::empty());
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Box::new(
            m.range((lower, Bound::Unbounded))
                .filter(move |((n, _), _)| ns.is_empty() || n == ns)
                .map(|(_, v)| v.as_ref()),
        )
    }

    pub fn count(&self, key: &ResKey) -> usize {
        self.objects.get(key).map_or(0, BTreeMap::len)
    }

    /// Every object, for persistence.
    pub fn snapshot(&self) -> Value {
        let mut all = Vec::new();
        for (key, objs) in &self.objects {
            for o in objs.values() {
                all.push(json!({"group": key.0, "plural": key.1, "object": **o}));
            }
        }
        json!({"resourceVersion": self.rv, "objects": all})
    }

    /// Loads a snapshot written by [`State::snapshot`]: CRDs first, so their kinds exist.
    pub fn restore(&mut self, snap: &Value) -> Result<(), String> {
        self.rv = snap["resourceVersion"].as_u64().unwrap_or(1);
        let items = snap["objects"].as_array().cloned().unwrap_or_default();
        let (crds, rest): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|i| i["plural"] == "customresourcedefinitions");
        for item in crds.into_iter().chain(rest) {
            let key = (
                item["group"].as_str().unwrap_or_default().to_owned(),
                item["plural"].as_str().unwrap_or_default().to_owned(),
            );
            let o = item["object"].clone();
            if key.1 == "customresourcedefinitions" {
                self.registry.register_crd(&o)?;
            }
            let id = (
                meta_str(&o, "namespace").to_owned(),
                meta_str(&o, "name").to_owned(),
            );
            self.objects.entry(key).or_default().insert(id, Arc::new(o));
        }
        Ok(())
    }

    /// Records a change: next resourceVersion, object map, log, broadcast.
    /// The stored object and the log share one copy.
    fn commit(&mut self, t: &ResourceType, type_: &'static str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = meta_str(&obj, "namespace").to_owned();
        let id = (ns.clone(), meta_str(&obj, "name").to_owned());
        let shared = Arc::new(obj);
        let objs = self.objects.entry(t.key()).or_default();
        let prev = if type_ == "DELETED" {
            objs.remove(&id)
        } else {
            objs.insert(id, shared.clone())
        };
        let change = Arc::new(Change {
            rv: self.rv,
            key: t.key(),
            namespace: ns,
            type_,
            object: shared.clone(),
            prev: if type_ == "MODIFIED" { prev } else { None },
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.log_cap {
            self.log.pop_front();
        }
        let _ = self.tx.send(change);
        self.dirty = true;
        (*shared).clone()
    }

    /// Schema work for custom resources: drop (or, strictly, refuse) unknown fields, apply
    /// defaults, validate with the schema and CEL rules (`old` enables transition rules).
    fn admit(
        &self,
        t: &ResourceType,
        obj: Value,
        old: Option<&Value>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name").to_owned();
        let Some(v) = &t.validator else {
            return Ok(obj);
        };
        let (pruned, unknown) = v.prune(&obj);
        if opts.strict && !unknown.is_empty() {
            let causes = unknown
                .into_iter()
                .map(|f| (f.clone(), format!("unknown field \"{f}\"")))
                .collect();
            return Err(ApiError::invalid(t, &name, causes));
        }
        let defaulted = v.with_defaults(&pruned);
        let errors = v.validate(&defaulted, old);
        if !errors.is_empty() {
            return Err(ApiError::invalid(
                t,
                &name,
                errors.into_iter().map(|e| (e.field, e.message)).collect(),
            ));
        }
        Ok(defaulted)
    }

    fn check_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
        let ok = if t.kind == "Namespace" {
            projstore_api::names::is_dns1123_label(name)
        } else {
            projstore_api::names::is_dns1123_subdomain(name)
                || (t.plural == "events" && !name.is_empty())
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::invalid(
                t,
                name,
                vec![(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'"
                    ),
                )],
            ))
        }
    }

    /// POST: a new object.
    pub fn create(
        &mut self,
        t: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let body_ns = meta_str(&obj, "namespace").to_owned();
        if t.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let nst = self.registry.get("", "v1", "namespaces").cloned();
            match nst.as_ref().and_then(|n| self.get(n, "", ns)) {
                None => {
                    let mut e =
                        ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
                    e.details = Some(json!({"name": ns, "kind": "namespaces"}));
                    return Err(e);
                }
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::forbidden(format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    )));
                }
                _ => {}
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let mut name = meta_str(&obj, "name").to_owned();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    t,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            name = format!("{prefix}{}", random_suffix());
            obj["metadata"]["name"] = json!(name);
        }
        Self::check_name(t, &name)?;
        if self
            .get(t, if t.namespaced { ns } else { "" }, &name)
            .is_some()
        {
            return Err(ApiError::already_exists(t, &name));
        }
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        let mut obj = self.admit(t, obj, None, opts)?;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        if t.generation {
            meta["generation"] = json!(1);
        }
        if let Some(m) = meta.as_object_mut() {
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                m.remove(k);
            }
            if !opts.apply {
                m.remove("managedFields");
            }
        }
        if t.kind == "Namespace" {
            obj["status"] = json!({"phase": "Active"});
        }
        if t.status_subresource && t.crd.is_some() {
            // Status is not settable on create for kinds with a status subresource.
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if !opts.apply {
            patch::record_update(
                None,
                &mut obj,
                &opts.field_manager,
                &t.api_version(),
                &now(),
                "",
            );
        }
        if opts.dry_run {
            return Ok(obj);
        }
        if t.plural == "customresourcedefinitions" {
            self.registry
                .register_crd(&obj)
                .map_err(|e| ApiError::invalid(t, &name, vec![("spec".into(), e)]))?;
            obj["status"] = crd_status(&obj);
        }
        let created = self.commit(t, "ADDED", obj);
        if t.group == "events.k8s.io" {
            self.mirror_event(&created);
        }
        Ok(created)
    }

    /// PUT (main resource or `/status`). `rv_required`: real PUTs must name the version they
    /// replace; patches pass the version they read.
    pub fn update(
        &mut self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let ns = if t.namespaced { ns } else { "" };
        let Some(old) = self.get(t, ns, name).cloned() else {
            return Err(ApiError::not_found(t, name));
        };
        if !obj.is_object() || !obj.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::bad_request(
                "the body must be an object with metadata",
            ));
        }
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let want_rv = meta_str(&obj, "resourceVersion");
        if want_rv.is_empty() {
            return Err(ApiError::invalid(
                t,
                name,
                vec![(
                    "metadata.resourceVersion".into(),
                    "Invalid value: 0x0: must be specified for an update".into(),
                )],
            ));
        }
        if want_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(
                t,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.replace(t, (ns, name), old, &mut obj, status, opts)
    }

    /// Computes and stores the successor of `old` from the client's `obj`.
    pub fn replace(
        &mut self,
        t: &ResourceType,
        (ns, name): (&str, &str),
        old: Value,
        obj: &mut Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut new = if status {
            // /status: only the status stanza changes.
            let mut n = old.clone();
            n["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if n["status"].is_null()
                && let Some(m) = n.as_object_mut()
            {
                m.remove("status");
            }
            n
        } else {
            let mut n = obj.clone();
            if t.status_subresource {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        };
        new["apiVersion"] = json!(t.api_version());
        new["kind"] = json!(t.kind);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let old_f = finalizers(&old);
            if finalizers(&new).iter().any(|f| !old_f.contains(f)) {
                return Err(ApiError::invalid(
                    t,
                    name,
                    vec![(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        let mut new = self.admit(t, new, Some(&old), opts)?;
        if t.generation && !status && spec_of(&old) != spec_of(&new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let sub = if status { "status" } else { "" };
        if !opts.apply {
            patch::record_update(
                Some(&old),
                &mut new,
                &opts.field_manager,
                &t.api_version(),
                &now(),
                sub,
            );
        }
        if opts.dry_run {
            return Ok(new);
        }
        // No change, no new version (like the real server).
        // Ownership changes count; their timestamps alone do not.
        let strip_times = |o: &Value| {
            let mut c = o.clone();
            if let Some(list) = c
                .pointer_mut("/metadata/managedFields")
                .and_then(Value::as_array_mut)
            {
                for e in list.iter_mut() {
                    e["time"] = Value::Null;
                }
            }
            c
        };
        let cmp_old = strip_times(&old);
        let mut cmp_new = strip_times(&new);
        cmp_new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if cmp_old == cmp_new {
            return Ok(old);
        }
        if t.plural == "customresourcedefinitions" {
            self.registry
                .register_crd(&new)
                .map_err(|e| ApiError::invalid(t, name, vec![("spec".into(), e)]))?;
            new["status"] = crd_status(&new);
        }
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            return Ok(self.remove(t, ns, name, new));
        }
        let updated = self.commit(t, "MODIFIED", new);
        if t.group == "events.k8s.io" {
            self.mirror_event(&updated);
        }
        Ok(updated)
    }

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
    fn remove(&mut self, t: &ResourceType, ns: &str, name: &str, obj: Value) -> Value {
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

    /// Keeps a `v1` Event twin of every `events.k8s.io/v1` Event, so `kubectl describe` shows
    /// what controllers record (the real server converts between the two versions).
    fn mirror_event(&mut self, ev: &Value) {
        let Some(core) = self.registry.get("", "v1", "events").cloned() else {
            return;
        };
        let ns = meta_str(ev, "namespace").to_owned();
        let name = meta_str(ev, "name").to_owned();
        let mut twin = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns, "uid": meta_str(ev, "uid"), "creationTimestamp": meta_str(ev, "creationTimestamp")},
            "involvedObject": ev.get("regarding").cloned().unwrap_or_default(),
            "reason": ev.get("reason").cloned().unwrap_or_default(),
            "message": ev.get("note").cloned().unwrap_or_default(),
            "type": ev.get("type").cloned().unwrap_or_default(),
            "source": {"component": ev.get("reportingController").cloned().unwrap_or_default()},
            "reportingComponent": ev.get("reportingController").cloned().unwrap_or_default(),
            "reportingInstance": ev.get("reportingInstance").cloned().unwrap_or_default(),
            "firstTimestamp": ev.get("eventTime").cloned().unwrap_or_default(),
            "lastTimestamp": ev.pointer("/series/lastObservedTime").cloned().or_else(|| ev.get("eventTime").cloned()).unwrap_or_default(),
            "count": ev.pointer("/series/count").cloned().unwrap_or(json!(1)),
        });
        let prev = self.get(&core, &ns, &name).cloned();
        if let Some(p) = &prev {
            twin["metadata"]["uid"] = p["metadata"]["uid"].clone();
        }
        self.commit(
            &core,
            if prev.is_some() { "MODIFIED" } else { "ADDED" },
            twin,
        );
    }
}

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// A CRD is accepted and established as soon as it is stored.
fn crd_status(crd: &Value) -> Value {
    let t = now();
    let cond = |type_: &str, reason: &str| json!({"type": type_, "status": "True", "reason": reason, "message": "", "lastTransitionTime": t});
    json!({
        "conditions": [cond("NamesAccepted", "NoConflicts"), cond("Established", "InitialNamesAccepted")],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_default(),
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|v| {
            v.iter().filter(|x| x["storage"] == true).map(|x| x["name"].clone()).collect::<Vec<_>>()
        }).unwrap_or_default(),
    })
}

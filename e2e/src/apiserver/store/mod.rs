//! Objects, resource versions and the watch log: the state behind every request. Reads and
//! the one way a change is recorded live here; writes (create, update, patch) in `write.rs`,
//! deletion with finalizers, garbage collection and namespaces in `delete.rs`.
//!
//! One lock guards it all; every write gets the next global resourceVersion, lands in the
//! object map and the event log, and is broadcast to watchers — in that order, under the lock,
//! so no watcher ever sees versions go backwards or miss an event.

mod delete;
mod write;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::registry::{Registry, ResKey, ResourceType};

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

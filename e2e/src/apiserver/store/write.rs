//! Writes: create (POST), update (PUT) and the replace every patch ends in, each admitted
//! by the kind's schema, defaults and CEL rules; a CRD gets its status, an Event its `v1` twin.

use serde_json::{Value, json};

use super::{State, WriteOptions, finalizers, meta_str, now};
use crate::apiserver::patch;
use crate::apiserver::registry::ResourceType;
use crate::apiserver::status::ApiError;
use crate::apiserver::typed;

impl State {
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
        let mut obj = obj;
        if t.group.is_empty() && t.kind == "Secret" {
            secret_string_data(&mut obj);
        }
        if let Some(check) = t.typed {
            return Self::admit_typed(t, check, obj, &name, opts);
        }
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

    /// A built-in kind against its k8s-openapi type: a wrong type is a 422 naming the field,
    /// unknown fields are dropped or, strictly, refused.
    fn admit_typed(
        t: &ResourceType,
        check: typed::Check,
        mut obj: Value,
        name: &str,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        // The types insist on their apiVersion and kind; the URL already chose them.
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        let unknown = check(&obj).map_err(|e| {
            ApiError::invalid(
                t,
                name,
                vec![(e.field, format!("Invalid value: {}", e.message))],
            )
        })?;
        if opts.strict && !unknown.is_empty() {
            let causes = unknown
                .into_iter()
                .map(|f| (f.clone(), format!("unknown field \"{f}\"")))
                .collect();
            return Err(ApiError::invalid(t, name, causes));
        }
        typed::drop_fields(&mut obj, &unknown);
        Ok(obj)
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
        if t.crd.is_none() && t.kind == "Secret" && obj["type"].as_str().is_none_or(str::is_empty) {
            // The real server's default for a Secret created without a type.
            obj["type"] = json!("Opaque");
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
        let want_rv = meta_str(&obj, "resourceVersion").to_owned();
        if want_rv.is_empty() && t.crd.is_none() {
            // Built-in kinds take an unconditional update, as on the real server (Helm's
            // release Secrets are written so); custom resources need the version.
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        } else if want_rv.is_empty() {
            return Err(ApiError::invalid(
                t,
                name,
                vec![(
                    "metadata.resourceVersion".into(),
                    "Invalid value: 0x0: must be specified for an update".into(),
                )],
            ));
        } else if want_rv != meta_str(&old, "resourceVersion") {
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

fn random_suffix() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(5)
        .collect()
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

/// As the real API server does: a Secret's `stringData` is merged into `data` (base64, its
/// keys winning) and never stored.
fn secret_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

//! The REST verbs on objects: get, list, create, update, patch, delete and delete-collection
//! (a watch is handed to `watch.rs`), with Table output and continue tokens for lists.

use std::collections::HashMap;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::authz::{self, Access, Identity};
use super::{Body, Shared, header, json_response, lock, not_served, query_map, watch};
use crate::apiserver::patch;
use crate::apiserver::protobuf;
use crate::apiserver::registry::ResourceType;
use crate::apiserver::select::{FieldSelector, LabelSelector};
use crate::apiserver::status::ApiError;
use crate::apiserver::store::{State, WriteOptions, now};
use crate::apiserver::table;

/// The object, or collection of objects, a request's path names.
pub(super) struct Target {
    pub group: String,
    pub version: String,
    pub plural: String,
    /// Empty for cluster-scoped kinds and for all namespaces.
    pub ns: String,
    pub name: Option<String>,
    /// The subresource (`status`), if any.
    pub sub: Option<String>,
}

/// How an answer is written: JSON, or protobuf (for the built-in kinds that have it, to a
/// client that asks for it before JSON).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Format {
    Json,
    Protobuf,
}

/// The format of the first media type in `accept` this server can answer objects of `t` in
/// (an absent header accepts anything; preferences by order, `q=0` refusing), or None. Table
/// requests (`as=Table`) are answered in JSON only.
pub(super) fn negotiate(accept: &str, t: &ResourceType) -> Option<Format> {
    if accept.trim().is_empty() {
        return Some(Format::Json);
    }
    accept.split(',').find_map(|a| {
        let mut parts = a.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params: Vec<&str> = parts.map(str::trim).collect();
        let converted = params.iter().any(|p| p.starts_with("as="));
        // `q=0` means "not this one".
        if params
            .iter()
            .filter_map(|p| p.strip_prefix("q="))
            .any(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        {
            return None;
        }
        match media.as_str() {
            "application/json" | "application/*" | "*/*" => Some(Format::Json),
            protobuf::answer::MEDIA_TYPE
                if !converted && protobuf::answer::answers(&t.api_version(), &t.kind) =>
            {
                Some(Format::Protobuf)
            }
            _ => None,
        }
    })
}

/// An answer with status `code` holding `v`, in `format` (JSON for what protobuf cannot say).
fn answer(format: Format, code: u16, v: &Value) -> Response<Body> {
    match format {
        Format::Protobuf => match protobuf::answer::encode(v) {
            Some(body) => super::response(code, protobuf::answer::MEDIA_TYPE, body),
            None => json_response(code, v),
        },
        Format::Json => json_response(code, v),
    }
}

/// Serves a request on `target` for `who`: authorized, then done by its verb; answered, and
/// refused, in the format the client asked for.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    who: &Identity,
    target: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let t = {
        let state = lock(shared)?;
        state
            .registry
            .get(&target.group, &target.version, &target.plural)
            .cloned()
            .ok_or_else(not_served)?
    };
    let accept = header(&req, "accept");
    let format = negotiate(&accept, &t).ok_or_else(|| {
        ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "the projstore test API server answers {} in JSON{}, and the request accepts only {accept}; accept application/json",
                t.qualified_kind(),
                if protobuf::answer::answers(&t.api_version(), &t.kind) {
                    " or protobuf"
                } else {
                    ""
                }
            ),
        )
    })?;
    match serve_as(shared, who, target, t, format, req).await {
        Err(e) if format == Format::Protobuf => Ok(answer(format, e.code, &e.to_status())),
        r => r,
    }
}

async fn serve_as(
    shared: &Arc<Shared>,
    who: &Identity,
    target: Target,
    t: ResourceType,
    format: Format,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Target {
        group,
        version: _,
        plural,
        ns,
        name,
        sub,
    } = target;
    let q = query_map(&req);
    let method = req.method().clone();
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    // kubectl's typed clients may send two Content-Type headers; protobuf wins if present.
    let content_types: Vec<String> = req
        .headers()
        .get_all("content-type")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let protobuf_body = content_types.iter().any(|c| protobuf::is_protobuf(c));
    let cbor_body = content_types.iter().any(|c| c.contains("cbor"));
    let user_agent = header(&req, "user-agent");
    let verb = authz::verb_of(
        &method,
        name.is_some(),
        q.get("watch").is_some_and(|w| w == "true" || w == "1"),
    );
    authz::authorize(
        shared,
        who,
        &t,
        &Access {
            verb,
            group: &group,
            plural: &plural,
            sub: sub.as_deref(),
            ns: &ns,
            name: name.as_deref(),
        },
    )?;
    if let Some(s) = &sub
        && !(s == "status" && t.status_subresource)
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({s})"),
        ));
    }
    if cbor_body {
        // Only JSON, YAML for apply, and protobuf for built-in kinds: a documented deviation.
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "{content_type} bodies are not supported by the projstore test API server; send JSON (kubectl apply -f / create -f do)"
            ),
        ));
    }
    if verb == "watch" && !accepts_json(&accept) {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "the projstore test API server streams watches only in JSON, and the request accepts only {accept}; accept application/json"
            ),
        ));
    }
    let body = read_body(req.into_body()).await?;
    // Protobuf bodies (kubectl's typed `create` commands) are turned into JSON here, so every
    // verb below sees one format.
    let body = if protobuf_body && matches!(method, Method::POST | Method::PUT) {
        bytes::Bytes::from(protobuf::decode(&t, &body)?.to_string())
    } else if protobuf_body && method == Method::DELETE && !body.is_empty() {
        bytes::Bytes::from(protobuf::decode_delete_options(&body)?.to_string())
    } else if protobuf_body {
        return Err(ApiError::unsupported_media_type(&content_type));
    } else {
        body
    };
    let opts = write_options(&q, &user_agent);
    let status = sub.as_deref() == Some("status");
    match (method, name) {
        (Method::GET, None) if verb == "watch" => watch::watch(shared, &t, &ns, &q),
        (Method::GET, None) => list(shared, &t, &ns, &q, (&accept, format)),
        (Method::GET, Some(n)) => {
            let state = lock(shared)?;
            let o = state
                .get(&t, &ns, &n)
                .cloned()
                .ok_or_else(|| ApiError::not_found(&t, &n))?;
            Ok(render(
                &t,
                vec![o],
                &state.current_rv().to_string(),
                (&accept, format),
                &q,
                None,
            ))
        }
        (Method::POST, None) => {
            let obj = parse_json(&body)?;
            let mut state = lock(shared)?;
            let created = state.create(&t, &ns, obj, &opts)?;
            Ok(answer(format, 201, &created))
        }
        (Method::PUT, Some(n)) => {
            let obj = parse_json(&body)?;
            let mut state = lock(shared)?;
            Ok(answer(
                format,
                200,
                &state.update(&t, &ns, &n, obj, status, &opts)?,
            ))
        }
        (Method::PATCH, Some(n)) => {
            let force = q.get("force").is_some_and(|f| f == "true");
            let mut state = lock(shared)?;
            let (code, obj) = patch_object(
                &mut state,
                &t,
                &ns,
                &n,
                &content_type,
                &body,
                status,
                force,
                &opts,
            )?;
            Ok(answer(format, code, &obj))
        }
        (Method::DELETE, Some(n)) => {
            let opts_body: Value = if body.is_empty() {
                json!({})
            } else {
                parse_json(&body)?
            };
            let policy = q
                .get("propagationPolicy")
                .cloned()
                .or_else(|| opts_body["propagationPolicy"].as_str().map(str::to_owned));
            let uid = opts_body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str);
            let mut state = lock(shared)?;
            let gone = state.delete(&t, &ns, &n, policy.as_deref() == Some("Orphan"), uid)?;
            Ok(answer(format, 200, &gone))
        }
        (Method::DELETE, None) => {
            let labels = LabelSelector::parse(
                q.get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let mut state = lock(shared)?;
            let names: Vec<(String, String)> = state
                .list(&t, &ns, None)
                .filter(|o| labels.matches(o))
                .map(|o| {
                    (
                        str_at(o, "/metadata/namespace"),
                        str_at(o, "/metadata/name"),
                    )
                })
                .collect();
            for (n_ns, n) in names {
                state.delete(&t, &n_ns, &n, false, None)?;
            }
            Ok(answer(
                format,
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported here"
        ))),
    }
}

/// The most a request body may hold: the real API server's limit (3 MiB).
pub(super) const MAX_BODY: usize = 3 * 1024 * 1024;

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<bytes::Bytes, ApiError> {
    http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::bad_request(format!(
                    "the request body is larger than {MAX_BODY} bytes, the limit of a Kubernetes API server"
                ))
            } else {
                ApiError::bad_request(e.to_string())
            }
        })
}

/// Whether a watch stream in JSON is acceptable to a request with this `Accept` header (an
/// absent header accepts anything).
fn accepts_json(accept: &str) -> bool {
    accept.trim().is_empty()
        || accept.split(',').any(|a| {
            let media = a.split(';').next().unwrap_or_default().trim();
            matches!(media, "application/json" | "application/*" | "*/*")
        })
}

/// How a write was asked for: its field manager (by default the client's name from its
/// user agent), strict field validation, dry run.
fn write_options(q: &HashMap<String, String>, user_agent: &str) -> WriteOptions {
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| user_agent.split('/').next().unwrap_or("unknown").to_owned());
    WriteOptions {
        field_manager: if manager.is_empty() {
            "unknown".into()
        } else {
            manager
        },
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        apply: false,
    }
}

fn str_at(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Objects of `t` as asked for (`accept` and the format negotiated from it): a Table, a list
/// (`list` holding its continue token, if any) or the one object.
fn render(
    t: &ResourceType,
    items: Vec<Value>,
    rv: &str,
    (accept, format): (&str, Format),
    q: &HashMap<String, String>,
    list: Option<Option<String>>,
) -> Response<Body> {
    if wants_table(accept) {
        let include = q
            .get("includeObject")
            .map(String::as_str)
            .unwrap_or("Metadata");
        let mut tbl = table::table(t, &items, rv, include);
        if let Some(Some(token)) = &list {
            tbl["metadata"]["continue"] = json!(token);
        }
        return json_response(200, &tbl);
    }
    if let Some(cont) = list {
        let mut meta = json!({"resourceVersion": rv});
        if let Some(token) = cont {
            meta["continue"] = json!(token);
        }
        answer(
            format,
            200,
            &json!({
                "kind": format!("{}List", t.kind),
                "apiVersion": t.api_version(),
                "metadata": meta,
                "items": items,
            }),
        )
    } else {
        answer(format, 200, items.first().unwrap_or(&Value::Null))
    }
}

pub(super) fn selectors(
    t: &ResourceType,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(
        q.get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(ApiError::bad_request)?;
    let builtin = t.crd.is_none();
    let fields = FieldSelector::parse(
        q.get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        |f| {
            matches!(f, "metadata.name" | "metadata.namespace")
                || (builtin && t.plural == "events")
                || t.selectable.iter().any(|s| s == f)
        },
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(
    shared: &Shared,
    t: &ResourceType,
    ns: &str,
    q: &HashMap<String, String>,
    accept: (&str, Format),
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(t, q)?;
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let state = lock(shared)?;
    let (start_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => decode_continue(token)?,
        None => (state.current_rv(), None),
    };
    let mut items = Vec::new();
    let mut next = None;
    for o in state
        .list(t, ns, after)
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        if items.len() == limit {
            next = items.last().map(|l: &Value| encode_continue(start_rv, l));
            break;
        }
        items.push(o.clone());
    }
    Ok(render(
        t,
        items,
        &start_rv.to_string(),
        accept,
        q,
        Some(next),
    ))
}

fn encode_continue(rv: u64, last: &Value) -> String {
    use base64::Engine;
    let raw = json!({"rv": rv, "ns": str_at(last, "/metadata/namespace"), "name": str_at(last, "/metadata/name")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Option<(String, String)>), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    Ok((
        rv,
        Some((
            v["ns"].as_str().unwrap_or_default().to_owned(),
            v["name"].as_str().unwrap_or_default().to_owned(),
        )),
    ))
}

#[allow(clippy::too_many_arguments)] // one request's worth of inputs
fn patch_object(
    state: &mut State,
    t: &ResourceType,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    status: bool,
    force: bool,
    opts: &WriteOptions,
) -> Result<(u16, Value), ApiError> {
    let ns_key = if t.namespaced { ns } else { "" };
    let current = state.get(t, ns_key, name).cloned();
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if ct == "application/apply-patch+yaml" {
        if opts.field_manager.is_empty() || opts.field_manager == "unknown" {
            return Err(ApiError::bad_request(
                "PATCH with apply requires the fieldManager query parameter",
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("apply body is not UTF-8"))?;
        let config: Value = serde_yaml::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("apply body is not YAML/JSON: {e}")))?;
        if config
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::bad_request(
                "the name in the body does not match the name on the URL",
            ));
        }
        let applied = patch::apply(current.as_ref(), &config, &opts.field_manager, force, &t.api_version(), &now()).map_err(|conflicts| {
            let msg = conflicts.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect::<Vec<_>>().join(", ");
            let mut e = ApiError::new(409, "Conflict", format!("Apply failed with {} conflict(s): {msg}", conflicts.len()));
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                .collect();
            e.details = Some(json!({"name": name, "group": t.group, "kind": t.plural, "causes": causes}));
            e
        })?;
        // The apply already recorded field ownership.
        let opts = WriteOptions {
            apply: true,
            ..opts.clone()
        };
        return match current {
            None => Ok((201, state.create(t, ns, applied, &opts)?)),
            Some(cur) => {
                let mut applied = applied;
                applied["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                Ok((
                    200,
                    state.replace(t, (ns_key, name), cur, &mut applied, status, &opts)?,
                ))
            }
        };
    }
    let Some(cur) = current else {
        return Err(ApiError::not_found(t, name));
    };
    let patch_body = parse_json(body)?;
    let mut target = cur.clone();
    match ct {
        "application/merge-patch+json" => patch::merge_patch(&mut target, &patch_body),
        // Strategic merge is accepted for built-in kinds and applied as a merge patch (lists
        // are replaced, not merged by key): a documented deviation. Custom resources refuse it,
        // as on the real server.
        "application/strategic-merge-patch+json" if t.crd.is_none() => {
            let mut plain = patch_body.clone();
            patch::strip_strategic_directives(&mut plain);
            patch::merge_patch(&mut target, &plain)
        }
        "application/json-patch+json" => {
            patch::json_patch(&mut target, &patch_body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    let want_rv = str_at(&patch_body, "/metadata/resourceVersion");
    if !want_rv.is_empty() && want_rv != str_at(&cur, "/metadata/resourceVersion") {
        return Err(ApiError::conflict(
            t,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    target["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    Ok((
        200,
        state.replace(t, (ns_key, name), cur, &mut target, status, opts)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    #[test]
    fn answers_are_in_the_first_format_asked_for_that_the_kind_has() {
        let reg = Registry::with_builtins();
        let secrets = reg.get("", "v1", "secrets").unwrap();
        let pb = "application/vnd.kubernetes.protobuf";
        for (accept, want) in [
            ("", Some(Format::Json)),
            ("application/json", Some(Format::Json)),
            (
                &format!("{pb},application/json") as &str,
                Some(Format::Protobuf),
            ),
            (&format!("{pb}, */*"), Some(Format::Protobuf)),
            (
                "Application/VND.Kubernetes.Protobuf",
                Some(Format::Protobuf),
            ),
            (&format!("{pb};q=0, application/json"), Some(Format::Json)),
            (
                &format!("{pb};as=Table;v=v1;g=meta.k8s.io, application/json"),
                Some(Format::Json),
            ),
            ("application/yaml", None),
            (&format!("{pb};q=0"), None),
        ] {
            assert_eq!(negotiate(accept, secrets), want, "{accept}");
        }
        // Custom resources and kinds without a protobuf form here: JSON, or nothing.
        let mut reg = reg;
        let crd: Value = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../crds/manifests/projects.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        reg.register_crd(&crd).unwrap();
        let projects = reg.get("projstore.io", "v1alpha1", "projects").unwrap();
        assert_eq!(
            negotiate(&format!("{pb}, */*"), projects),
            Some(Format::Json)
        );
        assert_eq!(negotiate(pb, projects), None);
        let events = reg.get("", "v1", "events").unwrap();
        assert_eq!(negotiate(pb, events), None);
    }
}

//! Requests: authentication, routing, the REST verbs, and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::openapi;
use super::patch;
use super::registry::ResourceType;
use super::select::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, State, WriteOptions, now};
use super::table;

pub type Body = BoxBody<Bytes, Infallible>;

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Decides whether an identity may do a verb on a resource (RBAC hook; allow-all by default).
pub trait Authorizer: Send + Sync {
    fn allowed(
        &self,
        who: &Identity,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> bool;
}

/// Everything a request handler needs.
pub struct Shared {
    pub state: Mutex<State>,
    pub tokens: HashMap<String, Identity>,
    pub authorizer: Option<Box<dyn Authorizer>>,
    pub max_watch: Duration,
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Where a request goes.
enum Route {
    Version,
    OpenApiIndex,
    OpenApi(String, String),
    Health,
    ApiVersions,
    ApiGroups,
    Group(String),
    Resources(String, String),
    Resource {
        group: String,
        version: String,
        plural: String,
        ns: String,
        name: Option<String>,
        sub: Option<String>,
    },
}

fn route(state: &State, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["openapi", "v3"] => return Some(Route::OpenApiIndex),
        ["openapi", "v3", "api", v] => return Some(Route::OpenApi(String::new(), (*v).to_owned())),
        ["openapi", "v3", "apis", g, v] => {
            return Some(Route::OpenApi((*g).to_owned(), (*v).to_owned()));
        }
        ["healthz" | "readyz" | "livez", ..] => return Some(Route::Health),
        ["api"] => return Some(Route::ApiVersions),
        ["apis"] => return Some(Route::ApiGroups),
        ["apis", g] => return Some(Route::Group((*g).to_owned())),
        ["api", v] => return Some(Route::Resources(String::new(), (*v).to_owned())),
        ["apis", g, v] => return Some(Route::Resources((*g).to_owned(), (*v).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let namespaced_plural = |p: &str| {
        state
            .registry
            .get(group, version, p)
            .is_some_and(|t| t.namespaced)
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural) => ((*ns).to_owned(), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        _ => (String::new(), rest.to_vec()),
    };
    let plural = (*rest.first()?).to_owned();
    if rest.len() > 3 {
        return None;
    }
    Some(Route::Resource {
        group: group.to_owned(),
        version: version.to_owned(),
        plural,
        ns,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

/// Handles one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match serve(&shared, req).await {
        Ok(r) => r,
        Err(e) => error(&e),
    })
}

fn query_map(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<Identity, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let token = header.strip_prefix("Bearer ").unwrap_or_default();
    shared
        .tokens
        .get(token)
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let who = authenticate(shared, &req)?;
    let q = query_map(&req);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    // kubectl's typed clients may send two Content-Type headers; protobuf wins if present.
    let binary_body = req.headers().get_all("content-type").iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("protobuf") || s.contains("cbor"))
    });
    let user_agent = header(&req, "user-agent");
    let r = {
        let state = shared
            .state
            .lock()
            .map_err(|_| ApiError::new(500, "InternalError", "state lock poisoned"))?;
        route(&state, &path).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?
    };
    match r {
        Route::Version => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-projstore-test", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
            }),
        )),
        Route::Health => Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed())),
        Route::OpenApiIndex => {
            let state = lock(shared)?;
            Ok(json_response(200, &openapi::index(&state.registry)))
        }
        Route::OpenApi(g, v) => {
            let state = lock(shared)?;
            let doc = openapi::group_version(&state.registry, &g, &v).ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
            Ok(json_response(200, &doc))
        }
        Route::ApiVersions => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        )),
        Route::ApiGroups => {
            let state = lock(shared)?;
            let groups: Vec<Value> = state
                .registry
                .groups()
                .into_iter()
                .map(|(g, vs)| group_json(&g, &vs))
                .collect();
            Ok(json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        Route::Group(g) => {
            let state = lock(shared)?;
            let vs = state.registry.groups().remove(&g).ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
            Ok(json_response(200, &group_json(&g, &vs)))
        }
        Route::Resources(g, v) => {
            let state = lock(shared)?;
            let resources: Vec<Value> = state
                .registry
                .all()
                .filter(|t| t.group == g && t.version == v)
                .flat_map(ResourceType::discovery)
                .collect();
            if resources.is_empty() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            let gv = if g.is_empty() { v } else { format!("{g}/{v}") };
            Ok(json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            ))
        }
        Route::Resource {
            group,
            version,
            plural,
            ns,
            name,
            sub,
        } => {
            let t = {
                let state = lock(shared)?;
                state
                    .registry
                    .get(&group, &version, &plural)
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::new(
                            404,
                            "NotFound",
                            "the server could not find the requested resource",
                        )
                    })?
            };
            let verb = verb_of(
                &method,
                name.is_some(),
                q.get("watch").is_some_and(|w| w == "true" || w == "1"),
            );
            if let Some(auth) = &shared.authorizer {
                let res = match &sub {
                    Some(s) => format!("{plural}/{s}"),
                    None => plural.clone(),
                };
                if !auth.allowed(
                    &who,
                    verb,
                    &group,
                    &res,
                    &ns,
                    name.as_deref().unwrap_or_default(),
                ) {
                    let target = if ns.is_empty() {
                        "at the cluster scope".to_owned()
                    } else {
                        format!("in the namespace \"{ns}\"")
                    };
                    return Err(ApiError::forbidden(format!(
                        "{} \"{}\" is forbidden: User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\" {target}",
                        t.plural,
                        name.clone().unwrap_or_default(),
                        who.user
                    )));
                }
            }
            // Like Kubernetes: a patch (server-side apply) that creates the object also needs
            // `create`.
            if let (Some(auth), "patch", Some(n), None) = (&shared.authorizer, verb, &name, &sub) {
                let exists = shared
                    .state
                    .lock()
                    .map(|st| st.get(&t, &ns, n).is_some())
                    .unwrap_or(true);
                if !exists && !auth.allowed(&who, "create", &group, &plural, &ns, n) {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{n}\" is forbidden: User \"{}\" cannot create resource \"{plural}\" in API group \"{group}\" (an apply that creates it)",
                        t.plural, who.user
                    )));
                }
            }
            if let Some(s) = &sub
                && !(s == "status" && t.status_subresource)
            {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({s})"),
                ));
            }
            if binary_body {
                // Only JSON (and YAML for apply) is served: a documented deviation.
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "{content_type} bodies are not supported by the projstore test API server; send JSON (kubectl apply -f / create -f do)"
                    ),
                ));
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::bad_request(e.to_string()))?
                .to_bytes();
            let manager = q
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| user_agent.split('/').next().unwrap_or("unknown").to_owned());
            let opts = WriteOptions {
                field_manager: if manager.is_empty() {
                    "unknown".into()
                } else {
                    manager
                },
                strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
                dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
                apply: false,
            };
            let status = sub.as_deref() == Some("status");
            match (method, name) {
                (Method::GET, None) if verb == "watch" => watch(shared, &t, &ns, &q),
                (Method::GET, None) => list(shared, &t, &ns, &q, &accept),
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
                        &accept,
                        &q,
                        None,
                    ))
                }
                (Method::POST, None) => {
                    let obj = parse_json(&body)?;
                    let mut state = lock(shared)?;
                    let created = state.create(&t, &ns, obj, &opts)?;
                    Ok(json_response(201, &created))
                }
                (Method::PUT, Some(n)) => {
                    let obj = parse_json(&body)?;
                    let mut state = lock(shared)?;
                    Ok(json_response(
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
                    Ok(json_response(code, &obj))
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
                    let gone =
                        state.delete(&t, &ns, &n, policy.as_deref() == Some("Orphan"), uid)?;
                    Ok(json_response(200, &gone))
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
                    Ok(json_response(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    ))
                }
                (m, _) => Err(ApiError::method_not_allowed(format!(
                    "{m} is not supported here"
                ))),
            }
        }
    }
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn str_at(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, State>, ApiError> {
    shared
        .state
        .lock()
        .map_err(|_| ApiError::new(500, "InternalError", "state lock poisoned"))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn group_json(g: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or_default(),
    })
}

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn render(
    t: &ResourceType,
    items: Vec<Value>,
    rv: &str,
    accept: &str,
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
        json_response(
            200,
            &json!({
                "kind": format!("{}List", t.kind),
                "apiVersion": t.api_version(),
                "metadata": meta,
                "items": items,
            }),
        )
    } else {
        json_response(200, items.first().unwrap_or(&Value::Null))
    }
}

fn selectors(
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
    accept: &str,
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
            patch::merge_patch(&mut target, &patch_body)
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

/// A watch: replay from the requested version, then live changes, as newline-delimited JSON.
fn watch(
    shared: &Arc<Shared>,
    t: &ResourceType,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(t, q)?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial_events = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(shared.max_watch)
        .min(shared.max_watch);
    let requested: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid resourceVersion"))?;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
    let mut first: Vec<Value> = Vec::new();
    let (sub, start_rv) = {
        let state = lock(shared)?;
        let start_rv = state.current_rv();
        match requested {
            Some(rv) if !initial_events && rv < state.oldest_watchable() => {
                let status = ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    state.oldest_watchable()
                ))
                .to_status();
                first.push(json!({"type": "ERROR", "object": status}));
            }
            Some(rv) if !initial_events => {
                for c in state.changes_since(rv) {
                    if let Some(ev) = event_for(&c, t, ns, &labels, &fields) {
                        first.push(ev);
                    }
                }
            }
            _ => {
                for o in state
                    .list(t, ns, None)
                    .filter(|o| labels.matches(o) && fields.matches(o))
                {
                    first.push(json!({"type": "ADDED", "object": o}));
                }
                if initial_events {
                    first.push(json!({"type": "BOOKMARK", "object": {
                        "kind": t.kind, "apiVersion": t.api_version(),
                        "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}
                    }}));
                }
            }
        }
        (state.tx.subscribe(), start_rv)
    };
    let expired = first.first().is_some_and(|e| e["type"] == "ERROR");
    let (t, ns) = (t.clone(), ns.to_owned());
    tokio::spawn(async move {
        let send = |v: Value| {
            let mut line = serde_json::to_vec(&v).unwrap_or_default();
            line.push(b'\n');
            Ok(Frame::data(Bytes::from(line)))
        };
        for ev in first {
            if tx.send(send(ev)).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let mut sub = sub;
        let mut seen_rv = start_rv;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": t.kind, "apiVersion": t.api_version(), "metadata": {"resourceVersion": seen_rv.to_string()}}});
                    if tx.send(send(bm)).await.is_err() { return; }
                }
                msg = sub.recv() => match msg {
                    Ok(c) => {
                        if c.rv <= seen_rv { continue; }
                        seen_rv = c.rv;
                        if let Some(ev) = event_for(&c, &t, &ns, &labels, &fields)
                            && tx.send(send(ev)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow to keep up: end with 410 so the client relists.
                        let status = ApiError::gone("the watch fell behind; relist").to_status();
                        let _ = tx.send(send(json!({"type": "ERROR", "object": status}))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

/// The event a watcher of `t` in `ns` with these selectors sees for `c`, if any.
fn event_for(
    c: &Change,
    t: &ResourceType,
    ns: &str,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<Value> {
    if c.key != t.key() || (!ns.is_empty() && c.namespace != ns) {
        return None;
    }
    let now_matches = labels.matches(&c.object) && fields.matches(&c.object);
    let was = c
        .prev
        .as_ref()
        .map(|p| labels.matches(p) && fields.matches(p));
    let type_ = match (c.type_, was, now_matches) {
        ("DELETED", _, true) => "DELETED",
        ("DELETED", _, false) => return None,
        ("ADDED", _, true) => "ADDED",
        ("MODIFIED", Some(true), true) => "MODIFIED",
        ("MODIFIED", Some(false) | None, true) => "ADDED",
        ("MODIFIED", Some(true), false) => "DELETED",
        _ => return None,
    };
    Some(json!({"type": type_, "object": *c.object}))
}

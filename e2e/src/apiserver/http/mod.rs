//! The API server's HTTP layer: a request is authenticated, routed by its path, and served by
//! discovery (`discovery.rs`) or by a REST verb on objects (`rest.rs`, `watch.rs`) once
//! authorized (`authz.rs`).

mod authz;
mod discovery;
mod rest;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

pub use authz::{Authorizer, Identity};
use discovery::Doc;
use rest::Target;

use super::status::ApiError;
use super::store::State;

pub type Body = BoxBody<Bytes, Infallible>;

/// Everything a request handler needs.
pub struct Shared {
    pub state: Mutex<State>,
    pub tokens: HashMap<String, Identity>,
    pub authorizer: Option<Box<dyn Authorizer>>,
    pub max_watch: Duration,
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

/// Authenticates, routes and serves one request.
async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let who = authz::authenticate(shared, &req)?;
    let r = {
        let state = lock(shared)?;
        route(&state, req.uri().path()).ok_or_else(not_served)?
    };
    match r {
        Route::Discovery(doc) => discovery::serve(shared, doc, &header(&req, "accept")),
        Route::Resource(target) => rest::serve(shared, &who, target, req).await,
    }
}

/// Where a request goes: a discovery document, or objects served by a REST verb.
enum Route {
    Discovery(Doc),
    Resource(Target),
}

/// Where a request for `path` goes; None when nothing is served there.
fn route(state: &State, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let doc = |d: Doc| Some(Route::Discovery(d));
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return doc(Doc::Version),
        ["openapi", "v2"] => return doc(Doc::OpenApiV2),
        ["openapi", "v3"] => return doc(Doc::OpenApiIndex),
        ["openapi", "v3", "api", v] => return doc(Doc::OpenApi(String::new(), (*v).to_owned())),
        ["openapi", "v3", "apis", g, v] => {
            return doc(Doc::OpenApi((*g).to_owned(), (*v).to_owned()));
        }
        ["healthz" | "readyz" | "livez", ..] => return doc(Doc::Health),
        ["api"] => return doc(Doc::ApiVersions),
        ["apis"] => return doc(Doc::ApiGroups),
        ["apis", g] => return doc(Doc::Group((*g).to_owned())),
        ["api", v] => return doc(Doc::Resources(String::new(), (*v).to_owned())),
        ["apis", g, v] => return doc(Doc::Resources((*g).to_owned(), (*v).to_owned())),
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
    Some(Route::Resource(Target {
        group: group.to_owned(),
        version: version.to_owned(),
        plural,
        ns,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    }))
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    response(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn response(code: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// The answer to a path nothing is served at.
fn not_served() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
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

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, State>, ApiError> {
    shared
        .state
        .lock()
        .map_err(|_| ApiError::new(500, "InternalError", "state lock poisoned"))
}

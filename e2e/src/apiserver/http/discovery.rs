//! Discovery: the version, health, API groups and resource lists, and OpenAPI documents
//! that kubectl and kube-rs read before they touch an object.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use serde_json::{Value, json};

use super::{Body, Shared, json_response, lock, not_served};
use crate::apiserver::registry::ResourceType;
use crate::apiserver::status::ApiError;
use crate::apiserver::{openapi, openapi_v2};

/// A discovery document.
pub(super) enum Doc {
    Version,
    OpenApiV2,
    OpenApiIndex,
    OpenApi(String, String),
    Health,
    ApiVersions,
    ApiGroups,
    Group(String),
    Resources(String, String),
}

/// Serves discovery document `doc`.
pub(super) fn serve(shared: &Shared, doc: Doc, accept: &str) -> Result<Response<Body>, ApiError> {
    match doc {
        Doc::Version => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-projstore-test", "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
            }),
        )),
        Doc::Health => Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed())),
        Doc::OpenApiV2 => {
            let doc = openapi_v2::document(&lock(shared)?.registry);
            // kubectl and client-go ask for the protobuf form; others for JSON.
            if accept.contains("protobuf") {
                Ok(Response::builder()
                    .header("content-type", openapi_v2::PROTOBUF)
                    .body(Full::new(Bytes::from(openapi_v2::to_protobuf(&doc))).boxed())
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())))
            } else {
                Ok(json_response(200, &doc))
            }
        }
        Doc::OpenApiIndex => {
            let state = lock(shared)?;
            Ok(json_response(200, &openapi::index(&state.registry)))
        }
        Doc::OpenApi(g, v) => {
            let state = lock(shared)?;
            let doc = openapi::group_version(&state.registry, &g, &v).ok_or_else(not_served)?;
            Ok(json_response(200, &doc))
        }
        Doc::ApiVersions => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        )),
        Doc::ApiGroups => {
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
        Doc::Group(g) => {
            let state = lock(shared)?;
            let vs = state.registry.groups().remove(&g).ok_or_else(not_served)?;
            Ok(json_response(200, &group_json(&g, &vs)))
        }
        Doc::Resources(g, v) => {
            let state = lock(shared)?;
            let resources: Vec<Value> = state
                .registry
                .all()
                .filter(|t| t.group == g && t.version == v)
                .flat_map(ResourceType::discovery)
                .collect();
            if resources.is_empty() {
                return Err(not_served());
            }
            let gv = if g.is_empty() { v } else { format!("{g}/{v}") };
            Ok(json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            ))
        }
    }
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

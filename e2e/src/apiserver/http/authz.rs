//! Authentication and authorization: who a bearer token belongs to, which RBAC verb a
//! request is, and whether the authorizer (the stored RBAC objects Helm created, in the dev cluster) allows it.

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::Shared;
use crate::apiserver::registry::ResourceType;
use crate::apiserver::status::ApiError;
use crate::apiserver::store::State;

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Decides whether an identity may do a verb on a resource (RBAC hook; allow-all by default).
pub trait Authorizer: Send + Sync {
    /// `state` holds the server's objects (the stored RBAC objects, for an authorizer that
    /// evaluates them).
    #[allow(clippy::too_many_arguments)] // one request as RBAC sees it
    fn allowed(
        &self,
        state: &State,
        who: &Identity,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> bool;
}

/// The identity a request's bearer token stands for (401 for an unknown token).
pub(super) fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<Identity, ApiError> {
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

/// The RBAC verb of a request.
pub(super) fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
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

/// One request as RBAC sees it.
pub(super) struct Access<'a> {
    pub verb: &'static str,
    pub group: &'a str,
    pub plural: &'a str,
    /// The subresource (`status`), if any.
    pub sub: Option<&'a str>,
    pub ns: &'a str,
    pub name: Option<&'a str>,
}

/// Refuses (403, worded like Kubernetes) what the authorizer does not allow; everything
/// passes when there is none.
pub(super) fn authorize(
    shared: &Shared,
    who: &Identity,
    t: &ResourceType,
    a: &Access,
) -> Result<(), ApiError> {
    let Some(auth) = &shared.authorizer else {
        return Ok(());
    };
    let (verb, group, plural, ns) = (a.verb, a.group, a.plural, a.ns);
    let state = super::lock(shared)?;
    let res = match a.sub {
        Some(s) => format!("{plural}/{s}"),
        None => plural.to_owned(),
    };
    if !auth.allowed(
        &state,
        who,
        verb,
        group,
        &res,
        ns,
        a.name.unwrap_or_default(),
    ) {
        let target = if ns.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        return Err(ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\" {target}",
            t.plural,
            a.name.unwrap_or_default(),
            who.user
        )));
    }
    // Like Kubernetes: a patch (server-side apply) that creates the object also needs
    // `create`.
    if let ("patch", Some(n), None) = (verb, a.name, a.sub) {
        let exists = state.get(t, ns, n).is_some();
        if !exists && !auth.allowed(&state, who, "create", group, plural, ns, n) {
            return Err(ApiError::forbidden(format!(
                "{} \"{n}\" is forbidden: User \"{}\" cannot create resource \"{plural}\" in API group \"{group}\" (an apply that creates it)",
                t.plural, who.user
            )));
        }
    }
    Ok(())
}

//! Watches: a replay from the requested resourceVersion (or the current objects), then live
//! changes, as newline-delimited JSON, with bookmarks and a 410 when the client fell behind.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::rest::selectors;
use super::{Body, Shared, lock};
use crate::apiserver::registry::ResourceType;
use crate::apiserver::select::{FieldSelector, LabelSelector};
use crate::apiserver::status::ApiError;
use crate::apiserver::store::Change;

/// A watch: replay from the requested version, then live changes, as newline-delimited JSON.
pub(super) fn watch(
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

//! The test API server on the wire, as clients other than kube-rs speak to it: protobuf
//! request bodies of built-in kinds (hostile ones too), OpenAPI v2, Tables of built-in kinds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status};
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use kube::{Api, Client};
use projstore_e2e::apiserver::Config;
use projstore_e2e::testkit::TestApi;
use prost::Message;
use serde_json::Value;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend(
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        }
        .encode_to_vec(),
    );
    out
}

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    })
}

/// Sends one request; the status code and the body (JSON when it is JSON).
async fn send(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: Vec<u8>,
) -> (u16, Value, String) {
    let (code, bytes, ct) = send_raw(client, method, path, content_type, accept, body).await;
    (
        code,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ct,
    )
}

/// Sends one request; the status code, the body's bytes and its content type.
async fn send_raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>, String) {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .header("accept", accept)
        .body(kube::client::Body::from(body))
        .unwrap();
    let res = client.send(req).await.unwrap();
    let code = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (code, bytes.to_vec(), ct)
}

/// The `apiVersion`, `kind` and raw message of a protobuf answer.
fn open_pb(body: &[u8]) -> (String, String, Vec<u8>) {
    let u = Unknown::decode(body.strip_prefix(b"k8s\0").expect("the k8s prefix")).unwrap();
    let tm = u.type_meta.unwrap();
    (
        tm.api_version.unwrap(),
        tm.kind.unwrap(),
        u.raw.unwrap_or_default(),
    )
}

/// POSTs a JSON body; the status code and the answer.
async fn post_json(client: &Client, path: &str, body: Vec<u8>) -> (u16, Value) {
    let (code, answer, _) = send(
        client,
        "POST",
        path,
        "application/json",
        "application/json",
        body,
    )
    .await;
    (code, answer)
}

#[tokio::test]
async fn protobuf_bodies_of_built_in_kinds_are_stored_and_answered_in_the_format_asked_for() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let ns = pb::Namespace {
        metadata: meta("typed"),
        spec: None,
        status: None,
    };
    // kubectl's typed clients ask for protobuf first: they get it, as from a real server.
    let (code, body, ct) = send_raw(
        &client,
        "POST",
        "/api/v1/namespaces",
        PROTOBUF,
        &format!("{PROTOBUF}, */*"),
        envelope("v1", "Namespace", ns.encode_to_vec()),
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, PROTOBUF);
    let (api_version, kind, raw) = open_pb(&body);
    assert_eq!((api_version.as_str(), kind.as_str()), ("v1", "Namespace"));
    let created = pb::Namespace::decode(&*raw).unwrap();
    let m = created.metadata.unwrap();
    assert_eq!(m.name.as_deref(), Some("typed"));
    assert!(m.uid.is_some_and(|u| !u.is_empty()));
    assert!(m.resource_version.is_some());
    assert!(m.creation_timestamp.is_some_and(|t| t.seconds > Some(0)));

    let secret = pb::Secret {
        metadata: meta("db"),
        data: [("password".to_owned(), b"s3cret".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let (code, body, ct) = send_raw(
        &client,
        "POST",
        "/api/v1/namespaces/typed/secrets",
        PROTOBUF,
        &format!("{PROTOBUF}, application/json"),
        envelope("v1", "Secret", secret.encode_to_vec()),
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, PROTOBUF);
    let (_, _, raw) = open_pb(&body);
    assert_eq!(
        pb::Secret::decode(&*raw).unwrap().data["password"],
        b"s3cret"
    );
    let stored = Api::<Secret>::namespaced(client.clone(), "typed")
        .get("db")
        .await
        .unwrap();
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    assert_eq!(stored.data.unwrap()["password"].0, b"s3cret");

    // A list, to a client that asks for protobuf only.
    let (code, body, ct) = send_raw(
        &client,
        "GET",
        "/api/v1/namespaces/typed/secrets",
        "",
        PROTOBUF,
        vec![],
    )
    .await;
    assert_eq!((code, ct.as_str()), (200, PROTOBUF));
    let (_, kind, raw) = open_pb(&body);
    assert_eq!(kind, "SecretList");
    let list = pb::SecretList::decode(&*raw).unwrap();
    assert!(list.metadata.unwrap().resource_version.is_some());
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].r#type.as_deref(), Some("Opaque"));

    // The same object, in JSON to a client that asks for JSON first.
    let (code, body, ct) = send(
        &client,
        "GET",
        "/api/v1/namespaces/typed/secrets/db",
        "",
        &format!("application/json, {PROTOBUF}"),
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(body["data"]["password"], "czNjcmV0");

    // A refusal is a Status in the format asked for.
    let (code, body, ct) = send_raw(
        &client,
        "POST",
        "/api/v1/namespaces",
        PROTOBUF,
        PROTOBUF,
        envelope("v1", "Namespace", ns.encode_to_vec()),
    )
    .await;
    assert_eq!((code, ct.as_str()), (409, PROTOBUF));
    let (_, kind, raw) = open_pb(&body);
    assert_eq!(kind, "Status");
    let status = Status::decode(&*raw).unwrap();
    assert_eq!(status.code, Some(409));
    assert_eq!(status.reason.as_deref(), Some("AlreadyExists"));
    assert!(status.message.unwrap().contains("typed"));

    // Custom resources have no protobuf form (nor on a real server): a client that accepts
    // only protobuf is told why it gets nothing.
    let (code, body, _) = send(
        &client,
        "GET",
        "/apis/projstore.io/v1alpha1/projects",
        "",
        PROTOBUF,
        vec![],
    )
    .await;
    assert_eq!(code, 406, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("accept application/json") && message.contains("Project"),
        "{body}"
    );
    // Nor are watches streamed in protobuf: the refusal comes in the format asked for.
    let (code, body, ct) = send_raw(
        &client,
        "GET",
        "/api/v1/namespaces?watch=true",
        "",
        PROTOBUF,
        vec![],
    )
    .await;
    assert_eq!((code, ct.as_str()), (406, PROTOBUF));
    let message = Status::decode(&*open_pb(&body).2).unwrap().message.unwrap();
    assert!(
        message.contains("accept application/json") && message.contains("watches"),
        "{message}"
    );
}

#[tokio::test]
async fn hostile_protobuf_bodies_get_400_with_a_message_and_the_server_keeps_serving() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let good = envelope(
        "v1",
        "ConfigMap",
        pb::ConfigMap {
            metadata: meta("settings"),
            data: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let mut oversized = good.clone();
    oversized.extend(std::iter::repeat_n(0u8, 4 * 1024 * 1024));
    let wrong_kind = envelope(
        "v1",
        "Namespace",
        pb::Namespace {
            metadata: meta("sneaky"),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let mut garbage_inside = b"k8s\0".to_vec();
    garbage_inside.extend(
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
            raw: Some(vec![0xff; 64]),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            "could not be read",
        ),
        ("without the prefix", good[4..].to_vec(), "k8s\\0"),
        ("of another kind", wrong_kind, "holds a Namespace"),
        ("garbage inside", garbage_inside, "could not be read"),
        ("oversized", oversized, "larger than"),
        ("empty", Vec::new(), "k8s\\0"),
    ];
    for (what, body, says) in cases {
        let (code, answer, _) = send(
            &client,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            PROTOBUF,
            "application/json",
            body,
        )
        .await;
        assert_eq!(code, 400, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    // Nothing was stored, and the server still answers.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt("sneaky").await.unwrap().is_none());
    let (code, body, _) = send(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        PROTOBUF,
        "application/json",
        good,
    )
    .await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test]
async fn openapi_v2_describes_the_kinds_openapi_v3_does() {
    let TestApi { server, client } = TestApi::start_with(Config::default()).await.unwrap();
    server
        .register_crds(&projstore_e2e::dev::crds_dir().unwrap())
        .unwrap();
    let get = |path: &'static str| {
        let client = client.clone();
        async move { send(&client, "GET", path, "", "application/json", Vec::new()).await }
    };
    let (code, v2, _) = get("/openapi/v2").await;
    assert_eq!(code, 200);
    assert_eq!(v2["swagger"], "2.0");
    let (_, index, _) = get("/openapi/v3").await;
    let mut v3_names = Vec::new();
    for (_, gv) in index["paths"].as_object().unwrap() {
        let url = gv["serverRelativeURL"].as_str().unwrap().to_owned();
        let (code, doc, _) = send(&client, "GET", &url, "", "application/json", Vec::new()).await;
        assert_eq!(code, 200, "{url}");
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            v3_names.push(name.clone());
            let v2_schema = &v2["definitions"][name];
            assert_eq!(
                v2_schema["x-kubernetes-group-version-kind"],
                schema["x-kubernetes-group-version-kind"],
                "{name}"
            );
        }
    }
    let mut v2_names: Vec<String> = v2["definitions"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    v3_names.sort();
    v2_names.sort();
    assert_eq!(v2_names, v3_names);
    let quota = &v2["definitions"]["io.projstore.v1alpha1.Project"]["properties"]["spec"]["properties"]
        ["quota"];
    assert!(
        quota["description"].as_str().unwrap().contains("refquota"),
        "{quota}"
    );
    // What v2 cannot say is left out, as the real server does.
    assert!(!v2.to_string().contains("\"nullable\""));
    assert!(!v2.to_string().contains("x-kubernetes-validations"));

    // The protobuf form kubectl asks for.
    let (code, _, ct) = send(
        &client,
        "GET",
        "/openapi/v2",
        "",
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        Vec::new(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(ct, projstore_e2e::apiserver::openapi_v2::PROTOBUF);
}

#[tokio::test]
async fn tables_of_built_in_kinds_have_the_real_servers_columns() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let cases = [
        ("/api/v1/namespaces", vec!["Name", "Status", "Age"]),
        ("/api/v1/secrets", vec!["Name", "Type", "Data", "Age"]),
        ("/api/v1/configmaps", vec!["Name", "Data", "Age"]),
        ("/api/v1/serviceaccounts", vec!["Name", "Secrets", "Age"]),
        (
            "/apis/coordination.k8s.io/v1/leases",
            vec!["Name", "Holder", "Age"],
        ),
        (
            "/api/v1/events",
            vec![
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name",
            ],
        ),
    ];
    for (path, want) in cases {
        let (code, t, _) = send(&client, "GET", path, "", table, Vec::new()).await;
        assert_eq!(code, 200, "{path}: {t}");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want, "{path}");
    }
}

#[tokio::test]
async fn built_in_workloads_are_checked_against_their_real_schemas() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let deployment = |spec: Value| {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": spec,
        }))
        .unwrap()
    };
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let good = serde_json::json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
    });
    let mut wrong_type = good.clone();
    wrong_type["replicas"] = serde_json::json!("two");
    let (code, body) = post_json(&client, path, deployment(wrong_type)).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.replicas"),
        "{body}"
    );

    let mut unknown = good.clone();
    unknown["template"]["spec"]["hostNetwrok"] = serde_json::json!(true);
    let strict = format!("{path}?fieldValidation=Strict");
    let (code, body) = post_json(&client, &strict, deployment(unknown.clone())).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.hostNetwrok"),
        "{body}"
    );
    // Without Strict the unknown field is dropped, as on a real server.
    let (code, body) = post_json(&client, path, deployment(unknown)).await;
    assert_eq!(code, 201, "{body}");
    assert!(
        body["spec"]["template"]["spec"]
            .get("hostNetwrok")
            .is_none(),
        "{body}"
    );
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx"
    );
}

#[tokio::test]
async fn secrets_service_accounts_and_rbac_objects_are_checked_against_their_real_schemas() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let json = |v: Value| serde_json::to_vec(&v).unwrap();
    // Each: where, a body the real server refuses, the field its 422 names.
    let refused = [
        (
            "/api/v1/namespaces/default/secrets",
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "data": {"key": "not base64!"}}),
            "data.key",
        ),
        (
            "/api/v1/namespaces/default/serviceaccounts",
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "sa"}, "automountServiceAccountToken": "yes"}),
            "automountServiceAccountToken",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "r"}, "rules": [{"verbs": "get"}]}),
            "rules[0].verbs",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "roleRef": "admin"}),
            "roleRef",
        ),
        (
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                "dta": {"a": "b"}}),
            "dta",
        ),
    ];
    for (path, body, field) in refused {
        let (code, answer) = post_json(&client, path, json(body)).await;
        assert_eq!(code, 422, "{path}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{path}: {field} not named in {answer}"
        );
    }
    let (code, answer) = post_json(
        &client,
        "/api/v1/namespaces/default/secrets",
        json(
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ok"},
            "type": "Opaque", "data": {"key": "czNjcmV0"}, "stringData": {"more": "x"}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["data"]["more"], "eA==");
}

#[tokio::test]
async fn protobuf_delete_options_are_read_and_hostile_ones_refused() {
    let TestApi { server: _s, client } = TestApi::start_with(Config::default()).await.unwrap();
    let cm = |name: &str| {
        envelope(
            "v1",
            "ConfigMap",
            pb::ConfigMap {
                metadata: meta(name),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    let coll = "/api/v1/namespaces/default/configmaps";
    for name in ["a", "b"] {
        let (code, body, _) = send(
            &client,
            "POST",
            coll,
            PROTOBUF,
            "application/json",
            cm(name),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    let options = envelope(
        "v1",
        "DeleteOptions",
        k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let (code, body, _) = send(
        &client,
        "DELETE",
        &format!("{coll}/a"),
        PROTOBUF,
        "application/json",
        options.clone(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = send(
        &client,
        "DELETE",
        &format!("{coll}/b"),
        PROTOBUF,
        "application/json",
        options[..options.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("DeleteOptions"),
        "{body}"
    );
    let (code, _, _) = send(
        &client,
        "GET",
        &format!("{coll}/b"),
        "",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(code, 200, "a refused delete changes nothing");
}

//! The Project reconciler against a mocked API (tower-test): the exact requests it sends, in
//! order, for a new project, a steady one, a failover and a deletion.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use projstore_api::{Project, StoragePool, StreamReplica};
use projstore_controller::metrics::Metrics;
use projstore_controller::reconcile::apply::{Context, Settings, reconcile_project};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn pool(name: &str, node: &str, dc: &str) -> StoragePool {
    serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
        "spec": {"nodeName": node, "poolName": "storage", "vdevs": [{"path": "/dev/sdb"}], "topology": {"datacenter": dc, "zone": format!("{dc}-{node}")}},
        "status": {"phase": "Ready", "freeBytes": 1u64 << 40, "sizeBytes": 1u64 << 40, "agent": {"streamEndpoint": format!("http://{node}:7420")}}
    }))
    .unwrap()
}

fn project(extra: Value) -> Project {
    let mut v = json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
        "metadata": {"name": "thesis", "namespace": "alice", "uid": "u1", "generation": 1, "resourceVersion": "7"},
        "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

/// A context whose caches hold `pools` and `replicas`, over a mocked client.
fn context(pools: &[StoragePool], replicas: &[StreamReplica]) -> (Arc<Context>, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    fn fill<K: Resource<DynamicType = ()> + Clone>(items: &[K]) -> reflector::Store<K> {
        let mut w: Writer<K> = Writer::default();
        let reader = w.as_reader();
        for i in items {
            w.apply_watcher_event(&watcher::Event::Apply(i.clone()));
        }
        reader
    }
    let settings = Settings {
        lease_namespace: "projstore-system".into(),
        failover_grace: Duration::from_secs(120),
        heartbeat_timeout: Duration::from_secs(40),
    };
    let ctx = Context::new(
        client,
        Arc::new(Metrics::new().unwrap()),
        settings,
        (fill(replicas), fill(pools), fill(&[]), fill(&[])),
    );
    (Arc::new(ctx), handle)
}

/// One expected request: method, path, and a check of its JSON body; answered with `reply`.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    check: impl Fn(&Value),
    reply: Value,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("service closed");
    assert_eq!(req.method().as_str(), method, "method of {}", req.uri());
    assert_eq!(req.uri().path(), path);
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    check(&body);
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
}

async fn no_more(handle: &mut Handle) {
    let next = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
    assert!(
        next.is_err() || next.unwrap().is_none(),
        "an unexpected extra request was sent"
    );
}

fn fleet() -> Vec<StoragePool> {
    vec![
        pool("pa", "a", "dc1"),
        pool("pb", "b", "dc1"),
        pool("pc", "c", "dc2"),
    ]
}

const PROJECT: &str = "/apis/projstore.io/v1alpha1/namespaces/alice/projects/thesis";
const REPLICAS: &str = "/apis/projstore.io/v1alpha1/namespaces/alice/streamreplicas";

#[tokio::test]
async fn a_new_project_gets_a_finalizer_three_replicas_and_a_status() {
    let p = project(json!({}));
    let (ctx, mut handle) = context(&fleet(), &[]);
    let reply = serde_json::to_value(&p).unwrap();
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    expect(
        &mut handle,
        "PATCH",
        PROJECT,
        |b| {
            assert_eq!(b["metadata"]["finalizers"], json!(["projstore.io/cleanup"]));
            assert_eq!(
                b["metadata"]["resourceVersion"], "7",
                "guarded by the version read"
            );
        },
        reply.clone(),
    )
    .await;
    let mut pools_seen = Vec::new();
    for i in 0..3 {
        let mut created = Value::Null;
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            ("POST", REPLICAS)
        );
        let bytes = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let b: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            b["spec"]["role"],
            if i == 0 { "Primary" } else { "Secondary" }
        );
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            b["metadata"]["labels"]["projstore.io/node"],
            b["spec"]["node"]
        );
        pools_seen.push(b["spec"]["pool"].as_str().unwrap().to_owned());
        created.clone_from(&b);
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&created).unwrap()))
                .unwrap(),
        );
    }
    pools_seen.sort();
    assert_eq!(pools_seen, ["pa", "pb", "pc"]);
    expect(
        &mut handle,
        "PATCH",
        &format!("{PROJECT}/status"),
        |b| {
            assert_eq!(b["status"]["phase"], "Placing");
            assert_eq!(b["status"]["observedGeneration"], 1);
        },
        reply,
    )
    .await;
    no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

fn replicas_of(p: &Project) -> Vec<StreamReplica> {
    let owner = p.controller_owner_ref(&()).unwrap();
    [("pa", "a", "Primary"), ("pb", "b", "Secondary"), ("pc", "c", "Secondary")]
        .iter()
        .map(|(pool, node, role)| {
            let mut v = json!({
                "apiVersion": "projstore.io/v1alpha1", "kind": "StreamReplica",
                "metadata": {"name": format!("thesis-{pool}"), "namespace": "alice", "ownerReferences": [owner]},
                "spec": {"project": "thesis", "pool": pool, "node": node, "role": role, "epoch": 1, "state": "Live"},
                "status": {"phase": "Ready", "appliedSnapshot": {"name": "ps-1", "guid": "1", "createtxg": 1}}
            });
            if *role == "Primary" {
                v["metadata"]["annotations"] = json!({"projstore.io/project-generation": "1"});
            }
            if *role == "Secondary" {
                v["spec"]["source"] = json!({"pool": "pa", "node": "a", "streamEndpoint": "http://a:7420"});
                v["metadata"]["annotations"] = json!({"projstore.io/primary-snapshot": "1"});
            }
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_steady_project_sends_nothing_once_its_status_is_written() {
    let p = project(json!({"metadata": {"finalizers": ["projstore.io/cleanup"]}}));
    let reps = replicas_of(&p);
    // First pass writes the status...
    let (ctx, mut handle) = context(&fleet(), &reps);
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    let mut written = Value::Null;
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        ("PATCH", format!("{PROJECT}/status").as_str())
    );
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    written.clone_from(&serde_json::from_slice::<Value>(&bytes).unwrap()["status"]);
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&p).unwrap()))
            .unwrap(),
    );
    task.await.unwrap().unwrap();
    assert_eq!(written["phase"], "Ready");
    // ...the next pass, seeing it, sends nothing at all.
    let with_status =
        project(json!({"metadata": {"finalizers": ["projstore.io/cleanup"]}, "status": written}));
    let (ctx, mut handle) = context(&fleet(), &reps);
    reconcile_project(Arc::new(with_status), ctx).await.unwrap();
    no_more(&mut handle).await;
}

#[tokio::test]
async fn failover_patches_the_promoted_replica_first() {
    let p = project(json!({"metadata": {"finalizers": ["projstore.io/cleanup"]}}));
    let mut reps = replicas_of(&p);
    reps[2]
        .status
        .as_mut()
        .unwrap()
        .applied_snapshot
        .as_mut()
        .unwrap()
        .createtxg = 5;
    let mut pools = fleet();
    pools[0] = serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "pa"},
        "spec": {"nodeName": "a", "poolName": "storage", "vdevs": [{"path": "/dev/sdb"}]},
        "status": {"phase": "NotReady", "conditions": [{"type": "Ready", "status": "False", "reason": "HeartbeatStale", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    }))
    .unwrap();
    let (ctx, mut handle) = context(&pools, &reps);
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    let reply = |name: &str| {
        serde_json::to_value(
            reps.iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .unwrap(),
        )
        .unwrap()
    };
    expect(
        &mut handle,
        "PATCH",
        &format!("{REPLICAS}/thesis-pc"),
        |b| {
            assert_eq!(
                (b["spec"]["role"].as_str(), b["spec"]["epoch"].as_u64()),
                (Some("Primary"), Some(2))
            );
        },
        reply("thesis-pc"),
    )
    .await;
    expect(
        &mut handle,
        "PATCH",
        &format!("{REPLICAS}/thesis-pa"),
        |b| {
            assert_eq!(
                (b["spec"]["role"].as_str(), b["spec"]["epoch"].as_u64()),
                (Some("Secondary"), Some(2))
            );
            assert_eq!(b["spec"]["source"]["pool"], "pc");
        },
        reply("thesis-pa"),
    )
    .await;
    expect(
        &mut handle,
        "PATCH",
        &format!("{REPLICAS}/thesis-pb"),
        |b| assert_eq!(b["spec"]["source"]["pool"], "pc"),
        reply("thesis-pb"),
    )
    .await;
    // The FailedOver event, then the status.
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method().as_str(), "POST");
    assert!(
        req.uri().path().ends_with("/namespaces/alice/events"),
        "{}",
        req.uri()
    );
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    let ev: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(ev["reason"], "FailedOver");
    send.send_response(
        Response::builder()
            .status(201)
            .body(Body::from(bytes))
            .unwrap(),
    );
    expect(
        &mut handle,
        "PATCH",
        &format!("{PROJECT}/status"),
        |b| assert_eq!(b["status"]["phase"], "Degraded"),
        serde_json::to_value(&p).unwrap(),
    )
    .await;
    no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn deletion_marks_replicas_trashed_before_anything_else() {
    let p = project(
        json!({"metadata": {"finalizers": ["projstore.io/cleanup"], "deletionTimestamp": "2026-11-21T00:00:00Z"}}),
    );
    let reps = replicas_of(&p);
    let (ctx, mut handle) = context(&fleet(), &reps);
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    for r in ["thesis-pa", "thesis-pb", "thesis-pc"] {
        let reply = serde_json::to_value(
            reps.iter()
                .find(|x| x.metadata.name.as_deref() == Some(r))
                .unwrap(),
        )
        .unwrap();
        expect(
            &mut handle,
            "PATCH",
            &format!("{REPLICAS}/{r}"),
            |b| {
                assert_eq!(b["spec"]["state"], "Trashed");
                assert!(b["metadata"]["annotations"]["projstore.io/trashed-at"].is_string());
            },
            reply,
        )
        .await;
    }
    // The finalizer stays until the agents report the data in the trash.
    expect(
        &mut handle,
        "PATCH",
        &format!("{PROJECT}/status"),
        |b| assert_eq!(b["status"]["phase"], "Deleting"),
        serde_json::to_value(&p).unwrap(),
    )
    .await;
    no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_finalizer_goes_once_the_agents_trashed_the_data() {
    let p = project(
        json!({"metadata": {"finalizers": ["projstore.io/cleanup"], "deletionTimestamp": "2026-11-21T00:00:00Z"}}),
    );
    let mut reps = replicas_of(&p);
    for r in &mut reps {
        r.spec.state = projstore_api::ReplicaState::Trashed;
        r.status.as_mut().unwrap().phase = Some(projstore_api::ReplicaPhase::Trashed);
    }
    let (ctx, mut handle) = context(&fleet(), &reps);
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    for r in ["thesis-pa", "thesis-pb", "thesis-pc"] {
        let reply = serde_json::to_value(
            reps.iter()
                .find(|x| x.metadata.name.as_deref() == Some(r))
                .unwrap(),
        )
        .unwrap();
        expect(
            &mut handle,
            "PATCH",
            &format!("{REPLICAS}/{r}"),
            |b| {
                assert_eq!(
                    b["metadata"]["ownerReferences"],
                    Value::Null,
                    "orphaned as a tombstone"
                )
            },
            reply,
        )
        .await;
    }
    expect(
        &mut handle,
        "PATCH",
        PROJECT,
        |b| {
            assert_eq!(b["metadata"]["finalizers"], json!([]));
            assert_eq!(b["metadata"]["resourceVersion"], "7");
        },
        serde_json::to_value(&p).unwrap(),
    )
    .await;
    // The Trashed event; no status write for an object on its way out.
    let (req, send) = handle.next_request().await.unwrap();
    assert!(req.uri().path().ends_with("/events"));
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    send.send_response(
        Response::builder()
            .status(201)
            .body(Body::from(bytes))
            .unwrap(),
    );
    no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_move_asks_the_caught_up_primary_to_hand_off() {
    let p = project(
        json!({"metadata": {"finalizers": ["projstore.io/cleanup"]}, "spec": {"placement": {"pool": "pd"}}}),
    );
    let mut reps = replicas_of(&p);
    let owner = p.controller_owner_ref(&()).unwrap();
    reps.push(serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "StreamReplica",
        "metadata": {"name": "thesis-pd", "namespace": "alice", "ownerReferences": [owner], "annotations": {"projstore.io/primary-snapshot": "1"}},
        "spec": {"project": "thesis", "pool": "pd", "node": "d", "role": "Secondary", "epoch": 1, "state": "Live",
                 "source": {"pool": "pa", "node": "a", "streamEndpoint": "http://a:7420"}},
        "status": {"phase": "Ready", "appliedSnapshot": {"name": "ps-1", "guid": "1", "createtxg": 1}}
    })).unwrap());
    let mut pools = fleet();
    pools.push(pool("pd", "d", "dc2"));
    let (ctx, mut handle) = context(&pools, &reps);
    let task = tokio::spawn(reconcile_project(Arc::new(p.clone()), ctx));
    let reply = serde_json::to_value(&reps[0]).unwrap();
    expect(
        &mut handle,
        "PATCH",
        &format!("{REPLICAS}/thesis-pa"),
        |b| {
            assert_eq!(
                b["metadata"]["annotations"]["projstore.io/handoff-to"],
                "pd"
            );
            assert_eq!(
                b["spec"]["role"], "Primary",
                "still the primary until the final snapshot arrives"
            );
        },
        reply,
    )
    .await;
    expect(
        &mut handle,
        "PATCH",
        &format!("{PROJECT}/status"),
        |b| assert_eq!(b["status"]["phase"], "Moving"),
        serde_json::to_value(&p).unwrap(),
    )
    .await;
    no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

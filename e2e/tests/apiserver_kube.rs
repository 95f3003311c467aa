//! kube-rs against the test API server: Api verbs, watches from a resourceVersion, 410 Gone
//! and relist, reflector, finalizers, owner garbage collection, a Controller, concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, controller::Action, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use projstore_api::{Project, StoragePool};
use projstore_e2e::apiserver::{ApiServer, Config};
use projstore_e2e::testkit::TestApi;
use serde_json::json;

async fn server_with(config: Config) -> (ApiServer, Client) {
    let TestApi { server, client } = TestApi::start_with(config).await.unwrap();
    (server, client)
}

async fn server() -> (ApiServer, Client) {
    server_with(Config::default()).await
}

fn project(name: &str) -> Project {
    serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
        "metadata": {"name": name},
        "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
    }))
    .unwrap()
}

async fn namespace(client: &Client, name: &str) {
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn create_get_list_patch_and_defaults() {
    let (_server, client) = server().await;
    namespace(&client, "alice").await;
    let api: Api<Project> = Api::namespaced(client.clone(), "alice");
    let created = api
        .create(&PostParams::default(), &project("thesis"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.spec.copies, 3, "schema default applied");
    assert_eq!(created.spec.snapshots.keep.daily, 14);

    // AlreadyExists is a 409.
    let err = api
        .create(&PostParams::default(), &project("thesis"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );

    // A merge patch of the spec bumps the generation; a status patch does not.
    let p = api
        .patch(
            "thesis",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": "2Gi"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
    let s = api
        .patch_status(
            "thesis",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"quota": "9Gi"}})),
        )
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(s.spec.quota.0, "2Gi", "spec changes are ignored on /status");
    assert_eq!(
        s.status.unwrap().phase,
        Some(projstore_api::ProjectPhase::Ready)
    );
    // Status changes are ignored on the main resource.
    let m = api
        .patch(
            "thesis",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Degraded"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        m.status.unwrap().phase,
        Some(projstore_api::ProjectPhase::Ready)
    );

    // Update with a stale resourceVersion is a conflict.
    let mut stale = created.clone();
    stale.spec.copies = 2;
    let err = api
        .replace("thesis", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );

    // JSON patch with a failing test op changes nothing.
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/copies", "value": 5},
        {"op": "replace", "path": "/spec/copies", "value": 1}
    ]))
    .unwrap();
    assert!(
        api.patch("thesis", &PatchParams::default(), &Patch::Json::<()>(jp))
            .await
            .is_err()
    );
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/copies", "value": 3},
        {"op": "replace", "path": "/spec/copies", "value": 1}
    ]))
    .unwrap();
    assert_eq!(
        api.patch("thesis", &PatchParams::default(), &Patch::Json::<()>(jp))
            .await
            .unwrap()
            .spec
            .copies,
        1
    );

    // generateName.
    let mut g = project("x");
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &g).await.unwrap();
    assert!(made.name_any().starts_with("gen-") && made.name_any().len() == 9);

    // Label selectors on list.
    let mut labelled = project("labelled");
    labelled.metadata.labels = Some(BTreeMap::from([("tier".to_owned(), "ssd".to_owned())]));
    api.create(&PostParams::default(), &labelled).await.unwrap();
    let l = api
        .list(&ListParams::default().labels("tier=ssd"))
        .await
        .unwrap();
    assert_eq!(
        l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["labelled"]
    );
    let l = api
        .list(&ListParams::default().fields("metadata.name=thesis"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
}

#[tokio::test]
async fn invalid_objects_get_422_naming_the_field() {
    let (_server, client) = server().await;
    namespace(&client, "alice").await;
    let api: Api<Project> = Api::namespaced(client.clone(), "alice");
    let mut bad = project("bad");
    bad.spec.copies = 9;
    bad.spec.owner.uid = 0;
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("not an API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("spec.copies") && s.message.contains("spec.owner.uid"),
        "{}",
        s.message
    );
    // Immutable fields: CEL transition rules.
    let pools: Api<StoragePool> = Api::all(client.clone());
    let pool: StoragePool = serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "p"},
        "spec": {"nodeName": "host-a", "poolName": "storage", "vdevs": [{"path": "/dev/sdb"}]}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let err = pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "host-b"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("nodeName is immutable")),
        "{err}"
    );
    // Unknown namespace: 404.
    let nowhere: Api<Project> = Api::namespaced(client.clone(), "nowhere");
    assert!(
        matches!(nowhere.create(&PostParams::default(), &project("a")).await, Err(kube::Error::Api(s)) if s.code == 404)
    );
}

#[tokio::test]
async fn watches_resume_from_a_version_and_410_forces_a_relist() {
    let (_server, client) = server_with(Config {
        watch_log: 5,
        ..Config::default()
    })
    .await;
    namespace(&client, "w").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "w");
    let cm = |n: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": n}, "data": {"k": "v"}})).unwrap()
    };
    let a = api.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = a.resource_version().unwrap();
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();

    // From `rv`: exactly what came after it, in order.
    let mut stream = api
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.name_any())),
            _ => {}
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, ["ADDED b", "DELETED a"]);

    // Push the version out of the watch log: the server answers 410 Gone.
    for i in 0..10 {
        api.create(&PostParams::default(), &cm(&format!("x{i}")))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }

    // The runtime watcher relists on 410 and ends up with the full state.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let rf = reflector(writer, watcher(api.clone(), watcher::Config::default())).applied_objects();
    let handle = tokio::spawn(async move { rf.for_each(|_| async {}).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while reader.state().len() < 11 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("reflector converges");
    api.delete("b", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while reader.state().len() != 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("reflector sees the delete");
    handle.abort();
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_take_dependents_with_them() {
    let (_server, client) = server().await;
    namespace(&client, "f").await;
    let api: Api<Project> = Api::namespaced(client.clone(), "f");
    let mut p = project("p");
    p.metadata.finalizers = Some(vec!["projstore.io/cleanup".into()]);
    let p = api.create(&PostParams::default(), &p).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "f");
    let owner = OwnerReference {
        api_version: "projstore.io/v1alpha1".into(),
        kind: "Project".into(),
        name: "p".into(),
        uid: p.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut child: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "child"}})).unwrap();
    child.metadata.owner_references = Some(vec![owner]);
    cms.create(&PostParams::default(), &child).await.unwrap();

    api.delete("p", &DeleteParams::default()).await.unwrap();
    let held = api.get("p").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "finalizer holds the object"
    );
    assert!(
        cms.get("child").await.is_ok(),
        "dependents stay while the owner exists"
    );
    // Adding a finalizer while deleting is refused.
    let err = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["projstore.io/cleanup", "x/y"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err}"
    );
    // Removing the last finalizer deletes it, and the GC removes the dependent.
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(matches!(api.get("p").await, Err(kube::Error::Api(s)) if s.code == 404));
    assert!(matches!(cms.get("child").await, Err(kube::Error::Api(s)) if s.code == 404));
}

#[tokio::test]
async fn server_side_apply_tracks_managers_and_conflicts() {
    let (_server, client) = server().await;
    namespace(&client, "s").await;
    let api: Api<Project> = Api::namespaced(client.clone(), "s");
    let cfg = json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": "p"},
        "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}, "copies": 2}
    });
    let p = api
        .patch("p", &PatchParams::apply("gitops"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert_eq!(p.spec.copies, 2);
    let managers: Vec<_> = p
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert!(
        managers.contains(&(Some("gitops".into()), Some("Apply".into()))),
        "{managers:?}"
    );
    // Someone else's apply of a different value conflicts; forcing wins.
    let other = json!({"apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": "p"}, "spec": {"copies": 4}});
    let err = api
        .patch("p", &PatchParams::apply("ops"), &Patch::Apply(&other))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    let forced = api
        .patch(
            "p",
            &PatchParams::apply("ops").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.copies, 4);
    assert_eq!(forced.spec.quota.0, "1Gi", "fields of other managers stay");
}

/// Reconciles each Project by writing its status once: a Controller end to end.
#[tokio::test]
async fn a_controller_reconciles_every_object() {
    let (_server, client) = server().await;
    namespace(&client, "c").await;
    let api: Api<Project> = Api::namespaced(client.clone(), "c");
    for i in 0..20 {
        api.create(&PostParams::default(), &project(&format!("p{i}")))
            .await
            .unwrap();
    }
    let ctx = Arc::new(client.clone());
    let ctrl = kube::runtime::Controller::new(api.clone(), watcher::Config::default())
        .run(
            |p: Arc<Project>, c: Arc<Client>| async move {
                let api: Api<Project> = Api::namespaced((*c).clone(), &p.namespace().unwrap());
                if p.status.as_ref().and_then(|s| s.observed_generation) != p.meta().generation {
                    api.patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"observedGeneration": p.meta().generation, "phase": "Pending"}})),
                    )
                    .await?;
                }
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(ctrl);
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let l = api.list(&ListParams::default()).await.unwrap();
            if l.items
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.observed_generation) == Some(1))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("all 20 reconciled");
    handle.abort();
}

#[tokio::test]
async fn concurrent_writers_and_watchers_lose_nothing_and_never_go_backwards() {
    let (_server, client) = server().await;
    namespace(&client, "cc").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "cc");
    let start_rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let mut watchers = Vec::new();
    for _ in 0..4 {
        let api = api.clone();
        let rv = start_rv.clone();
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = 0u64;
            let mut stream = api
                .watch(&WatchParams::default().timeout(60), &rv)
                .await
                .unwrap()
                .boxed();
            while let Some(ev) = stream.try_next().await.unwrap() {
                if let WatchEvent::Added(o) | WatchEvent::Modified(o) = ev {
                    let v: u64 = o.resource_version().unwrap().parse().unwrap();
                    assert!(v > last, "resourceVersion went backwards: {last} then {v}");
                    last = v;
                    seen.push((
                        o.name_any(),
                        o.data
                            .unwrap_or_default()
                            .get("n")
                            .cloned()
                            .unwrap_or_default(),
                    ));
                }
                if seen.len() == WRITERS * EACH * 2 {
                    break;
                }
            }
            seen
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let name = format!("w{w}-{i}");
                let cm: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": "0"}}))
                        .unwrap();
                api.create(&PostParams::default(), &cm).await.unwrap();
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"n": "1"}})),
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for w in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("watcher finished")
            .unwrap();
        assert_eq!(seen.len(), WRITERS * EACH * 2);
        let finals = seen.iter().filter(|(_, n)| n == "1").count();
        assert_eq!(finals, WRITERS * EACH, "every update seen");
    }
}

/// A CRD's `selectableFields` work in field selectors (lists and watches); other spec fields
/// are refused with 400 as by a real API server.
#[tokio::test]
async fn field_selectors_on_a_crd_selectable_field() {
    let (_server, client) = server().await;
    let pools: Api<StoragePool> = Api::all(client.clone());
    for (name, node) in [("pa", "host-a"), ("pb", "host-b"), ("pa2", "host-a")] {
        let pool: StoragePool = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
            "spec": {"nodeName": node, "poolName": name, "vdevs": [{"path": "/dev/sdb"}]}
        }))
        .unwrap();
        pools.create(&PostParams::default(), &pool).await.unwrap();
    }
    let on_a = pools
        .list(&ListParams::default().fields("spec.nodeName=host-a"))
        .await
        .unwrap();
    let mut names: Vec<_> = on_a.items.iter().map(ResourceExt::name_any).collect();
    names.sort();
    assert_eq!(names, ["pa", "pa2"]);
    // A watcher with the selector sees only its node's pools, also later ones.
    let (store, writer) = reflector::store::<StoragePool>();
    let watch = reflector::reflector(
        writer,
        watcher(
            pools.clone(),
            watcher::Config::default().fields("spec.nodeName=host-b"),
        ),
    )
    .applied_objects()
    .for_each(|_| async {});
    let watch = tokio::spawn(watch);
    store.wait_until_ready().await.unwrap();
    for (name, node) in [("pa3", "host-a"), ("pb2", "host-b")] {
        let pool: StoragePool = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
            "spec": {"nodeName": node, "poolName": name, "vdevs": [{"path": "/dev/sdc"}]}
        }))
        .unwrap();
        pools.create(&PostParams::default(), &pool).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.state().len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert!(store.state().iter().all(|p| p.spec.node_name == "host-b"));
    watch.abort();
    let err = pools
        .list(&ListParams::default().fields("spec.poolName=pa"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 400),
        "{err}"
    );
}

#[tokio::test]
async fn a_secrets_string_data_is_stored_as_data_like_the_real_server_does() {
    let (_server, client) = server().await;
    namespace(&client, "ops").await;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "ops");
    let s = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3"},
        "data": {"accessKeyId": "b2xk", "region": "ZXUtd2VzdA=="},
        "stringData": {"accessKeyId": "new", "secretAccessKey": "s3cr3t"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
    let got = api.get("s3").await.unwrap();
    let data = got.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    // stringData wins over data for the same key, and is not stored itself.
    assert_eq!(text("accessKeyId"), "new");
    assert_eq!(text("secretAccessKey"), "s3cr3t");
    assert_eq!(text("region"), "eu-west");
    assert!(got.string_data.is_none());
}

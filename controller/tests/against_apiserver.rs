//! The controller against the test API server, with simulated agents (heartbeat Leases and
//! replica status written the way agents write them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use projstore_api::{Project, ReplicaRole, StoragePool, StreamReplica};
use projstore_controller::reconcile::apply::Settings;
use projstore_controller::run::{Config, run};
use projstore_e2e::apiserver::ApiServer;
use projstore_e2e::testkit::{TestApi, eventually};
use serde_json::json;

const NS: &str = "projstore-system";

struct Cluster {
    server: ApiServer,
    client: Client,
    alive: Arc<Mutex<HashSet<String>>>,
}

async fn cluster() -> Cluster {
    let api = TestApi::start().await.unwrap();
    api.create_namespaces(&[NS, "demo"]).await.unwrap();
    let TestApi { server, client } = api;
    let pools: Api<StoragePool> = Api::all(client.clone());
    let alive = Arc::new(Mutex::new(HashSet::new()));
    for (node, dc) in [
        ("host-a", "dc1"),
        ("host-b", "dc1"),
        ("host-c", "dc2"),
        ("host-d", "dc2"),
    ] {
        let p: StoragePool = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": format!("{node}-storage")},
            "spec": {"nodeName": node, "poolName": "storage", "vdevs": [{"path": "/dev/sdb"}], "topology": {"datacenter": dc, "zone": format!("{dc}-{node}")}}
        }))
        .unwrap();
        pools.create(&PostParams::default(), &p).await.unwrap();
        // What an agent reports once its checks pass.
        let status = json!({"status": {
            "freeBytes": 1u64 << 40, "sizeBytes": 1u64 << 40, "health": "ONLINE",
            "agent": {"streamEndpoint": format!("http://{node}:7420")},
            "conditions": [{"type": "SanityChecksPassed", "status": "True", "reason": "ChecksPassed", "message": "", "lastTransitionTime": "2026-11-21T00:00:00Z"}]
        }});
        pools
            .patch_status(
                &format!("{node}-storage"),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .unwrap();
        alive.lock().unwrap().insert(node.to_owned());
    }
    // Simulated agents: renew the heartbeat Lease of every live node each second.
    let (c, a) = (client.clone(), alive.clone());
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(c, NS);
        loop {
            let nodes: Vec<String> = a.lock().unwrap().iter().cloned().collect();
            for node in nodes {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": format!("projstore-agent-{node}")},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}
                });
                let _ = leases
                    .patch(
                        &format!("projstore-agent-{node}"),
                        &PatchParams::apply("agent").force(),
                        &Patch::Apply(&lease),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Cluster {
        server,
        client,
        alive,
    }
}

fn config(identity: &str) -> Config {
    Config {
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        identity: identity.into(),
        leader_lease: Duration::from_secs(3),
        settings: Settings {
            lease_namespace: NS.into(),
            failover_grace: Duration::from_secs(3),
            // The simulated agents renew every 500 ms, but this binary's tests run side by side
            // on a busy machine (200 projects converging next door): with 3 s, a renewal held
            // up for a moment can make a live node look dead, and then nothing is placed on it.
            heartbeat_timeout: Duration::from_secs(10),
        },
    }
}

fn project(name: &str) -> Project {
    serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": name},
        "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
    }))
    .unwrap()
}

async fn versions(client: &Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let projects: Api<Project> = Api::all(client.clone());
    for p in projects.list(&ListParams::default()).await.unwrap() {
        out.insert(format!("p/{}", p.name_any()), p.resource_version().unwrap());
    }
    let srs: Api<StreamReplica> = Api::all(client.clone());
    for r in srs.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("sr/{}", r.name_any()),
            r.resource_version().unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_projects_converge_and_a_resync_writes_nothing() {
    let c = cluster().await;
    let ctrl = tokio::spawn(run(c.client.clone(), config("first")));
    let projects: Api<Project> = Api::namespaced(c.client.clone(), "demo");
    for i in 0..200 {
        projects
            .create(&PostParams::default(), &project(&format!("p{i}")))
            .await
            .unwrap();
    }
    let srs: Api<StreamReplica> = Api::namespaced(c.client.clone(), "demo");
    eventually("600 replicas and 200 statuses", 60, || async {
        let n = srs.list(&ListParams::default()).await.unwrap().items.len();
        let done = projects
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.replicas.len() == 3 && s.primary.is_some())
            })
            .count();
        n == 600 && done == 200
    })
    .await;
    // Every project: three copies on distinct nodes, spread over both datacenters, one primary.
    let all = srs.list(&ListParams::default()).await.unwrap().items;
    for i in 0..200 {
        let mine: Vec<&StreamReplica> = all
            .iter()
            .filter(|r| r.spec.project == format!("p{i}"))
            .collect();
        let nodes: HashSet<&str> = mine.iter().map(|r| r.spec.node.as_str()).collect();
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            mine.iter()
                .filter(|r| r.spec.role == ReplicaRole::Primary)
                .count(),
            1
        );
        assert!(
            mine.iter()
                .all(|r| r.labels().get("projstore.io/node") == Some(&r.spec.node))
        );
        assert!(mine.iter().all(|r| r.owner_references().len() == 1));
        let p = projects.get(&format!("p{i}")).await.unwrap();
        assert!(p.finalizers().contains(&"projstore.io/cleanup".to_owned()));
    }
    // Settle, then a fresh controller (a full resync of everything) writes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = versions(&c.client).await;
    ctrl.abort();
    tokio::time::sleep(Duration::from_secs(4)).await; // the old leader's Lease expires
    let second = tokio::spawn(run(c.client.clone(), config("second")));
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), NS);
    eventually("the second controller leads", 20, || async {
        leases
            .get("projstore-controller")
            .await
            .is_ok_and(|l| l.spec.unwrap().holder_identity.as_deref() == Some("second"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = versions(&c.client).await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    if let Some(first) = changed.first().and_then(|k| k.strip_prefix("p/")) {
        let p = projects.get(first).await.unwrap();
        eprintln!(
            "changed {first}: {}",
            serde_json::to_string(&p.status).unwrap()
        );
    }
    assert!(
        changed.is_empty(),
        "a resync changed {} objects: {changed:?}",
        changed.len()
    );
    second.abort();
    drop(c.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_when_the_leader_dies() {
    let c = cluster().await;
    let leader = tokio::spawn(run(c.client.clone(), config("leader")));
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), NS);
    eventually("leader holds the lease", 20, || async {
        leases
            .get("projstore-controller")
            .await
            .is_ok_and(|l| l.spec.unwrap().holder_identity.as_deref() == Some("leader"))
    })
    .await;
    let standby = tokio::spawn(run(c.client.clone(), config("standby")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        leases
            .get("projstore-controller")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("leader")
    );
    leader.abort();
    let started = tokio::time::Instant::now();
    eventually("the standby takes over", 15, || async {
        leases
            .get("projstore-controller")
            .await
            .is_ok_and(|l| l.spec.unwrap().holder_identity.as_deref() == Some("standby"))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3 + 3),
        "within the lease duration (plus a renewal period)"
    );
    // And it reconciles.
    let projects: Api<Project> = Api::namespaced(c.client.clone(), "demo");
    projects
        .create(&PostParams::default(), &project("after"))
        .await
        .unwrap();
    eventually("placed by the standby", 20, || async {
        projects
            .get("after")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.primary.is_some())
    })
    .await;
    standby.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_promotes_the_freshest_replica_and_bumps_the_epoch_once() {
    let c = cluster().await;
    let ctrl = tokio::spawn(run(c.client.clone(), config("ctrl")));
    let projects: Api<Project> = Api::namespaced(c.client.clone(), "demo");
    projects
        .create(&PostParams::default(), &project("fo"))
        .await
        .unwrap();
    let srs: Api<StreamReplica> = Api::namespaced(c.client.clone(), "demo");
    eventually("three replicas", 60, || async {
        srs.list(&ListParams::default()).await.unwrap().items.len() == 3
    })
    .await;
    // Agents report: every copy Ready; the secondaries hold snapshots of different ages.
    let list = srs.list(&ListParams::default()).await.unwrap().items;
    let primary = list
        .iter()
        .find(|r| r.spec.role == ReplicaRole::Primary)
        .unwrap()
        .clone();
    let mut secondaries: Vec<StreamReplica> = list
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Secondary)
        .cloned()
        .collect();
    secondaries.sort_by_key(|r| r.name_any());
    let snap = |n: u64| json!({"name": format!("ps-{n}"), "guid": format!("{}", 1000 + n), "createtxg": n, "time": format!("2026-11-21T00:{:02}:00Z", n)});
    for (r, n) in [
        (&primary, 30u64),
        (&secondaries[0], 10),
        (&secondaries[1], 20),
    ] {
        let st = json!({"status": {"phase": "Ready", "appliedSnapshot": snap(n)}});
        srs.patch_status(&r.name_any(), &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap();
    }
    eventually("project Ready", 60, || async {
        projects
            .get("fo")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            == Some(projstore_api::ProjectPhase::Ready)
    })
    .await;
    // The primary's host dies: its agent stops renewing.
    c.alive.lock().unwrap().remove(&primary.spec.node);
    eventually("failover", 60, || async {
        srs.get(&secondaries[1].name_any()).await.unwrap().spec.role == ReplicaRole::Primary
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = srs.list(&ListParams::default()).await.unwrap().items;
    let primaries: Vec<&StreamReplica> = after
        .iter()
        .filter(|r| r.spec.role == ReplicaRole::Primary)
        .collect();
    assert_eq!(primaries.len(), 1, "exactly one primary");
    assert_eq!(
        primaries[0].name_any(),
        secondaries[1].name_any(),
        "the freshest replica (snapshot 20) was promoted"
    );
    assert!(
        after.iter().all(|r| r.spec.epoch == 2),
        "epoch bumped exactly once: {:?}",
        after.iter().map(|r| r.spec.epoch).collect::<Vec<_>>()
    );
    let old = after.iter().find(|r| r.name_any() == primary.name_any());
    if let Some(old) = old {
        assert_eq!(
            old.spec.role,
            ReplicaRole::Secondary,
            "the old primary is demoted"
        );
    }
    let p = projects.get("fo").await.unwrap();
    assert_eq!(p.status.unwrap().primary.unwrap().epoch, 2);
    ctrl.abort();
}

//! The dev cluster command contract (DESIGN §8) and the API server's persistence and CRD
//! lifecycle.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use projstore_api::{Project, StoragePool};
use projstore_e2e::apiserver::{ApiServer, Config};
use serde_json::json;

const DEV: &str = env!("CARGO_BIN_EXE_projstore-dev");

async fn client_for(kubeconfig_yaml: &str) -> Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml).unwrap();
    Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn up_status_down_with_the_api_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let up = Command::new(DEV)
        .args(["up", "--state-dir"])
        .arg(&dir)
        .arg("--api-only")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains("kubeconfig"));
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig")).unwrap();
    let client = client_for(&kubeconfig).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = crds
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(
        names.contains(&"projects.projstore.io".to_owned()),
        "{names:?}"
    );

    let again = Command::new(DEV)
        .args(["up", "--state-dir"])
        .arg(&dir)
        .arg("--api-only")
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a second up on the same dir is refused"
    );

    let status = Command::new(DEV)
        .args(["status", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && text.contains("supervisor    running")
            && text.contains("apiserver     serving"),
        "{text}"
    );

    let down = Command::new(DEV)
        .args(["down", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.exists(), "state removed");
    let projects: Api<Project> = Api::all(client);
    assert!(
        projects.list(&ListParams::default()).await.is_err(),
        "the server is gone"
    );
}

fn zfs_usable() -> bool {
    std::process::Command::new("zpool")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn a_full_cluster_runs_pools_agents_and_the_controller_or_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let bins = Path::new(DEV).parent().unwrap();
    if !bins.join("projstore-controller").exists() || !bins.join("projstore-agent").exists() {
        let out = Command::new(DEV)
            .args(["up", "--state-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("missing"), "{stderr}");
        return;
    }
    if !zfs_usable() {
        assert!(
            std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
            "ZFS is required but unusable"
        );
        eprintln!("SKIP: no usable ZFS");
        return;
    }
    let up = Command::new(DEV)
        .args(["up", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    // Whatever happens next, take the cluster down.
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(DEV)
                .args(["down", "--state-dir"])
                .arg(&self.0)
                .output();
        }
    }
    let down = Down(dir.clone());
    assert!(
        up.status.success(),
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let client = client_for(&std::fs::read_to_string(dir.join("kubeconfig")).unwrap()).await;
    let pools: Api<StoragePool> = Api::all(client.clone());
    let list = pools.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 3);
    let dcs: std::collections::BTreeSet<String> = list
        .iter()
        .filter_map(|p| p.spec.topology.as_ref().and_then(|t| t.datacenter.clone()))
        .collect();
    assert_eq!(dcs.len(), 2, "three hosts in two datacenters");
    for p in &list {
        let st = p.status.clone().unwrap();
        assert_eq!(
            st.phase,
            Some(projstore_api::PoolPhase::Ready),
            "{}",
            p.name_any()
        );
        assert!(st.free_bytes.unwrap_or(0) > 0);
    }
    let status = String::from_utf8_lossy(
        &Command::new(DEV)
            .args(["status", "--state-dir"])
            .arg(&dir)
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert_eq!(status.matches("ONLINE").count(), 3, "{status}");
    // A project gets placed by the controller onto the agents' pools.
    let projects: Api<Project> = Api::namespaced(client.clone(), "default");
    let p: Project = serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": "p"},
        "spec": {"quota": "100Mi", "owner": {"uid": 1000, "gid": 1000}}
    }))
    .unwrap();
    projects.create(&PostParams::default(), &p).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = projects.get("p").await.unwrap();
        if got.status.as_ref().is_some_and(|s| s.replicas.len() == 3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not placed: {:?}",
            got.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // The agents serve it: the primary snapshots and streams, the secondaries apply.
    let srs: Api<projstore_api::StreamReplica> = Api::namespaced(client.clone(), "default");
    let applied = || async {
        srs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.applied_snapshot.as_ref())
                    .map(|a| a.guid.clone())
            })
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let first = loop {
        let a = applied().await;
        if a.len() == 3 && a.iter().all(|g| g.is_some() && *g == a[0]) {
            break a[0].clone().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas not in sync: {a:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let got = projects.get("p").await.unwrap().status.unwrap();
    assert_eq!(got.phase, Some(projstore_api::ProjectPhase::Ready));
    assert_eq!(got.replicas_ready.as_deref(), Some("3/3"));
    // New data and a snapshot on demand reach every copy.
    let mount = got.primary.unwrap().mount_path.unwrap();
    std::fs::write(Path::new(&mount).join("hello.txt"), b"hello").unwrap();
    projects
        .patch(
            "p",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"projstore.io/snapshot-now": "1"}}}),
            ),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let a = applied().await;
        if a.iter().all(|g| g.is_some() && *g == a[0]) && a[0].as_deref() != Some(first.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new snapshot did not reach every copy: {a:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Close: archived to verified streams on every copy, live datasets gone; open: back, same data.
    let phase_is = |want: projstore_api::ProjectPhase| {
        let projects = projects.clone();
        async move {
            projects
                .get("p")
                .await
                .unwrap()
                .status
                .and_then(|s| s.phase)
                == Some(want)
        }
    };
    projects
        .patch(
            "p",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"state": "Closed"}})),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !phase_is(projstore_api::ProjectPhase::Closed).await {
        assert!(
            std::time::Instant::now() < deadline,
            "not Closed: {:?}",
            projects.get("p").await.unwrap().status
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for h in projstore_e2e::dev::hosts(3, &dir) {
        let live = Command::new("zfs")
            .args(["list", "-H", &format!("{}/projects/default/p", h.pool)])
            .output()
            .unwrap();
        assert!(
            !live.status.success(),
            "a live dataset is left on {}",
            h.pool
        );
    }
    projects
        .patch(
            "p",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"state": "Open"}})),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !phase_is(projstore_api::ProjectPhase::Ready).await {
        if std::time::Instant::now() >= deadline {
            let errs: Vec<Option<String>> = srs
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|r| r.status.as_ref().and_then(|s| s.last_error.clone()))
                .collect();
            panic!("not reopened: {errs:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let mount = projects
        .get("p")
        .await
        .unwrap()
        .status
        .unwrap()
        .primary
        .unwrap()
        .mount_path
        .unwrap();
    assert_eq!(
        std::fs::read(Path::new(&mount).join("hello.txt")).unwrap(),
        b"hello",
        "the data survived close and open"
    );

    // Delete: the data goes to the trash on every copy, then the object goes.
    projects.delete("p", &Default::default()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while projects.get_opt("p").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the project was not released after trashing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let trashed = String::from_utf8_lossy(
        &Command::new("zfs")
            .args(["list", "-H", "-o", "name", "-r"])
            .arg(format!(
                "{}/trash",
                projstore_e2e::dev::hosts(3, &dir)[0].pool
            ))
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(trashed.contains("/trash/default/p-"), "{trashed}");
    // Re-created within retainDays: restored, with the data.
    projects.create(&PostParams::default(), &p).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = projects.get("p").await.unwrap().status.unwrap_or_default();
        if got.restored_from.is_some() && got.phase == Some(projstore_api::ProjectPhase::Ready) {
            let mount = got.primary.unwrap().mount_path.unwrap();
            assert_eq!(
                std::fs::read(Path::new(&mount).join("hello.txt")).unwrap(),
                b"hello"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not restored: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    drop(down);
    let pools_left = String::from_utf8_lossy(
        &Command::new("zpool")
            .args(["list", "-H", "-o", "name"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for h in projstore_e2e::dev::hosts(3, &dir) {
        assert!(!pools_left.contains(&h.pool), "pool {} left behind", h.pool);
    }
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_persistent_server_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || Config {
        state_dir: Some(tmp.path().to_owned()),
        ..Config::default()
    };
    let server = ApiServer::start(config()).await.unwrap();
    server
        .register_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests"))
        .unwrap();
    let kubeconfig = server.kubeconfig(&server.admin_token, "admin");
    let client = client_for(&kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "keep"}, "data": {"a": "b"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv: u64 = created.resource_version().unwrap().parse().unwrap();
    server.shutdown().await;

    let server = ApiServer::start(Config {
        port: 0,
        ..config()
    })
    .await
    .unwrap();
    // Same CA and token: only the address moved.
    let moved = kubeconfig.replace(
        &kubeconfig
            .lines()
            .find(|l| l.contains("server:"))
            .unwrap()
            .trim()
            .replace("server: ", ""),
        &server.url,
    );
    let client = client_for(&moved).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let back = cms.get("keep").await.unwrap();
    assert_eq!(back.uid(), created.uid());
    let projects: Api<Project> = Api::all(client.clone());
    projects
        .list(&ListParams::default())
        .await
        .expect("CRDs are served again after the restart");
    let next = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        next.resource_version().unwrap().parse::<u64>().unwrap() > rv,
        "versions keep growing"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_crd_unserves_its_kind_and_removes_its_objects() {
    let server = ApiServer::start(Config::default()).await.unwrap();
    server
        .register_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests"))
        .unwrap();
    let client = client_for(&server.kubeconfig(&server.admin_token, "admin")).await;
    let projects: Api<Project> = Api::namespaced(client.clone(), "default");
    let p: Project = serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": "p"},
        "spec": {"quota": "1Gi", "owner": {"uid": 1, "gid": 1}}
    }))
    .unwrap();
    projects.create(&PostParams::default(), &p).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("projects.projstore.io", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        matches!(projects.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404)
    );
    assert_eq!(server.count("projstore.io", "projects"), 0);
    server.shutdown().await;
}

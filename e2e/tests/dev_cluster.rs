//! The dev cluster command contract (DESIGN §8) and the API server's persistence and CRD
//! lifecycle.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::process::Command;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use projstore_api::{Project, StoragePool};
use projstore_e2e::apiserver::{ApiServer, Config};
use projstore_e2e::testkit::{self, TestApi};
use serde_json::json;

const DEV: &str = env!("CARGO_BIN_EXE_projstore-dev");

async fn client_for(kubeconfig_yaml: &str) -> Client {
    testkit::client_from_yaml(kubeconfig_yaml).await.unwrap()
}

#[tokio::test]
async fn up_status_down_with_the_api_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    assert!(String::from_utf8_lossy(&up_api_only(&dir).stdout).contains("kubeconfig"));
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

    let again = dev("up", &dir, &["--api-only"]);
    assert!(
        !again.status.success(),
        "a second up on the same dir is refused"
    );

    let status = dev("status", &dir, &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && text.contains("supervisor    running")
            && text.contains("apiserver     serving"),
        "{text}"
    );

    let down = dev("down", &dir, &[]);
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

/// `projstore-dev <command> --state-dir <dir> [extra]`.
fn dev(command: &str, dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(DEV)
        .args([command, "--state-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

/// `projstore-dev up` in `dir` (api-only); panics with its stderr when it fails.
fn up_api_only(dir: &std::path::Path) -> std::process::Output {
    let up = dev("up", dir, &["--api-only"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    up
}

#[tokio::test]
async fn the_chart_helm_installed_is_what_the_dev_cluster_enforces() {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let _ = up_api_only(&dir);
    let admin = client_for(&std::fs::read_to_string(dir.join("kubeconfig")).unwrap()).await;
    let controller =
        client_for(&std::fs::read_to_string(dir.join("kubeconfig-controller")).unwrap()).await;
    // Helm's own record of the release: the chart was installed by Helm.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "projstore-system");
    secrets.get("sh.helm.release.v1.ps.v1").await.unwrap();
    let projects = |c: &Client| Api::<Project>::all(c.clone());
    projects(&controller)
        .list(&ListParams::default())
        .await
        .unwrap();
    let denied = Api::<Secret>::namespaced(controller.clone(), "projstore-system")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    // A restarted cluster upgrades its release, and goes on enforcing it.
    let pid = std::fs::read_to_string(dir.join("supervisor.pid")).unwrap();
    Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    // Gone once its process is (it removes `ready` just before it exits).
    for _ in 0..150 {
        if !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = up_api_only(&dir);
    let admin = client_for(&std::fs::read_to_string(dir.join("kubeconfig")).unwrap()).await;
    let controller =
        client_for(&std::fs::read_to_string(dir.join("kubeconfig-controller")).unwrap()).await;
    Api::<Secret>::namespaced(admin.clone(), "projstore-system")
        .get("sh.helm.release.v1.ps.v2")
        .await
        .unwrap();
    projects(&controller)
        .list(&ListParams::default())
        .await
        .unwrap();
    // The ClusterRole Helm created is the one enforced: without its projects rule, the
    // controller may no longer list projects.
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let mut role = roles.get("ps-projstore-controller").await.unwrap();
    role.rules
        .as_mut()
        .unwrap()
        .retain(|r| !r.resources.iter().flatten().any(|x| x == "projects"));
    roles
        .replace("ps-projstore-controller", &PostParams::default(), &role)
        .await
        .unwrap();
    let denied = projects(&controller)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    // So for the agents: their ServiceAccount and ClusterRoleBinding are Helm's, and nothing
    // is granted without them.
    let agent = client_for(&std::fs::read_to_string(dir.join("kubeconfig-agent")).unwrap()).await;
    let pools = || Api::<StoragePool>::all(agent.clone());
    pools().list(&ListParams::default()).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "projstore-system");
    let account = accounts.get("projstore-agent").await.unwrap();
    accounts
        .delete("projstore-agent", &Default::default())
        .await
        .unwrap();
    let denied = pools().list(&ListParams::default()).await.unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let mut again = account.clone();
    again.metadata.resource_version = None;
    again.metadata.uid = None;
    accounts
        .create(&PostParams::default(), &again)
        .await
        .unwrap();
    pools().list(&ListParams::default()).await.unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete("ps-projstore-agent", &Default::default())
        .await
        .unwrap();
    let denied = pools().list(&ListParams::default()).await.unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    let _ = dev("down", &dir, &[]);
}

#[tokio::test]
async fn a_persistent_server_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || Config {
        state_dir: Some(tmp.path().to_owned()),
        ..Config::default()
    };
    let TestApi { server, client } = TestApi::start_with(config()).await.unwrap();
    let kubeconfig = server.kubeconfig(&server.admin_token, "admin");
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
    let TestApi { server, client } = TestApi::start().await.unwrap();
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

#[test]
fn up_refuses_at_once_a_state_dir_that_cannot_hold_an_sftp_chroot() {
    // /tmp is writable by everyone: OpenSSH would refuse every chroot below it.
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let dir = tmp.path().join("state");
    let started = std::time::Instant::now();
    let up = Command::new(DEV)
        .args(["up", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(!up.status.success(), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused at once"
    );
    assert!(
        stderr.contains("/tmp") && stderr.contains("not writable by group or others"),
        "the reason: {stderr}"
    );
    assert!(
        stderr.contains("--state-dir /var/lib/") && stderr.contains("--api-only"),
        "a suggestion: {stderr}"
    );
    assert!(!dir.exists(), "nothing was created");
}

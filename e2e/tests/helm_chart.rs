//! The chart installed, upgraded and uninstalled by Helm's own library (helm-python-sdk,
//! `charts/tests/helm_release.py`) against the test API server: the CRDs come from the chart,
//! every object is stored and checked against its kind's real schema, the generated CA
//! survives upgrade and uninstall, and the ClusterRoles and bindings Helm created are what the
//! server enforces for the controller's ServiceAccount.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::Path;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use projstore_e2e::apiserver::stored_rbac::StoredRbac;
use projstore_e2e::apiserver::{ApiServer, Config, Identity};
use projstore_e2e::testkit;
use serde_json::{Value, json};

const NS: &str = "projstore-system";

/// Runs one Helm action through Helm's library; the release as JSON.
fn helm(kubeconfig: &Path, action: &str, values: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tests/helm_release.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(kubeconfig)
        .arg(action)
        .arg(values.to_string())
        .output()
        .expect("python3 must be installed (make test installs helm-python-sdk)");
    assert!(
        out.status.success(),
        "helm {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kubeconfig(server: &ApiServer, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    path
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    // A bare server: no CRD until Helm installs the chart's; RBAC from the stored objects, so
    // what Helm creates is what is enforced. The controller's token stands for its
    // ServiceAccount, as a pod's would.
    let controller_user = "system:serviceaccount:projstore-system:projstore-controller";
    let server = ApiServer::start(Config {
        tokens: vec![(
            "controller-token".into(),
            Identity {
                user: controller_user.into(),
                groups: vec!["system:serviceaccounts".into()],
            },
        )],
        authorizer: Some(Box::new(StoredRbac::default())),
        ..Config::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, dir.path());
    let client = testkit::client_for(&kc).await.unwrap();
    let as_controller =
        testkit::client_from_yaml(&server.kubeconfig("controller-token", controller_user))
            .await
            .unwrap();
    let controller_projects: Api<DynamicObject> = Api::all_with(
        as_controller.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("projstore.io", "v1alpha1", "Project"),
            "projects",
        ),
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("projects.projstore.io")
            .await
            .unwrap()
            .is_none()
    );

    // install: the CRDs from the chart's crds/, then every object.
    let release = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || helm(&kc, "install", &json!({}))
    })
    .await
    .unwrap();
    assert_eq!(release["status"], "deployed", "{release}");
    assert_eq!(release["revision"], 1);
    for crd in [
        "projects.projstore.io",
        "storagepools.projstore.io",
        "streamreplicas.projstore.io",
        "backuptargets.projstore.io",
    ] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "{crd}");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let controller = deployments.get("ps-projstore-controller").await.unwrap();
    assert_eq!(controller.spec.replicas, Some(2));
    let pod = controller.spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("projstore-controller")
    );
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .get("ps-projstore-agent")
        .await
        .unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), NS)
        .get("ps-projstore-controller")
        .await
        .unwrap();
    for svc in [
        "ps-projstore-agent-metrics",
        "ps-projstore-controller-metrics",
    ] {
        Api::<Service>::namespaced(client.clone(), NS)
            .get(svc)
            .await
            .unwrap();
    }
    for sa in ["projstore-controller", "projstore-agent"] {
        Api::<ServiceAccount>::namespaced(client.clone(), NS)
            .get(sa)
            .await
            .unwrap();
    }
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let controller_role = roles.get("ps-projstore-controller").await.unwrap();
    assert!(
        controller_role.rules.unwrap().iter().any(|r| r
            .resources
            .iter()
            .flatten()
            .any(|x| x == "projects")),
        "the controller's rules come from the chart"
    );
    let policy = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
        ),
        "validatingadmissionpolicies",
    );
    Api::<DynamicObject>::all_with(client.clone(), &policy)
        .get("ps-projstore-agent-own-status")
        .await
        .unwrap();
    // The controller may do what the ClusterRole Helm created says, and nothing else.
    controller_projects.list(&Default::default()).await.unwrap();
    let denied = Api::<Secret>::namespaced(as_controller.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let ca = secrets.get("ps-projstore-agent-ca").await.unwrap().data;
    assert!(
        ca.as_ref().is_some_and(|d| !d.is_empty()),
        "the CA was generated"
    );

    // upgrade: new values, a ServiceMonitor once its CRD exists, the same CA.
    let monitor_crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &monitor_crd)
        .await
        .unwrap();
    let values = json!({
        "controller": {"replicas": 3},
        "agent": {"tls": {"nodes": ["host-a", "host-b"]}},
        "metrics": {"serviceMonitor": {"enabled": true}},
        "networkPolicy": {"enabled": true},
    });
    let release = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || helm(&kc, "upgrade", &values)
    })
    .await
    .unwrap();
    assert_eq!(release["status"], "deployed", "{release}");
    assert_eq!(release["revision"], 2);
    let controller = deployments.get("ps-projstore-controller").await.unwrap();
    assert_eq!(controller.spec.replicas, Some(3));
    assert_eq!(
        secrets.get("ps-projstore-agent-ca").await.unwrap().data,
        ca,
        "the CA survives an upgrade"
    );
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        !policies.items.is_empty(),
        "network policies were installed"
    );
    let monitors = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let monitors = Api::<DynamicObject>::namespaced_with(client.clone(), NS, &monitors)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(!monitors.items.is_empty(), "a ServiceMonitor was installed");

    // uninstall: the release's objects go; the CRDs (so every Project) and the CA stay.
    tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || helm(&kc, "uninstall", &json!({}))
    })
    .await
    .unwrap();
    assert!(
        deployments
            .get_opt("ps-projstore-controller")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        roles
            .get_opt("ps-projstore-controller")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        crds.get_opt("projects.projstore.io")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        secrets.get("ps-projstore-agent-ca").await.unwrap().data,
        ca,
        "the CA survives an uninstall"
    );
    // With the release's binding gone, so are the controller's rights.
    let denied = controller_projects
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
}

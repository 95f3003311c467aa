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
/// prometheus-operator's `ServiceMonitor` CRD (`monitoring.coreos.com/v1`), with the structural
/// schema of the fields of its API reference a scrape of the chart's metrics can use (its
/// TLS and relabelling settings kept as objects): what a cluster running the operator holds.
fn service_monitor_crd() -> CustomResourceDefinition {
    let duration = json!({"type": "string",
        "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let free = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let endpoint = json!({"type": "object", "properties": {
        "port": {"type": "string"},
        "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
        "path": {"type": "string"},
        "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {"type": "object", "additionalProperties": strings},
        "interval": duration,
        "scrapeTimeout": duration,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "followRedirects": {"type": "boolean"},
        "enableHttp2": {"type": "boolean"},
        "proxyUrl": {"type": "string"},
        "bearerTokenSecret": free,
        "authorization": free,
        "basicAuth": free,
        "oauth2": free,
        "tlsConfig": free,
        "relabelings": {"type": "array", "items": free},
        "metricRelabelings": {"type": "array", "items": free},
    }});
    let label_selector = json!({"type": "object", "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"type": "string"}, "values": strings}}},
    }, "x-kubernetes-map-type": "atomic"});
    serde_json::from_value(json!({
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                "plural": "servicemonitors", "singular": "servicemonitor", "categories": ["prometheus-operator"],
                "shortNames": ["smon"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "required": ["spec"], "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": {"type": "object", "required": ["selector"], "properties": {
                        "selector": label_selector,
                        "namespaceSelector": {"type": "object", "properties": {
                            "any": {"type": "boolean"}, "matchNames": strings}},
                        "endpoints": {"type": "array", "items": endpoint},
                        "jobLabel": {"type": "string"},
                        "targetLabels": strings,
                        "podTargetLabels": strings,
                        "sampleLimit": {"type": "integer", "format": "int64"},
                        "scrapeProtocols": strings,
                    }},
                }}}}]
        }
    }))
    .unwrap()
}

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
    crds.create(&PostParams::default(), &service_monitor_crd())
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
        let values = values.clone();
        move || helm(&kc, "upgrade", &values)
    })
    .await
    .unwrap();
    assert_eq!(release["status"], "deployed", "{release}");
    assert_eq!(release["revision"], 2);
    // Each listed node got its own key pair, signed by the CA; another upgrade keeps them (the
    // chart looks them up) — a new key would cut every node off from its peers.
    let node_keys = || async {
        let mut keys = Vec::new();
        for node in ["host-a", "host-b"] {
            let s = secrets
                .get(&format!("ps-projstore-agent-tls-{node}"))
                .await
                .unwrap();
            assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
            let data = s.data.unwrap();
            assert!(!data["tls.key"].0.is_empty(), "{node} has a key");
            assert_eq!(data["ca.crt"], ca.as_ref().unwrap()["ca.crt"]);
            keys.push(data);
        }
        keys
    };
    let keys = node_keys().await;
    assert_ne!(keys[0]["tls.key"], keys[1]["tls.key"]);
    let release = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || helm(&kc, "upgrade", &values)
    })
    .await
    .unwrap();
    assert_eq!(release["revision"], 3, "{release}");
    assert_eq!(
        node_keys().await,
        keys,
        "the nodes' keys survive an upgrade"
    );
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
    assert_eq!(monitors.items.len(), 1, "a ServiceMonitor was installed");
    let spec = &monitors.items[0].data["spec"];
    assert_eq!(spec["endpoints"][0]["port"], "metrics");
    assert!(spec["selector"]["matchLabels"].is_object(), "{spec}");
    // The CRD's schema holds: what the chart wrote passed it, and a ServiceMonitor that breaks
    // it is refused.
    let monitors_api = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );
    let mut bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "bad"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "soon"}]}
    }))
    .unwrap();
    let e = monitors_api
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.endpoints[0].interval"), "{e}");
    bad.data["spec"] = json!({"endpoints": [{"port": "metrics"}]});
    let e = monitors_api
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.selector"), "{e}");

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
    assert_eq!(
        node_keys().await,
        keys,
        "the nodes' keys survive an uninstall"
    );
    // With the release's binding gone, so are the controller's rights.
    let denied = controller_projects
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
}

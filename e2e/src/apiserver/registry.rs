//! The kinds the test API server serves: a fixed set of built-ins, plus whatever the
//! CustomResourceDefinitions stored in it declare.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use projstore_api::validate::ObjectValidator;
use serde_json::{Value, json};

use super::typed;

/// A printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i32,
}

/// One served resource: `<group>/<version>`, `<plural>`.
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// Whether spec changes bump `metadata.generation`.
    pub generation: bool,
    pub columns: Vec<Column>,
    /// Schema validation and defaults (custom resources).
    pub validator: Option<Arc<ObjectValidator>>,
    /// The check against the kind's k8s-openapi type (built-in kinds that have one).
    pub typed: Option<typed::Check>,
    /// The real schema of a built-in kind, for the OpenAPI documents.
    pub schema: Option<fn() -> Value>,
    /// `metadata.name` of the CRD that declares it.
    pub crd: Option<String>,
    /// Field paths a field selector may use besides `metadata.name`/`metadata.namespace`
    /// (a CRD's `selectableFields`, without the leading dot).
    pub selectable: Vec<String>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

/// How the store files objects: by group and plural (one version per kind here).
pub type ResKey = (String, String);

impl ResourceType {
    pub fn key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `kind.group` as the API server names it in messages (`Project.projstore.io`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            categories: Vec::new(),
            status_subresource: false,
            generation: false,
            columns: Vec::new(),
            validator: None,
            typed: None,
            schema: None,
            crd: None,
            selectable: Vec::new(),
        }
    }

    /// The built-in kind `K`, checked against its k8s-openapi type, with a status
    /// subresource and generations.
    fn workload<K>(plural: &str, namespaced: bool, short: &[&str]) -> Self
    where
        K: k8s_openapi::Resource
            + serde::de::DeserializeOwned
            + serde::Serialize
            + schemars::JsonSchema,
    {
        let mut t = Self::builtin(K::GROUP, K::VERSION, K::KIND, plural, namespaced, short);
        t.typed = Some(typed::check::<K>);
        t.schema = Some(typed::schema::<K>);
        t.generation = true;
        t
    }

    /// Publishes the real schema of kind `K` and checks writes against its k8s-openapi type
    /// (a kind without generations).
    fn checked<K>(mut self) -> Self
    where
        K: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    {
        self.typed = Some(typed::check::<K>);
        self.described::<K>()
    }

    /// Publishes the real schema of kind `K` (its writes are not checked against it).
    fn described<K: schemars::JsonSchema>(mut self) -> Self {
        self.schema = Some(typed::schema::<K>);
        self
    }

    /// The `APIResource` entries of discovery for this type (with its subresources).
    pub fn discovery(&self) -> Vec<Value> {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// All served types.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<ResKey, ResourceType>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        let mut ns = ResourceType::builtin("", "v1", "Namespace", "namespaces", false, &["ns"]);
        ns.status_subresource = true;
        for t in [
            ns.checked::<core::Namespace>(),
            ResourceType::builtin("", "v1", "Event", "events", true, &["ev"])
                .described::<core::Event>(),
            ResourceType::builtin("", "v1", "Secret", "secrets", true, &[])
                .checked::<core::Secret>(),
            ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"])
                .checked::<core::ConfigMap>(),
            ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"])
                .checked::<core::ServiceAccount>(),
            ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true, &["ev"])
                .described::<k8s_openapi::api::events::v1::Event>(),
            ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, &[])
                .described::<k8s_openapi::api::coordination::v1::Lease>(),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
                &[],
            )
            .checked::<k8s_openapi::api::rbac::v1::ClusterRole>(),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                &[],
            )
            .checked::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
                "roles",
                true,
                &[],
            )
            .checked::<k8s_openapi::api::rbac::v1::Role>(),
            ResourceType::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
                &[],
            )
            .checked::<k8s_openapi::api::rbac::v1::RoleBinding>(),
            // What a Helm install of the chart creates besides the kinds above (namespaces,
            // secrets, service accounts and RBAC objects, checked as well).
            ResourceType::workload::<apps::Deployment>("deployments", true, &["deploy"]),
            ResourceType::workload::<apps::DaemonSet>("daemonsets", true, &["ds"]),
            ResourceType::workload::<core::Service>("services", true, &["svc"]),
            ResourceType::workload::<policy::PodDisruptionBudget>(
                "poddisruptionbudgets",
                true,
                &["pdb"],
            ),
            ResourceType::workload::<networking::NetworkPolicy>(
                "networkpolicies",
                true,
                &["netpol"],
            ),
            ResourceType::workload::<admission::ValidatingAdmissionPolicy>(
                "validatingadmissionpolicies",
                false,
                &[],
            ),
            ResourceType::workload::<admission::ValidatingAdmissionPolicyBinding>(
                "validatingadmissionpolicybindings",
                false,
                &[],
            ),
            {
                let mut crd = ResourceType::builtin(
                    "apiextensions.k8s.io",
                    "v1",
                    "CustomResourceDefinition",
                    "customresourcedefinitions",
                    false,
                    &["crd", "crds"],
                );
                crd.status_subresource = true;
                crd.generation = true;
                crd
            },
        ] {
            r.types.insert(t.key(), t);
        }
        r
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&(group.to_owned(), plural.to_owned()))
            .filter(|t| t.version == version)
    }

    pub fn by_key(&self, key: &ResKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Serves the kind a CRD declares (its served storage version), replacing an earlier one.
    pub fn register_crd(&mut self, crd_value: &Value) -> Result<(), String> {
        let crd: CustomResourceDefinition = serde_json::from_value(crd_value.clone())
            .map_err(|e| format!("not a CustomResourceDefinition: {e}"))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let spec = &crd.spec;
        let version = spec
            .versions
            .iter()
            .find(|v| v.served && v.storage)
            .or_else(|| spec.versions.iter().find(|v| v.served))
            .ok_or_else(|| format!("CRD {name} serves no version"))?;
        let validator = ObjectValidator::for_crd(&crd, &version.name).map_err(|e| e.to_string())?;
        let columns = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| Column {
                name: c.name.clone(),
                type_: c.type_.clone(),
                json_path: c.json_path.clone(),
                description: c.description.clone().unwrap_or_default(),
                priority: c.priority.unwrap_or(0),
            })
            .collect();
        let t = ResourceType {
            group: spec.group.clone(),
            version: version.name.clone(),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
            singular: spec
                .names
                .singular
                .clone()
                .unwrap_or_else(|| spec.names.kind.to_ascii_lowercase()),
            namespaced: spec.scope == "Namespaced",
            short_names: spec.names.short_names.clone().unwrap_or_default(),
            categories: spec.names.categories.clone().unwrap_or_default(),
            status_subresource: version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            generation: true,
            columns,
            validator: Some(Arc::new(validator)),
            typed: None,
            schema: None,
            crd: Some(name),
            selectable: version
                .selectable_fields
                .iter()
                .flatten()
                .map(|f| f.json_path.trim_start_matches('.').to_owned())
                .collect(),
        };
        self.types.insert(t.key(), t);
        Ok(())
    }

    /// Stops serving the kind of CRD `name`.
    pub fn unregister_crd(&mut self, name: &str) -> Option<ResourceType> {
        let key = self
            .types
            .iter()
            .find(|(_, t)| t.crd.as_deref() == Some(name))
            .map(|(k, _)| k.clone())?;
        self.types.remove(&key)
    }

    /// Groups with their versions, for `/apis`.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            let v = out.entry(t.group.clone()).or_default();
            if !v.contains(&t.version) {
                v.push(t.version.clone());
            }
        }
        out
    }
}

//! One cluster set-up for the tests of every crate (controller, agent, e2e): the test API
//! server with projstore's CRDs and a client acting as its admin, namespaces, clients from a
//! kubeconfig, and waiting until a condition holds.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::apiserver::{ApiServer, Config, ServerError};

/// What failed while setting a test cluster up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the test API server: {0}")]
    Server(#[from] ServerError),
    #[error("the CRD manifests: {0}")]
    Crds(String),
    #[error("the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("the client: {0}")]
    Client(#[from] kube::Error),
    #[error("namespace {name}: {source}")]
    Namespace {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The test API server serving projstore's CRDs, and a client acting as its admin.
pub struct TestApi {
    pub server: ApiServer,
    pub client: Client,
}

impl TestApi {
    /// A fresh in-memory server (the default [`Config`]).
    pub async fn start() -> Result<Self, SetupError> {
        Self::start_with(Config::default()).await
    }

    /// A server started with `config`.
    pub async fn start_with(config: Config) -> Result<Self, SetupError> {
        let server = ApiServer::start(config).await?;
        server.register_crds(&crate::dev::crds_dir().map_err(SetupError::Crds)?)?;
        let client = client_from_yaml(&server.kubeconfig(&server.admin_token, "admin")).await?;
        Ok(Self { server, client })
    }

    /// Creates these namespaces.
    pub async fn create_namespaces(&self, names: &[&str]) -> Result<(), SetupError> {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        for name in names {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some((*name).to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            nss.create(&PostParams::default(), &ns)
                .await
                .map_err(|source| SetupError::Namespace {
                    name: (*name).to_owned(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// A client for the cluster a kubeconfig (its YAML text) names.
pub async fn client_from_yaml(kubeconfig: &str) -> Result<Client, SetupError> {
    client_of(kube::config::Kubeconfig::from_yaml(kubeconfig)?).await
}

/// A client for the cluster the kubeconfig file at `path` names.
pub async fn client_for(path: &Path) -> Result<Client, SetupError> {
    client_of(kube::config::Kubeconfig::read_from(path)?).await
}

async fn client_of(kc: kube::config::Kubeconfig) -> Result<Client, SetupError> {
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `f` every 200 ms until it is true.
///
/// # Panics
/// When it is not true within `secs` seconds: this is a test's assertion.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests

    use super::*;
    use projstore_api::Project;

    #[tokio::test]
    async fn a_test_api_serves_the_crds_to_its_admin_and_creates_namespaces() {
        let api = TestApi::start().await.unwrap();
        api.create_namespaces(&["a", "b"]).await.unwrap();
        let nss: Api<Namespace> = Api::all(api.client.clone());
        let names: Vec<String> = nss
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"));
        let projects: Api<Project> = Api::namespaced(api.client.clone(), "a");
        assert!(projects.list(&Default::default()).await.is_ok());
        let again = client_from_yaml(&api.server.kubeconfig(&api.server.admin_token, "admin"))
            .await
            .unwrap();
        assert!(
            Api::<Project>::all(again)
                .list(&Default::default())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let polls = std::sync::atomic::AtomicU32::new(0);
        eventually("the third poll", 5, || async {
            polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}

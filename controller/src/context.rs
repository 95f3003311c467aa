//! What the reconcilers share: the client, the Event recorder, metrics, settings and the
//! caches they decide from; and the name every write of the controller carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use projstore_api::{Project, StoragePool, StreamReplica};

use crate::metrics::Metrics;

/// Field manager of every write the controller makes (and its Events' reporter).
pub const MANAGER: &str = "projstore-controller";

/// Parameters of a (merge) patch by the controller: under its field manager.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// Parameters of a create by the controller: under its field manager.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// Settings of the reconcilers.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lease_namespace: String,
    pub failover_grace: Duration,
    pub heartbeat_timeout: Duration,
}

/// What the reconcilers share.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub replicas: Store<StreamReplica>,
    pub pools: Store<StoragePool>,
    pub leases: Store<Lease>,
    /// All Projects (for mount sources).
    pub projects: Store<Project>,
    /// Consecutive failures per object, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        stores: (
            Store<StreamReplica>,
            Store<StoragePool>,
            Store<Lease>,
            Store<Project>,
        ),
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        );
        Self {
            client,
            recorder,
            metrics,
            settings,
            replicas: stores.0,
            pools: stores.1,
            leases: stores.2,
            projects: stores.3,
            failures: Default::default(),
        }
    }

    /// Forgets the failures of `key` after a reconcile that went through.
    pub fn forget_failures(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

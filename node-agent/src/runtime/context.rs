//! What every part of the agent's runtime shares, built once by `run` and handed around as
//! one `Arc<AgentContext>`: the API client, the options it was started with, this node's
//! pools, ZFS, and the replica scheduler's own small state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use projstore_api::{StoragePool, StreamReplica};

use super::Config;
use super::replica::ReplicaError;
use crate::sftp::SshKeys;
use crate::streams::StreamStore;
use crate::tls::NodeTls;
use crate::zfs::{PoolName, Zfs};

pub struct AgentContext {
    pub client: Client,
    pub cfg: Config,
    /// This node's StoragePools (server-side filtered), as the API server has them now.
    pub pools: Store<StoragePool>,
    /// Every StoragePool (the sftp side's watch): what a source host says of its mounts.
    pub all_pools: Store<StoragePool>,
    /// Every StreamReplica: what the other copies of a project hold (retention keeps their
    /// bases; a close waits for them).
    pub replicas: Store<StreamReplica>,
    /// None when ZFS is not usable on this host: the agent reports that and does no work.
    pub zfs: Option<Zfs>,
    /// Replica work is allowed: sanity checks pass and the heartbeat is fresh.
    pub open: AtomicBool,
    /// Consecutive failed passes per replica (`ns/name`), for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// The status each replica's last pass wrote, by the replica's uid: what the watch should
    /// bring back before the next pass (see `schedule::pass_patch`).
    pub written: Mutex<HashMap<String, serde_json::Value>>,
    /// Per primary dataset: when a scheduled snapshot last found nothing written (no snapshot
    /// was taken; the next check is one interval later).
    pub quiet: Mutex<HashMap<String, i64>>,
    /// The backup upload or verification running beside each uploading copy's passes
    /// (`ns/name` of the StreamReplica).
    pub backup_jobs: Mutex<HashMap<String, super::replica::BackupJob>>,
    /// Set while this host verifies a backup (one at a time).
    pub verifying: Arc<std::sync::atomic::AtomicBool>,
    /// The live receives this host runs at once ([`super::schedule::RECEIVES`]).
    pub receives: Arc<super::schedule::ReceiveSlots>,
    /// Uploads this host runs at once ([`super::replica::MAX_UPLOADS`]); the others wait.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Uploads of one namespace this host runs at once
    /// ([`super::replica::MAX_NAMESPACE_UPLOADS`]), per namespace: one tenant's projects
    /// (their backups asked for at once) never take every turn.
    pub namespace_uploads: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Per uploading StreamReplica (`ns/name`): when its verification may try again after
    /// finding no spare pool free, and whether an upload already stopped it once.
    pub verify_memo: Mutex<HashMap<String, super::replica::VerifyMemo>>,
    /// What this node saw of each project's backup Lease (by Lease name): a holder that
    /// stopped renewing is told by how long its Lease stood unchanged here.
    pub backup_leases: Mutex<HashMap<String, projstore_api::lease::Observed>>,
}

impl AgentContext {
    pub fn new(
        client: Client,
        cfg: Config,
        (pools, all_pools, replicas): (
            Store<StoragePool>,
            Store<StoragePool>,
            Store<StreamReplica>,
        ),
        zfs: Option<Zfs>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            cfg,
            pools,
            all_pools,
            replicas,
            zfs,
            open: AtomicBool::new(false),
            failures: Mutex::default(),
            written: Mutex::default(),
            quiet: Mutex::default(),
            backup_jobs: Mutex::default(),
            verifying: Arc::default(),
            receives: Arc::new(super::schedule::ReceiveSlots::new(
                super::schedule::RECEIVES,
                super::schedule::RESERVED_FOR,
            )),
            uploads: Arc::new(tokio::sync::Semaphore::new(super::replica::MAX_UPLOADS)),
            namespace_uploads: Mutex::default(),
            verify_memo: Mutex::default(),
            backup_leases: Mutex::default(),
        })
    }

    /// Why source pool `pool`'s host serves no folder mounts, as its `MountsServed`
    /// condition says; None when it says nothing against them.
    pub fn mounts_refused_by(&self, pool: &str) -> Option<String> {
        super::pool::mounts_refusal(&self.all_pools.state(), pool)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cfg.node_name
    }

    /// ZFS, or why there is none.
    pub fn zfs(&self) -> Result<&Zfs, ReplicaError> {
        self.zfs
            .as_ref()
            .ok_or_else(|| "ZFS is not usable on this host".into())
    }

    /// This node's TLS identity, for the stream server and fetches from peers.
    pub fn tls(&self) -> Result<Arc<NodeTls>, ReplicaError> {
        self.cfg
            .tls
            .clone()
            .ok_or_else(|| "this agent has no TLS identity (--tls-dir)".into())
    }

    /// Key files for sftp mounts; None when this agent serves no sftp (then mounts from other
    /// hosts are not possible).
    pub fn sftp_keys(&self) -> Option<SshKeys> {
        self.cfg.sftp_listen.map(|_| SshKeys {
            dir: self.cfg.run_dir.join("ssh"),
        })
    }

    /// This host's address as its sftp endpoint names it: peers let its client key in from
    /// there only, so its sshfs connections leave from it.
    pub fn sftp_address(&self) -> Option<IpAddr> {
        self.cfg
            .sftp_advertise
            .as_deref()
            .and_then(crate::sftp::address_of)
    }

    /// The ZFS pool of this node's StoragePool `name`.
    pub fn own_pool(&self, name: &str) -> Option<PoolName> {
        self.pools
            .state()
            .iter()
            .find(|p| p.spec.node_name == self.cfg.node_name && p.name_any() == name)
            .and_then(|p| PoolName::parse(&p.spec.pool_name).ok())
    }

    /// The live dataset of `project` on this node's pools, if it has one.
    pub async fn live_dataset(
        &self,
        project: &crate::streams::ProjectKey,
    ) -> Option<crate::zfs::DatasetName> {
        let zfs = self.zfs.as_ref()?;
        let pools: Vec<PoolName> = self
            .pools
            .state()
            .iter()
            .filter(|p| p.spec.node_name == self.cfg.node_name)
            .filter_map(|p| PoolName::parse(&p.spec.pool_name).ok())
            .collect();
        for pool in pools {
            if let Ok(ds) = crate::layout::PoolLayout::new(pool).project(project)
                && zfs.exists(&ds).await.unwrap_or(false)
            {
                return Some(ds);
            }
        }
        None
    }

    /// [`Self::live_dataset`] as the stream server asks it.
    pub fn locator(self: Arc<Self>) -> crate::live::Locate {
        Arc::new(move |project| {
            let cx = self.clone();
            Box::pin(async move { cx.live_dataset(&project).await })
        })
    }

    /// Every StreamReplica of project `name` in `namespace`, as last seen.
    pub fn copies_of(&self, namespace: &str, name: &str) -> Vec<Arc<StreamReplica>> {
        self.replicas
            .state()
            .into_iter()
            .filter(|sr| sr.spec.project == name && sr.namespace().as_deref() == Some(namespace))
            .collect()
    }

    /// The stream store of `pool`.
    pub fn store_of(&self, pool: &PoolName) -> StreamStore {
        StreamStore::new(self.cfg.streams_root.join(pool.as_str()))
    }
}

//! Plain views of the objects the decisions read, and condition helpers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use projstore_api::{PoolPhase, StoragePool};

pub use projstore_api::units::{chrono_of, jiff_of};

/// What the controller knows of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub datacenter: String,
    pub phase: Option<PoolPhase>,
    pub schedulable: bool,
    pub experimental: bool,
    pub labels: BTreeMap<String, String>,
    pub free_bytes: u64,
    pub size_bytes: u64,
    pub reserved_percent: u8,
    /// Since when the pool is not Ready (its Ready condition's transition time).
    pub not_ready_since: Option<DateTime<Utc>>,
    pub stream_endpoint: Option<String>,
    /// Where the pool's agent serves sftp (mount sources on this pool are reached there).
    pub sftp_endpoint: Option<String>,
    /// That sshd's host key, as the agent published it.
    pub sftp_host_key: Option<String>,
}

impl PoolView {
    pub fn from_pool(p: &StoragePool) -> Self {
        let status = p.status.clone().unwrap_or_default();
        let topo = p.spec.topology.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let not_ready_since = match ready {
            Some(c) if c.status != "True" => Some(chrono_of(&c.last_transition_time.0)),
            None if status.phase == Some(PoolPhase::NotReady) => p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| chrono_of(&t.0)),
            _ => None,
        };
        Self {
            name: p.name_any(),
            node: p.spec.node_name.clone(),
            zone: topo.zone.unwrap_or_default(),
            datacenter: topo.datacenter.unwrap_or_default(),
            phase: status.phase,
            schedulable: p.spec.schedulable,
            experimental: p.spec.experimental,
            labels: p.labels().clone(),
            free_bytes: status.free_bytes.unwrap_or(0),
            size_bytes: status.size_bytes.unwrap_or(0),
            reserved_percent: p.spec.reserved_percent,
            not_ready_since,
            stream_endpoint: status
                .agent
                .as_ref()
                .and_then(|a| a.stream_endpoint.clone()),
            sftp_host_key: status.agent.as_ref().and_then(|a| a.sftp_host_key.clone()),
            sftp_endpoint: status.agent.and_then(|a| a.sftp_endpoint),
        }
    }

    pub fn ready(&self) -> bool {
        self.phase == Some(PoolPhase::Ready)
    }

    /// NotReady for at least `grace`: its copies count as lost.
    pub fn lost(&self, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
        self.phase == Some(PoolPhase::NotReady)
            && self.not_ready_since.is_some_and(|t| now - t >= grace)
    }
}

/// A condition, keeping `lastTransitionTime` from `previous` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    now: DateTime<Utc>,
    generation: Option<i64>,
) -> Condition {
    projstore_api::units::condition(
        previous,
        type_,
        ok,
        reason,
        message,
        jiff_of(now),
        generation,
    )
}

/// Whether condition `type_` is True in `conds`.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

pub use projstore_api::units::{human_bytes, quantity_bytes};

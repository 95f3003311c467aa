//! A StoragePool's phase from its agent's heartbeat Lease and what the agent reported.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use projstore_api::{PoolPhase, StoragePool};

use crate::view::{condition, is_true};

/// Name of the Lease an agent renews: `projstore-agent-<node>`.
pub fn lease_name(node: &str) -> String {
    format!("projstore-agent-{node}")
}

/// Phase and `Ready` condition of `pool`, given the Lease's last renewal.
pub fn pool_phase(
    pool: &StoragePool,
    renewed: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    timeout: chrono::Duration,
) -> (PoolPhase, Condition) {
    let status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let prev = &status.conditions;
    let health = status.health.clone().unwrap_or_default();
    let (phase, ok, reason, message) = match renewed {
        None => (
            PoolPhase::NotReady,
            false,
            "NoHeartbeat",
            format!(
                "no Lease {} from the agent of node {}",
                lease_name(&pool.spec.node_name),
                pool.spec.node_name
            ),
        ),
        Some(t) if now - t > timeout => (
            PoolPhase::NotReady,
            false,
            "HeartbeatStale",
            format!(
                "the agent of node {} last renewed its Lease {}s ago (limit {}s)",
                pool.spec.node_name,
                (now - t).num_seconds(),
                timeout.num_seconds()
            ),
        ),
        Some(_)
            if prev
                .iter()
                .any(|c| c.type_ == "SanityChecksPassed" && c.status != "True") =>
        {
            let why = prev
                .iter()
                .find(|c| c.type_ == "SanityChecksPassed")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            (PoolPhase::NotReady, false, "SanityChecksFailed", why)
        }
        Some(_)
            if matches!(
                health.as_str(),
                "FAULTED" | "UNAVAIL" | "SUSPENDED" | "REMOVED"
            ) =>
        {
            (
                PoolPhase::NotReady,
                false,
                "PoolFaulted",
                format!("ZFS reports the pool {health}"),
            )
        }
        Some(_) if health == "DEGRADED" => (
            PoolPhase::Degraded,
            true,
            "PoolDegraded",
            "ZFS reports the pool DEGRADED: replace the failed device".into(),
        ),
        Some(_) if !is_true(prev, "SanityChecksPassed") => (
            PoolPhase::Pending,
            false,
            "AwaitingAgent",
            "the agent has not reported its checks yet".into(),
        ),
        Some(_) => (
            PoolPhase::Ready,
            true,
            "AgentHeartbeat",
            "the agent is alive and its checks pass".into(),
        ),
    };
    (
        phase,
        condition(prev, "Ready", ok, reason, message, now, generation),
    )
}

//! Keeping this host's StoragePools: create or import, grow, properties with capability
//! fallback, the standard filesystems, and the status the controller reads. Never destroys
//! or shrinks a pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use projstore_api::{AgentStatus, Capabilities, StoragePool};

use crate::layout::{PoolLayout, ensure_layout};
use crate::sanity::Check;
use crate::zfs::{Imported, PoolName, PropertyName, Vdev, Zfs, ZfsError};

/// What keeping a pool found, for its status.
#[derive(Debug, Clone, Default)]
pub struct PoolReport {
    pub problems: Vec<String>,
    pub properties_in_effect: BTreeMap<String, String>,
}

fn prop(name: &str) -> Result<PropertyName, ZfsError> {
    PropertyName::parse(name).map_err(ZfsError::invalid_name("pool property"))
}

/// Brings the pool of `sp` to its spec: import (searching the vdevs' directories) or create,
/// add new vdevs, set properties, create the layout with `<streams_root>/<pool>` mounted.
#[tracing::instrument(skip_all, fields(pool = %sp.name_any()))]
pub async fn keep(
    zfs: &Zfs,
    sp: &StoragePool,
    streams_root: &Path,
) -> Result<PoolReport, ZfsError> {
    let name = PoolName::parse(&sp.spec.pool_name).map_err(ZfsError::invalid_name("poolName"))?;
    let mut report = PoolReport::default();
    let vdevs: Vec<Vdev> = sp
        .spec
        .vdevs
        .iter()
        .map(|v| Vdev::new(&v.path, v.size_bytes))
        .collect::<Result<_, _>>()
        .map_err(ZfsError::invalid_name("vdev"))?;
    if zfs.pool_info(&name).await.is_err() {
        let dirs: Vec<PathBuf> = {
            let mut d: Vec<PathBuf> = vdevs
                .iter()
                .filter_map(|v| v.path().parent().map(Path::to_path_buf))
                .collect();
            d.sort();
            d.dedup();
            d
        };
        match zfs.pool_import(&name, &dirs, sp.spec.force_import).await {
            Ok(Imported::Now | Imported::Already) => tracing::info!(pool = %name, "imported"),
            Err(ZfsError::PoolUnavailable { stderr, .. }) if stderr.contains("no such pool") => {
                // Nothing to import: a new pool on the listed vdevs (never forced).
                zfs.pool_create(&name, &vdevs, &[]).await?;
                tracing::info!(pool = %name, "created");
            }
            Err(e) => return Err(e),
        }
    }
    let present = zfs.pool_vdevs(&name).await?;
    for v in &vdevs {
        if !present.iter().any(|p| Path::new(p) == v.path()) {
            zfs.pool_add(&name, v).await?;
            tracing::info!(pool = %name, vdev = %v.path().display(), "grown");
        }
    }
    let listed: Vec<&str> = sp.spec.vdevs.iter().map(|v| v.path.as_str()).collect();
    let removed: Vec<&String> = present
        .iter()
        .filter(|p| p.starts_with('/') && !listed.contains(&p.as_str()))
        .collect();
    if !removed.is_empty() {
        report.problems.push(format!("vdevs {removed:?} are in the pool but not in spec.vdevs: pools never shrink; put them back in the spec"));
    }
    let root = name.root();
    let (compression, fell_back) = zfs
        .capabilities()
        .compression_for(&sp.spec.properties.compression);
    zfs.set(&root, &prop("compression")?, &compression).await?;
    if fell_back {
        report
            .properties_in_effect
            .insert("compression".into(), compression);
    }
    zfs.set(
        &root,
        &prop("atime")?,
        if sp.spec.properties.atime {
            "on"
        } else {
            "off"
        },
    )
    .await?;
    if let Some(rs) = &sp.spec.properties.recordsize {
        zfs.set(&root, &prop("recordsize")?, rs).await?;
    }
    if let Some(lb) = &sp.spec.properties.logbias {
        let v = serde_json::to_value(lb)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        zfs.set(&root, &prop("logbias")?, &v).await?;
    }
    ensure_layout(
        zfs,
        &PoolLayout::new(name.clone()),
        &streams_root.join(name.as_str()),
    )
    .await?;
    Ok(report)
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    prev: &[Condition],
) -> Condition {
    projstore_api::units::condition(prev, type_, ok, reason, message, jiff_now(), None)
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// `MountsServed`: whether other hosts can mount folders of this host's projects, and if not
/// why (a consumer's sshfs only sees its connection reset). None while no sftp server is
/// configured or started yet.
pub(crate) fn mounts_condition(
    sftp: Option<&SftpAdvert>,
    failure: Option<&str>,
    prev: &[Condition],
) -> Option<Condition> {
    match (failure, sftp) {
        (Some(why), _) => Some(condition(
            "MountsServed",
            false,
            "SftpFailed",
            format!("other hosts cannot mount folders of this host's projects: {why}"),
            prev,
        )),
        (None, Some(a)) => Some(condition(
            "MountsServed",
            true,
            "SftpServing",
            format!(
                "the sftp server for folder mounts listens on {}",
                a.endpoint
            ),
            prev,
        )),
        (None, None) => None,
    }
}

/// Why the host of pool `name` serves no folder mounts, as its `MountsServed` condition says.
pub fn mounts_refusal(pools: &[std::sync::Arc<StoragePool>], name: &str) -> Option<String> {
    pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "MountsServed" && c.status == "False")
        .map(|c| c.message.clone())
}

/// This host's sftp server as the pools' status tells it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SftpReport<'a> {
    /// Where this host's sshd listens and its keys, once it ran.
    pub advert: Option<&'a SftpAdvert>,
    /// Why the sshd could not start, when it could not.
    pub failure: Option<&'a str>,
}

/// What this host publishes about its sftp server: where it listens, its host key, and the
/// client key it logs in to peers with (public halves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpAdvert {
    pub endpoint: String,
    pub host_key: String,
    pub client_key: String,
}

/// The status fields the agent owns, as a merge patch (the controller owns `phase` and the
/// `Ready` condition, which are kept).
pub async fn status_patch(
    zfs: Option<&Zfs>,
    sp: &StoragePool,
    checks: &[Check],
    report: Result<&PoolReport, String>,
    stream_endpoint: &str,
    sftp: SftpReport<'_>,
    projects: u32,
) -> serde_json::Value {
    let prev = sp.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> = prev
        .conditions
        .iter()
        .filter(|c| c.type_ == "Ready")
        .cloned()
        .collect();
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let mut problems = failed.clone();
    match &report {
        Ok(r) => problems.extend(r.problems.iter().cloned()),
        Err(e) => problems.push(e.clone()),
    }
    conditions.push(condition(
        "SanityChecksPassed",
        failed.is_empty() && report.is_ok(),
        if failed.is_empty() && report.is_ok() {
            "ChecksPassed"
        } else {
            "ChecksFailed"
        },
        if problems.is_empty() {
            "zfs works, the pool is imported, its filesystems are mounted".into()
        } else {
            problems.join("; ")
        },
        &prev.conditions,
    ));
    conditions.extend(mounts_condition(
        sftp.advert,
        sftp.failure,
        &prev.conditions,
    ));
    let sftp = sftp.advert;
    let mut status = serde_json::json!({
        "conditions": conditions,
        "agent": AgentStatus {
            heartbeat_time: Some(Time(jiff_now())),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            stream_endpoint: Some(stream_endpoint.into()),
            sftp_endpoint: sftp.map(|s| s.endpoint.clone()),
            sftp_host_key: sftp.map(|s| s.host_key.clone()),
            sftp_client_key: sftp.map(|s| s.client_key.clone()),
        },
        "projects": projects,
    });
    if let Some(zfs) = zfs {
        if let Ok(name) = PoolName::parse(&sp.spec.pool_name)
            && let Ok(cap) = zfs.capacity(&name).await
        {
            let free = cap.available;
            let size = cap.available + cap.used;
            status["health"] = serde_json::json!(cap.health);
            status["sizeBytes"] = serde_json::json!(size);
            status["allocatedBytes"] = serde_json::json!(cap.used);
            status["freeBytes"] = serde_json::json!(free);
            status["size"] = serde_json::json!(projstore_api::units::human_bytes(size));
            status["free"] = serde_json::json!(projstore_api::units::human_bytes(free));
        }
        let c = zfs.capabilities();
        status["capabilities"] = serde_json::to_value(Capabilities {
            implementation: c.implementation.as_str().into(),
            version: c.version.clone(),
            features: c.feature_names(),
        })
        .unwrap_or_default();
    }
    if let Ok(r) = report {
        status["propertiesInEffect"] =
            serde_json::to_value(&r.properties_in_effect).unwrap_or_default();
    }
    serde_json::json!({"metadata": {"resourceVersion": sp.resource_version()}, "status": status})
}

#[cfg(test)]
mod mounts_condition_tests {
    use super::*;

    #[test]
    fn a_host_whose_sftp_server_cannot_start_says_why_in_mounts_served() {
        let why = "/tmp must be owned by root and not writable by group or others to serve as the sftp chroot (owner 0, mode 1777)";
        let c = mounts_condition(None, Some(why), &[]).unwrap();
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("MountsServed", "False", "SftpFailed")
        );
        assert!(c.message.contains(why), "{}", c.message);
        let advert = SftpAdvert {
            endpoint: "127.0.0.2:7422".into(),
            host_key: String::new(),
            client_key: String::new(),
        };
        let ok = mounts_condition(Some(&advert), None, std::slice::from_ref(&c)).unwrap();
        assert_eq!(
            (ok.status.as_str(), ok.reason.as_str()),
            ("True", "SftpServing")
        );
        assert!(ok.message.contains("127.0.0.2:7422"));
        assert!(
            mounts_condition(None, None, &[]).is_none(),
            "no sftp server configured"
        );
    }
}

//! Taking a project out of service and back: close and open; delete into the trash,
//! restore by re-creating it, purge after retention.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::fixtures::{NS, random_bytes, sized, spec};
use common::hosts::{datasets_below, run};
use projstore_api::ProjectPhase;
use serde_json::json;

/// Scenario 10: close → verified → open, with identical contents.
#[tokio::test]
async fn s10_a_closed_project_opens_with_identical_contents() {
    let Some(c) = Cluster::up("s10-close-open").await else {
        return;
    };
    c.create_project(NS, "arch", spec()).await;
    let first = c
        .in_sync(NS, "arch", 3, None, Duration::from_secs(60))
        .await;
    let mount = c.mount_path(NS, "arch").await;
    // Two snapshots replicated: the primary's pass that takes the second holds the first for
    // its copies. A close must release such holds, or it could never destroy the dataset.
    std::fs::write(mount.join("one"), b"1").unwrap();
    c.snapshot_now(NS, "arch").await;
    let second = c
        .in_sync(NS, "arch", 3, Some(&first), Duration::from_secs(60))
        .await;
    std::fs::write(mount.join("two"), b"2").unwrap();
    c.snapshot_now(NS, "arch").await;
    c.in_sync(NS, "arch", 3, Some(&second), Duration::from_secs(60))
        .await;
    if c.hosts_reachable("holds on the primary (zfs on the host)") {
        let primary = c.primary(NS, "arch").await;
        let ds = format!(
            "{}/projects/{NS}/arch",
            c.host_of_pool(&primary.spec.pool).pool
        );
        let holds = run(
            "zfs",
            &[
                "list",
                "-H",
                "-t",
                "snapshot",
                "-o",
                "projstore.io:holds",
                "-r",
                &ds,
            ],
        );
        assert!(
            holds.contains("projstore-copy-"),
            "no snapshot of {ds} is held for its copies: {holds}"
        );
    }
    let data = random_bytes(300_000, 3);
    std::fs::write(mount.join("data"), &data).unwrap();
    // Written after the last snapshot: the close's final snapshot must carry it.
    let t = Instant::now();
    c.patch_project(NS, "arch", json!({"spec": {"state": "Closed"}}))
        .await;
    c.wait("Closed", Duration::from_secs(120), || async {
        let st = c.project_status(NS, "arch").await?;
        if st.phase == Some(ProjectPhase::Closed) {
            Ok(())
        } else {
            Err(format!("{:?}", st.phase))
        }
    })
    .await;
    c.timing("close", t.elapsed());
    for h in &c.hosts {
        let live = std::process::Command::new("zfs")
            .args(["list", "-H", &format!("{}/projects/{NS}/arch", h.pool)])
            .output()
            .unwrap();
        assert!(
            !live.status.success(),
            "a live dataset is left on {}",
            h.pool
        );
        // The verified stream stays on every copy (DESIGN §5.6).
        let stored = c.streams_dir(h).join(NS).join("arch");
        let zstreams: Vec<_> = std::fs::read_dir(&stored)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            zstreams
                .iter()
                .any(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "zstream")),
            "no stream of the closed project on {}",
            h.pool
        );
    }
    let t = Instant::now();
    c.patch_project(NS, "arch", json!({"spec": {"state": "Open"}}))
        .await;
    let mount = c.mount_path_when_ready(NS, "arch").await;
    c.timing("open", t.elapsed());
    assert_eq!(
        std::fs::read(mount.join("data")).unwrap(),
        data,
        "identical contents"
    );
    // Open again, it keeps no stream files once every copy holds their snapshot (the next
    // snapshot's passes remove them).
    c.in_sync(NS, "arch", 3, None, Duration::from_secs(90))
        .await;
    std::fs::write(mount.join("after"), b"opened").unwrap();
    c.snapshot_now(NS, "arch").await;
    c.wait(
        "no stream files of the open project",
        Duration::from_secs(90),
        || async {
            let left: Vec<_> = c
                .hosts
                .iter()
                .flat_map(|h| {
                    std::fs::read_dir(c.streams_dir(h).join(NS).join("arch"))
                        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
}

/// Scenario 11: delete → trash → re-create → restored; purge after retention.
#[tokio::test]
async fn s11_a_deleted_project_is_trashed_restored_and_purged() {
    let Some(c) = Cluster::up("s11-trash").await else {
        return;
    };
    c.create_project(NS, "tr", sized("100Mi", 2)).await;
    c.in_sync(NS, "tr", 2, None, Duration::from_secs(60)).await;
    let mount = c.mount_path(NS, "tr").await;
    std::fs::write(mount.join("keep.txt"), b"undelete me").unwrap();
    c.snapshot_now(NS, "tr").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    c.projects(NS)
        .delete("tr", &Default::default())
        .await
        .unwrap();
    c.wait(
        "deleted into the trash",
        Duration::from_secs(60),
        || async {
            match c
                .projects(NS)
                .get_opt("tr")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(_) => Err("still there".into()),
            }
        },
    )
    .await;
    c.timing("delete", t.elapsed());
    let trash_visible = c.hosts_reachable("the check of the hosts' trash with zfs");
    let trashed: Vec<String> = c.hosts.iter().map(|h| datasets_below(h, "trash")).collect();
    assert!(
        !trash_visible
            || trashed
                .iter()
                .any(|t| t.contains(&format!("/trash/{NS}/tr-"))),
        "{trashed:?}"
    );
    let t = Instant::now();
    c.create_project(NS, "tr", sized("100Mi", 2)).await;
    let mount = c
        .wait("restored", Duration::from_secs(60), || async {
            let st = c.project_status(NS, "tr").await?;
            match (
                st.restored_from,
                st.phase,
                st.primary.and_then(|p| p.mount_path),
            ) {
                (Some(_), Some(ProjectPhase::Ready), Some(m)) => Ok(std::path::PathBuf::from(m)),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    c.timing("re-create → restored", t.elapsed());
    assert_eq!(
        std::fs::read(mount.join("keep.txt")).unwrap(),
        b"undelete me"
    );
    // Purge: retainDays 0 → the trash is emptied by the agents.
    if !c.hosts_reachable("the purge, seen on the hosts' disks") {
        return;
    }
    c.patch_project(NS, "tr", json!({"spec": {"deletion": {"retainDays": 0}}}))
        .await;
    c.projects(NS)
        .delete("tr", &Default::default())
        .await
        .unwrap();
    let t = Instant::now();
    c.wait("purged", Duration::from_secs(90), || async {
        let left: Vec<String> = c
            .hosts
            .iter()
            .map(|h| datasets_below(h, "trash"))
            .filter(|t| t.contains(&format!("/trash/{NS}/tr-")))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    c.timing("delete with retainDays 0 → purged", t.elapsed());
    for h in &c.hosts {
        let trash = c.streams_dir(h).join(".trash").join(NS);
        let left: Vec<_> = std::fs::read_dir(&trash)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "trashed streams left on {}: {left:?}",
            h.node
        );
    }
}

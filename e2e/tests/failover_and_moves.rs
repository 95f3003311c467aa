//! A project changing hosts: failover when the primary's host is lost (and what happens to
//! its writes when it returns), planned moves under controller restarts, and a mount that
//! follows its moved source.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Cluster;
use common::fixtures::{NS, sized, spec};
use common::hosts::run;
use kube::ResourceExt;
use projstore_api::ProjectPhase;
use serde_json::json;

/// Scenarios 7 and 8: the primary's host is lost → failover within the grace period plus
/// 15 s, the new primary holds the last replicated snapshot byte for byte; the old primary
/// returns → demoted, its extra writes preserved under forks/ and named by `Diverged`.
#[tokio::test]
async fn s07_s08_a_lost_primary_fails_over_and_its_diverged_writes_are_kept() {
    let Some(c) = Cluster::up("s07-failover").await else {
        return;
    };
    if !c.hosts_reachable("killing an agent") {
        return;
    }
    c.create_project(NS, "beta", spec()).await;
    let first = c
        .in_sync(NS, "beta", 3, None, Duration::from_secs(60))
        .await;
    let mount = c.mount_path(NS, "beta").await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(mount.join("data.bin"), &payload).unwrap();
    c.snapshot_now(NS, "beta").await;
    let replicated = c
        .in_sync(NS, "beta", 3, Some(&first), Duration::from_secs(60))
        .await;
    let old = c.primary(NS, "beta").await;
    let old_host = c.host_of_pool(&old.spec.pool).clone();
    let killed = Instant::now();
    c.kill(&format!("agent-{}", old_host.node), true);
    // The dataset is still mounted on the lost host: writes land there and nowhere else.
    std::fs::write(
        mount.join("late.txt"),
        b"written after the host was cut off",
    )
    .unwrap();
    let new = c
        .wait(
            "failover to another pool",
            Duration::from_secs(150),
            || async {
                let p = c.primary(NS, "beta").await;
                if p.spec.pool != old.spec.pool && p.spec.epoch > old.spec.epoch {
                    Ok(p)
                } else {
                    Err(format!("primary still {}", p.spec.pool))
                }
            },
        )
        .await;
    let pool = c.pools().get(&old.spec.pool).await.unwrap();
    let not_ready_at = pool
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.last_transition_time.0)
        .unwrap();
    let failed_over_after =
        (k8s_openapi::jiff::Timestamp::now() - not_ready_at).get_seconds() as u64;
    println!(
        "[s07] killed → failover {:.1}s; pool NotReady → failover ≤ {failed_over_after}s (grace 30 s)",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        failed_over_after <= 30 + 15,
        "failover took {failed_over_after}s after NotReady"
    );
    // (Its newest may be newer: a scheduled snapshot falls due when the failover outlasts the
    // snapshot interval, of the same data.)
    let new_ds = format!("{}/projects/{NS}/beta", c.host_of_pool(&new.spec.pool).pool);
    let held = run("zfs", &["get", "-Hp", "-r", "-o", "value", "guid", &new_ds]);
    assert!(
        held.lines().any(|g| g.trim() == replicated),
        "the new primary holds the last replicated snapshot {replicated}: {held}"
    );
    let new_mount = c
        .wait("new primary mounted", Duration::from_secs(60), || async {
            let m = c.mount_path(NS, "beta").await;
            let h = c.host_of_pool(&new.spec.pool);
            if m.starts_with(c.dir.join("hosts").join(&h.node)) && m.join("data.bin").exists() {
                Ok(m)
            } else {
                Err(format!("mount path {}", m.display()))
            }
        })
        .await;
    assert_eq!(
        std::fs::read(new_mount.join("data.bin")).unwrap(),
        payload,
        "byte for byte"
    );
    assert!(
        !new_mount.join("late.txt").exists(),
        "unreplicated writes do not appear"
    );

    // The old primary returns.
    let back = Instant::now();
    c.release(&format!("agent-{}", old_host.node));
    let msg = c
        .wait_condition(
            "old primary demoted, fork named by Diverged",
            (NS, "beta"),
            "Diverged",
            Duration::from_secs(90),
        )
        .await;
    c.timing("return → Diverged", back.elapsed());
    let fork = format!("{}/forks/{NS}/beta-e{}", old_host.pool, old.spec.epoch);
    assert!(msg.contains(&fork), "{msg}");
    // The fork holds the late write: mount it read-only somewhere and look.
    let look = c.dir.join("fork-look");
    run(
        "zfs",
        &["set", &format!("mountpoint={}", look.display()), &fork],
    );
    if run("zfs", &["get", "-H", "-o", "value", "mounted", &fork]).trim() != "yes" {
        run("zfs", &["mount", &fork]);
    }
    let late = std::fs::read(look.join("late.txt"));
    let _ = run("zfs", &["unmount", &fork]);
    assert_eq!(late.unwrap(), b"written after the host was cut off");
    // Every copy syncs again, only one is mounted read-write.
    c.in_sync(NS, "beta", 3, None, Duration::from_secs(90))
        .await;
    let old_ds = format!("{}/projects/{NS}/beta", old_host.pool);
    let props = run(
        "zfs",
        &["get", "-H", "-o", "value", "mounted,readonly", &old_ds],
    );
    assert_eq!(
        props.split_whitespace().collect::<Vec<_>>(),
        ["no", "on"],
        "the old primary is a read-only, unmounted copy"
    );
}

/// Scenario 9 (moves; the mount following it is asserted once mounts exist) and scenario 15:
/// the controller killed at every step of a move still completes it.
#[tokio::test]
async fn s09_s15_a_move_completes_although_the_controller_dies_after_every_step() {
    let Some(c) = Cluster::up("s09-move").await else {
        return;
    };
    c.create_project(NS, "gamma", sized("100Mi", 2)).await;
    c.in_sync(NS, "gamma", 2, None, Duration::from_secs(60))
        .await;
    let mount = c.mount_path(NS, "gamma").await;
    std::fs::write(mount.join("moved.txt"), b"follows the project").unwrap();
    // History before the move: the copy that stays keeps it, though the new primary starts
    // from the newest snapshot alone.
    let mut before = String::new();
    for i in 0..2 {
        std::fs::write(mount.join(format!("h{i}")), [i as u8; 1000]).unwrap();
        c.snapshot_now(NS, "gamma").await;
        before = c
            .in_sync(NS, "gamma", 2, Some(&before), Duration::from_secs(60))
            .await;
    }
    let ds_on = |pool: &str| format!("{}/projects/{NS}/gamma", c.host_of_pool(pool).pool);
    let snapshots = |ds: &str| {
        run(
            "zfs",
            &["list", "-H", "-o", "name", "-t", "snapshot", "-r", ds],
        )
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let mut history = std::collections::BTreeMap::new();
    if c.hosts_reachable("the copies' history (zfs on the host)") {
        for r in c.replicas(NS, "gamma").await {
            history.insert(r.spec.pool.clone(), snapshots(&ds_on(&r.spec.pool)));
        }
    }
    let srs = c.replicas(NS, "gamma").await;
    let used: Vec<String> = srs.iter().map(|r| r.spec.pool.clone()).collect();
    let target = c
        .pools()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.name_any())
        .find(|p| !used.contains(p))
        .unwrap();
    let t = Instant::now();
    c.patch_project(
        NS,
        "gamma",
        json!({"spec": {"placement": {"pool": target}}}),
    )
    .await;
    let restarts = c.is_dev();
    // Scenario 15: the controller dies after every step of the move it is seen to take (a
    // change of the replicas' specs or the project's phase); the next one must carry on.
    // Killing it on every poll instead left a new leader well under a second per lease
    // period on a loaded machine, too little to take any step.
    let seen = std::sync::Mutex::new((String::new(), 0u32));
    let moved = c
        .wait(
            "move to the pinned pool",
            Duration::from_secs(120),
            || async {
                let st = c.project_status(NS, "gamma").await?;
                if restarts {
                    let mut step: Vec<_> = c
                        .replicas(NS, "gamma")
                        .await
                        .into_iter()
                        .map(|r| (r.name_any(), serde_json::to_string(&r.spec).unwrap()))
                        .collect();
                    step.sort();
                    let step = format!("{step:?} {:?}", st.phase);
                    let mut seen = seen.lock().unwrap();
                    if seen.0 != step {
                        *seen = (step, seen.1 + 1);
                        c.kill("controller", false);
                    }
                }
                let p = c.primary(NS, "gamma").await;
                if p.spec.pool == target && st.phase == Some(ProjectPhase::Ready) {
                    Ok(p)
                } else {
                    Err(format!("primary {} phase {:?}", p.spec.pool, st.phase))
                }
            },
        )
        .await;
    c.timing("move", t.elapsed());
    if restarts {
        println!(
            "[s09-move] controller killed {} times, after each step of the move",
            seen.lock().unwrap().1
        );
    }
    assert_eq!(moved.spec.pool, target);
    let m = c
        .wait(
            "mounted on the new pool",
            Duration::from_secs(60),
            || async {
                let m = c.mount_path(NS, "gamma").await;
                if m.join("moved.txt").exists() {
                    Ok(m)
                } else {
                    Err(m.display().to_string())
                }
            },
        )
        .await;
    assert_eq!(
        std::fs::read(m.join("moved.txt")).unwrap(),
        b"follows the project"
    );
    // A snapshot on the new primary reaches the copy that stayed, which still holds all of
    // its history.
    let moved_once = c
        .in_sync(NS, "gamma", 2, None, Duration::from_secs(60))
        .await;
    std::fs::write(m.join("after.txt"), b"after the move").unwrap();
    c.snapshot_now(NS, "gamma").await;
    c.in_sync(NS, "gamma", 2, Some(&moved_once), Duration::from_secs(60))
        .await;
    if !history.is_empty() {
        let stayed = c.secondary(NS, "gamma").await.spec.pool;
        let had = history
            .get(&stayed)
            .expect("the copy that stayed is one of the old two");
        let now = snapshots(&ds_on(&stayed));
        let lost: Vec<_> = had.iter().filter(|s| !now.contains(s)).collect();
        assert!(
            lost.is_empty(),
            "history lost on {stayed}: {lost:?} (it holds {now:?})"
        );
    }
    // Nothing diverged in a planned move.
    let st = c.projects(NS).get("gamma").await.unwrap().status.unwrap();
    assert!(
        !st.conditions
            .iter()
            .any(|c| c.type_ == "Diverged" && c.status == "True"),
        "{:?}",
        st.conditions
    );
    let _ = Path::new("");
}

/// Scenario 9, mounts: a folder of one project mounted in another on a different host
/// (sshfs from the source's sftp-only sshd, then bindfs); files created through it belong to
/// the source's owner; the source moves and the mount follows it.
#[tokio::test]
async fn s09_a_mount_follows_its_moved_source() {
    let Some(c) = Cluster::up_with_hosts("s09-mount").await else {
        return;
    };
    c.create_project(
        NS,
        "src",
        json!({"quota": "100Mi", "owner": {"uid": 2001, "gid": 2001}, "copies": 1}),
    )
    .await;
    c.in_sync(NS, "src", 1, None, Duration::from_secs(60)).await;
    let src_pool = c.primary(NS, "src").await.spec.pool;
    let src_mount = c.mount_path(NS, "src").await;
    std::fs::create_dir(src_mount.join("shared")).unwrap();
    std::os::unix::fs::chown(src_mount.join("shared"), Some(2001), Some(2001)).unwrap();
    std::fs::write(src_mount.join("shared/readme"), b"from src").unwrap();
    let pools: Vec<String> = c
        .hosts
        .iter()
        .map(|h| format!("{}-storage", h.node))
        .collect();
    let others: Vec<&String> = pools.iter().filter(|p| **p != src_pool).collect();
    c.create_project(
        NS,
        "dst",
        json!({"quota": "100Mi", "owner": {"uid": 3001, "gid": 3001}, "copies": 1,
               "placement": {"pool": others[0]},
               "mounts": [{"project": "src", "path": "shared", "mountPath": "from-src"}]}),
    )
    .await;
    let t = Instant::now();
    let dst_mount = c.mount_path_when_ready(NS, "dst").await;
    let target = dst_mount.join("from-src");
    c.wait(
        "mounted from the other host",
        Duration::from_secs(60),
        || async {
            let st = c.project_status(NS, "dst").await?;
            match st.mounts.first() {
                Some(m) if m.phase == "Mounted" && target.join("readme").exists() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    c.timing("create → mounted", t.elapsed());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::read(target.join("readme")).unwrap(), b"from src");
    assert_eq!(
        std::fs::metadata(target.join("readme")).unwrap().uid(),
        3001,
        "shown as the consumer's owner"
    );
    std::fs::write(target.join("answer"), b"from dst").unwrap();
    let made = std::fs::metadata(src_mount.join("shared/answer")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (2001, 2001),
        "created for the source's owner"
    );

    // The source moves to the third pool: the mount follows.
    let third = pools
        .iter()
        .find(|p| **p != src_pool && *p != others[0])
        .unwrap()
        .clone();
    let t = Instant::now();
    c.patch_project(NS, "src", json!({"spec": {"placement": {"pool": third}}}))
        .await;
    c.wait(
        "mount follows the moved source",
        Duration::from_secs(120),
        || async {
            let p = c.primary(NS, "src").await;
            let st = c.project_status(NS, "dst").await?;
            let m = st.mounts.first().cloned().unwrap_or_default();
            let host = &c.host_of_pool(&third).addr;
            let table = std::fs::read_to_string("/proc/self/mounts").unwrap();
            let follows = table
                .lines()
                .any(|l| l.starts_with(&format!("root@{host}:/{NS}/src/shared ")));
            if p.spec.pool == third
                && m.phase == "Mounted"
                && follows
                && target.join("answer").exists()
            {
                Ok(())
            } else {
                Err(format!(
                    "source on {}, mount {m:?}, follows {follows}",
                    p.spec.pool
                ))
            }
        },
    )
    .await;
    c.timing("source move → remounted", t.elapsed());
    assert_eq!(std::fs::read(target.join("answer")).unwrap(), b"from dst");
}

//! Snapshots and their replication: schedule, retention and the space guard; compaction of
//! tiny increments; a secondary catching up; agents killed mid-transfer; corrupted streams.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::fixtures::{NS, random_bytes, sized, spec};
use common::hosts::{datasets_below, run};
use common::streams::{catch_in_flight, catch_receive, files_ending, store_dir};
use kube::ResourceExt;
use serde_json::json;

/// Scenario 3: snapshots on schedule, retention, and `SnapshotsBlocked` with an Event when
/// snapshot space exceeds the ratio.
#[tokio::test]
async fn s03_snapshots_follow_schedule_and_retention_and_stop_when_they_hold_too_much_space() {
    let Some(c) = Cluster::up("s03-snapshots").await else {
        return;
    };
    c.create_project(
        NS,
        "guard",
        json!({"quota": "10Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
        "snapshots": {"maxSpaceRatio": 1}}),
    )
    .await;
    c.create_project(NS, "sched", json!({"quota": "10Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
        "snapshots": {"intervalMinutes": 1, "keep": {"frequent": 2, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0}}})).await;
    // Retention: many snapshots on demand, few kept.
    let sched = c.mount_path_when_ready(NS, "sched").await;
    for i in 0..5u8 {
        std::fs::write(sched.join(format!("f{i}")), [i; 1000]).unwrap();
        c.snapshot_now(NS, "sched").await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let count = c
        .wait(
            "retention keeps frequent=2 (plus the chain's base)",
            Duration::from_secs(60),
            || async {
                let st = c.primary(NS, "sched").await.status.unwrap_or_default();
                match st.snapshot_count {
                    Some(n) if (1..=3).contains(&n) => Ok(n),
                    other => Err(format!("snapshotCount {other:?}")),
                }
            },
        )
        .await;
    println!("[s03] after 5+ snapshots, {count} kept");
    // The space guard: data only snapshots hold grows past 1x the quota. Managed snapshots of
    // one period replace each other, so the user's own snapshots (never pruned) hold it here.
    if !c.hosts_reachable("the space guard part (user snapshots taken with zfs on the host)") {
        return;
    }
    let guard = c.mount_path_when_ready(NS, "guard").await;
    let primary = c.primary(NS, "guard").await;
    let ds = format!(
        "{}/projects/{NS}/guard",
        c.host_of_pool(&primary.spec.pool).pool
    );
    for i in 0..2u64 {
        std::fs::write(guard.join("blob"), random_bytes(6 << 20, i + 1)).unwrap();
        run("zfs", &["snapshot", &format!("{ds}@mine-{i}")]);
        std::fs::remove_file(guard.join("blob")).unwrap();
    }
    c.snapshot_now(NS, "guard").await;
    let msg = c
        .wait_condition(
            "SnapshotsBlocked",
            (NS, "guard"),
            "SnapshotsBlocked",
            Duration::from_secs(60),
        )
        .await;
    println!("[s03] {msg}");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(c.client.clone(), NS);
    c.wait(
        "a SnapshotsBlocked Event",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("SnapshotsBlocked")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("guard")
                })
                .map(|_| ())
                .ok_or_else(|| "no event yet".into())
        },
    )
    .await;
    // On schedule: a snapshot appears without being asked for (interval 1 minute) once
    // something was written since the last one.
    std::fs::write(sched.join("later"), b"written after the last snapshot").unwrap();
    let before = c.primary_snapshot(NS, "sched").await;
    c.wait_primary_snapshot_other_than(
        "a scheduled snapshot",
        (NS, "sched"),
        before.as_deref(),
        Duration::from_secs(100),
    )
    .await;
}

/// Compaction (DESIGN §5.3): a chain ending in many tiny increments gets one larger
/// incremental, and the tiny ones are collected.
#[tokio::test]
async fn s03b_tiny_increments_are_compacted_into_one() {
    let Some(c) = Cluster::up_with_hosts("s03b-compaction").await else {
        return;
    };
    c.create_project(NS, "cmp", sized("10Mi", 1)).await;
    let mount = c.mount_path_when_ready(NS, "cmp").await;
    let primary = c.primary(NS, "cmp").await;
    let ds = format!(
        "{}/projects/{NS}/cmp",
        c.host_of_pool(&primary.spec.pool).pool
    );
    let store = store_dir(&c, &primary.spec.pool, "cmp");
    let srs = c.replicas_api(NS);
    for i in 0..9 {
        std::fs::write(mount.join(format!("f{i}")), [i as u8; 100]).unwrap();
        // The user's own snapshots: never pruned, so every one stays a possible base.
        run("zfs", &["snapshot", &format!("{ds}@u{i}")]);
        // Wake the agent (it reacts to changes of its replicas).
        srs.patch(
            &primary.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"test.projstore.io/poke": i.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        c.wait(
            &format!("stream to u{i}"),
            Duration::from_secs(30),
            || async {
                if files_ending(&store, &format!("--u{i}.json")).is_empty() {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            },
        )
        .await;
    }
    let merged = c
        .wait(
            "one larger incremental replaces the tiny ones",
            Duration::from_secs(60),
            || async {
                let incs: Vec<String> = files_ending(&store, ".json")
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect();
                // An incremental spanning several user snapshots (`X--uK`, X not uK-1).
                let big = incs.iter().find(|n| {
                    n.strip_suffix(".json")
                        .and_then(|id| id.split_once("--u"))
                        .and_then(|(from, k)| k.parse::<u32>().ok().map(|k| (from.to_owned(), k)))
                        .is_some_and(|(from, k)| {
                            k >= 2 && from != "full" && from != format!("u{}", k - 1)
                        })
                });
                match big {
                    Some(b) if incs.len() <= 4 => Ok(b.clone()),
                    _ => Err(format!("{incs:?}")),
                }
            },
        )
        .await;
    println!("[s03b] compacted into {merged}");
}

/// Scenario 4: a secondary's agent is down while snapshots are taken; after its restart it
/// catches up.
#[tokio::test]
async fn s04_a_secondary_whose_agent_was_down_catches_up() {
    let Some(c) = Cluster::up_with_hosts("s04-catch-up").await else {
        return;
    };
    c.create_project(NS, "delta", spec()).await;
    let first = c
        .in_sync(NS, "delta", 3, None, Duration::from_secs(60))
        .await;
    let sec = c.secondary(NS, "delta").await;
    let host = c.host_of_pool(&sec.spec.pool).node.clone();
    c.kill(&format!("agent-{host}"), true);
    let mount = c.mount_path(NS, "delta").await;
    for i in 0..3 {
        std::fs::write(mount.join(format!("f{i}")), vec![i as u8; 50_000]).unwrap();
        c.snapshot_now(NS, "delta").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let t = Instant::now();
    c.release(&format!("agent-{host}"));
    c.in_sync(NS, "delta", 3, Some(&first), Duration::from_secs(90))
        .await;
    c.timing("restart → caught up", t.elapsed());
}

/// Scenario 5: agents SIGKILLed mid-transfer (the primary while it writes a stream, the
/// secondary while it downloads and while `zfs recv` applies) resume after their restart;
/// nothing partial is ever applied.
#[tokio::test]
async fn s05_agents_killed_mid_transfer_resume_and_never_apply_a_partial_stream() {
    let Some(c) = Cluster::up_with_hosts("s05-sigkill").await else {
        return;
    };
    c.create_project(NS, "big", sized("1Gi", 2)).await;
    let first = c.in_sync(NS, "big", 2, None, Duration::from_secs(60)).await;
    let primary = c.primary(NS, "big").await;
    let secondary = c.secondary(NS, "big").await;
    let (p_agent, s_agent) = (
        format!("agent-{}", primary.spec.node),
        format!("agent-{}", secondary.spec.node),
    );
    let mount = c.mount_path(NS, "big").await;

    // The primary killed while it writes a stream.
    std::fs::write(mount.join("one"), random_bytes(160 << 20, 11)).unwrap();
    c.snapshot_now(NS, "big").await;
    let p_store = store_dir(&c, &primary.spec.pool, "big");
    c.check(
        catch_in_flight(&p_store, ".partial", Duration::from_secs(60)).await,
        "never saw the primary writing a stream",
    );
    c.kill(&p_agent, false);
    println!("[s05] primary agent killed during a stream write");
    let seen = c
        .wait(
            "the secondary reports transfer progress",
            Duration::from_secs(180),
            || async {
                let st = c
                    .replicas_api(NS)
                    .get(&secondary.name_any())
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .unwrap_or_default();
                match st.transfer {
                    Some(t) if t.bytes_total > 0 => Ok(t),
                    _ => Err("no transfer in status".into()),
                }
            },
        )
        .await;
    println!(
        "[s05] status.transfer: {} of {} bytes",
        seen.bytes_done, seen.bytes_total
    );
    let second = c
        .in_sync(NS, "big", 2, Some(&first), Duration::from_secs(180))
        .await;

    // The secondary killed while it downloads.
    c.kill(&s_agent, true);
    std::fs::write(mount.join("two"), random_bytes(160 << 20, 12)).unwrap();
    c.snapshot_now(NS, "big").await;
    c.wait(
        "the primary's new stream",
        Duration::from_secs(120),
        || async {
            let st = c.primary(NS, "big").await.status.unwrap_or_default();
            let g = st.applied_snapshot.map(|a| a.guid).unwrap_or_default();
            if g != second && files_ending(&p_store, ".partial").is_empty() {
                Ok(())
            } else {
                Err(format!("{g} {:?} {:?}", st.last_error, st.phase))
            }
        },
    )
    .await;
    c.release(&s_agent);
    let s_store = store_dir(&c, &secondary.spec.pool, "big");
    c.check(
        catch_in_flight(&s_store, ".download", Duration::from_secs(60)).await,
        "never saw the secondary downloading",
    );
    c.kill(&s_agent, false);
    println!("[s05] secondary agent killed during a download");
    let t = Instant::now();
    let third = c
        .in_sync(NS, "big", 2, Some(&second), Duration::from_secs(180))
        .await;
    c.timing("restart → transfer completed", t.elapsed());

    // The secondary killed while `zfs recv` applies a stream: the receive is cut off.
    std::fs::write(mount.join("three"), random_bytes(160 << 20, 13)).unwrap();
    c.snapshot_now(NS, "big").await;
    let target = format!(
        "{}/projects/{NS}/big",
        c.host_of_pool(&secondary.spec.pool).pool
    );
    c.check(
        catch_receive(&target, Duration::from_secs(120)).await,
        &format!("never saw the secondary receiving into {target}"),
    );
    c.kill(&s_agent, false);
    println!("[s05] secondary agent killed during zfs recv");
    let t = Instant::now();
    c.in_sync(NS, "big", 2, Some(&third), Duration::from_secs(180))
        .await;
    c.timing("restart → receive completed", t.elapsed());
    for dir in [&p_store, &s_store] {
        for suffix in [".partial", ".download"] {
            assert!(
                files_ending(dir, suffix).is_empty(),
                "{suffix} left in {}",
                dir.display()
            );
        }
    }
    for h in &c.hosts {
        let staged = datasets_below(h, "recv");
        // `recv` and its namespace folders may exist; a dataset below them is a receive.
        assert!(
            staged.lines().all(|l| l.matches('/').count() <= 2),
            "a partial receive is visible: {staged}"
        );
    }
    // The killed agents' sshd outlived them; the restarted agents stopped it and serve sftp.
    for agent in [&p_agent, &s_agent] {
        let log = std::fs::read_to_string(c.dir.join("logs").join(format!("{agent}.log"))).unwrap();
        let served = log.matches("sftp server started").count();
        assert!(
            served >= 2 && !log.contains("cannot start the sftp server"),
            "{agent} did not serve sftp again after its restart ({served} starts)"
        );
    }
}

/// Scenario 6: a stream corrupted on a secondary's disk is detected, fetched again, and
/// never applied.
#[tokio::test]
async fn s06_a_corrupted_stream_is_fetched_again_never_applied() {
    let Some(c) = Cluster::up_with_hosts("s06-corrupt").await else {
        return;
    };
    c.create_project(NS, "cor", sized("100Mi", 2)).await;
    let first = c.in_sync(NS, "cor", 2, None, Duration::from_secs(60)).await;
    let primary = c.primary(NS, "cor").await;
    let secondary = c.secondary(NS, "cor").await;
    let s_agent = format!("agent-{}", secondary.spec.node);
    c.kill(&s_agent, true);
    let mount = c.mount_path(NS, "cor").await;
    std::fs::write(mount.join("payload"), random_bytes(2 << 20, 5)).unwrap();
    c.snapshot_now(NS, "cor").await;
    let new = c
        .wait_primary_snapshot_other_than(
            "the primary's new stream",
            (NS, "cor"),
            Some(&first),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_default();
    // Plant the new stream in the secondary's store as if fetched, with one byte flipped.
    let p_store = store_dir(&c, &primary.spec.pool, "cor");
    let s_store = store_dir(&c, &secondary.spec.pool, "cor");
    let manifest = files_ending(&p_store, ".json")
        .into_iter()
        .find(|m| {
            std::fs::read_to_string(m)
                .unwrap()
                .contains(&format!("\"{new}\""))
        })
        .expect("the new stream's manifest");
    let stream = manifest.with_extension("zstream");
    let mut bytes = std::fs::read(&stream).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::create_dir_all(&s_store).unwrap();
    std::fs::write(s_store.join(stream.file_name().unwrap()), &bytes).unwrap();
    std::fs::copy(&manifest, s_store.join(manifest.file_name().unwrap())).unwrap();
    c.release(&s_agent);
    c.in_sync(NS, "cor", 2, Some(&first), Duration::from_secs(90))
        .await;
    let log = std::fs::read_to_string(c.dir.join("logs").join(format!("{s_agent}.log"))).unwrap();
    assert!(
        log.contains("stored stream is corrupt: fetching it again"),
        "the corruption was not noticed"
    );
    let good = std::fs::read(s_store.join(stream.file_name().unwrap())).unwrap();
    assert_eq!(
        good,
        std::fs::read(&stream).unwrap(),
        "the stream was fetched again"
    );
}

//! Snapshots and their replication: schedule, retention and the space guard; live replication
//! without stream files; a secondary catching up on a held base, and from another copy while
//! the primary is down; agents killed mid-transfer; a stream corrupted in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::fixtures::{NS, random_bytes, sized};
use common::hosts::{datasets_below, run};
use common::streams::{catch_receive, catch_send, files_ending, store_dir};
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
    c.wait_event(NS, "SnapshotsBlocked", "guard").await;
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

/// Live replication keeps one copy of the data per host (DESIGN §4, §5.4): every snapshot —
/// the user's own too — reaches the secondary straight from `zfs send` into `zfs recv`, and no
/// host keeps a stream file of the open project.
#[tokio::test]
async fn s03b_an_open_project_keeps_no_stream_files_and_every_snapshot_reaches_its_copies() {
    let Some(c) = Cluster::up_with_hosts("s03b-no-streams").await else {
        return;
    };
    c.create_project(NS, "live", sized("50Mi", 2)).await;
    let first = c
        .in_sync(NS, "live", 2, None, Duration::from_secs(60))
        .await;
    let mount = c.mount_path(NS, "live").await;
    let primary = c.primary(NS, "live").await;
    let secondary = c.secondary(NS, "live").await;
    let ds = |pool: &str| format!("{}/projects/{NS}/live", c.host_of_pool(pool).pool);
    std::fs::write(mount.join("data"), random_bytes(4 << 20, 3)).unwrap();
    // The user's own snapshot, then a managed one on demand: both reach the copy.
    run(
        "zfs",
        &["snapshot", &format!("{}@mine", ds(&primary.spec.pool))],
    );
    std::fs::write(mount.join("more"), random_bytes(1 << 20, 4)).unwrap();
    c.snapshot_now(NS, "live").await;
    c.in_sync(NS, "live", 2, Some(&first), Duration::from_secs(90))
        .await;
    let names = |pool: &str| -> Vec<String> {
        snapshots_of(&ds(pool))
            .iter()
            .filter_map(|l| l.split_once('@').map(|(_, n)| n.to_owned()))
            .collect()
    };
    // A secondary that asked before its primary had made the dataset waited (Syncing); it
    // did not fail.
    for h in &c.hosts {
        let log = std::fs::read_to_string(c.dir.join("logs").join(format!("agent-{}.log", h.node)))
            .unwrap_or_default();
        assert!(
            !log.lines()
                .any(|l| l.contains("replica pass failed") && l.contains("no live copy")),
            "agent-{} failed a pass while its primary was being made",
            h.node
        );
    }
    let on_secondary = names(&secondary.spec.pool);
    assert!(
        on_secondary.iter().any(|n| n == "mine"),
        "the user's snapshot did not reach the copy: {on_secondary:?}"
    );
    let guid = |pool: &str, snap: &str| {
        run(
            "zfs",
            &[
                "get",
                "-Hp",
                "-o",
                "value",
                "guid",
                &format!("{}@{snap}", ds(pool)),
            ],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(
        guid(&primary.spec.pool, "mine"),
        guid(&secondary.spec.pool, "mine"),
        "the same snapshot on both"
    );
    for pool in [&primary.spec.pool, &secondary.spec.pool] {
        let dir = store_dir(&c, pool, "live");
        let files = files_ending(&dir, "");
        assert!(files.is_empty(), "stream files on {pool}: {files:?}");
        let st = c
            .replicas_api(NS)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|r| r.spec.project == "live" && &r.spec.pool == pool)
            .and_then(|r| r.status)
            .and_then(|s| s.streams)
            .unwrap_or_default();
        assert_eq!((st.count, st.bytes), (0, 0), "status.streams on {pool}");
    }
}

/// More copies to catch up on each host than it receives at once
/// (`projstore_agent::runtime::schedule::RECEIVES`): while their sources hold their sends
/// (the agents' `HOLD_SENDS` fault hook), as many copies as that receive on each host, never
/// more, and the others wait in line (Syncing, not failed). Once the sends go on, each
/// receive given back wakes a waiting copy, which catches up at once: without the wake-up it
/// would wait out its backoff, which has grown past the time this allows.
#[tokio::test]
async fn s03c_copies_beyond_a_hosts_receives_wait_in_line_and_are_woken() {
    use projstore_agent::runtime::schedule::RECEIVES;
    let Some(c) = Cluster::up_with_hosts("s03c-receive-line").await else {
        return;
    };
    // A copy of each on every host: each host catches up 2 * PROJECTS / 3 copies at once.
    const PROJECTS: usize = 9;
    let names: Vec<String> = (0..PROJECTS).map(|i| format!("line-{i}")).collect();
    for n in &names {
        c.create_project(NS, n, sized("200Mi", 3)).await;
    }
    let mut before = Vec::new();
    for n in &names {
        before.push(c.in_sync(NS, n, 3, None, Duration::from_secs(180)).await);
    }
    for (i, n) in names.iter().enumerate() {
        let mount = c.mount_path(NS, n).await;
        std::fs::write(mount.join("data"), random_bytes(4 << 20, 300 + i as u64)).unwrap();
    }
    /// The hold files and the process-table watcher: both end also when the test fails.
    struct Holding {
        files: Vec<std::path::PathBuf>,
        watching: std::sync::Arc<std::sync::atomic::AtomicBool>,
        watcher: Option<std::thread::JoinHandle<()>>,
    }
    impl Holding {
        fn release(&mut self) {
            for f in self.files.drain(..) {
                let _ = std::fs::remove_file(f);
            }
        }
        fn stop_watching(&mut self) {
            self.watching
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(w) = self.watcher.take() {
                let _ = w.join();
            }
        }
    }
    impl Drop for Holding {
        fn drop(&mut self) {
            self.release();
            self.stop_watching();
        }
    }
    let files: Vec<std::path::PathBuf> = c
        .hosts
        .iter()
        .map(|h| {
            let hold = c
                .dir
                .join("hosts")
                .join(&h.node)
                .join("run")
                .join(projstore_agent::live::HOLD_SENDS);
            std::fs::create_dir_all(hold.parent().unwrap()).unwrap();
            std::fs::write(&hold, b"").unwrap();
            hold
        })
        .collect();
    // The most `zfs recv` into each pool of this cluster seen at once, from the process table.
    let pools: Vec<String> = c.hosts.iter().map(|h| format!("{}/", h.pool)).collect();
    let most = std::sync::Arc::new(std::sync::Mutex::new(vec![0usize; pools.len()]));
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (most, watching, pools) = (most.clone(), watching.clone(), pools.clone());
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let mut now = vec![0usize; pools.len()];
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                    if !args.contains(&b"recv".as_slice()) {
                        continue;
                    }
                    for (i, pool) in pools.iter().enumerate() {
                        if args.iter().any(|a| a.starts_with(pool.as_bytes())) {
                            now[i] += 1;
                        }
                    }
                }
                let mut most = most.lock().unwrap();
                for (m, n) in most.iter_mut().zip(now) {
                    *m = (*m).max(n);
                }
                drop(most);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut holding = Holding {
        files,
        watching,
        watcher: Some(watcher),
    };
    // The agents' logs from here on.
    let log_of = |node: &str| {
        std::fs::read_to_string(c.dir.join("logs").join(format!("agent-{node}.log")))
            .unwrap_or_default()
    };
    let marks: Vec<usize> = c.hosts.iter().map(|h| log_of(&h.node).len()).collect();
    let since_marks = || -> Vec<String> {
        c.hosts
            .iter()
            .zip(&marks)
            .map(|(h, &mark)| log_of(&h.node).get(mark..).unwrap_or_default().to_owned())
            .collect()
    };
    const WAITING: &str = "every live receive of this host is taken";
    for n in &names {
        c.snapshot_now(NS, n).await;
    }
    // A host receives as many as it may and has copies waiting for a receive (placement
    // decides how many copies each host holds).
    c.wait(
        "a host's receives all taken, copies waiting",
        Duration::from_secs(120),
        || async {
            let most = most.lock().unwrap().clone();
            let waited: Vec<bool> = since_marks().iter().map(|l| l.contains(WAITING)).collect();
            if most.iter().zip(&waited).any(|(&m, &w)| m == RECEIVES && w) {
                Ok(())
            } else {
                Err(format!(
                    "zfs recv at once per host: {most:?}; a copy waiting per host: {waited:?}"
                ))
            }
        },
    )
    .await;
    // A waiting copy looks again after a backoff that doubles from 2 s: once one has looked
    // five times (at 0, 2, 6, 14 and 30 s), its next look is 32 s away.
    let most_looks = || -> usize {
        let logs = since_marks();
        let looks = |log: &String, name: &String| {
            let project = format!("{NS}/{name}");
            log.lines()
                .filter(|l| l.contains(WAITING) && l.contains(&project))
                .count()
        };
        logs.iter()
            .flat_map(|log| names.iter().map(move |n| looks(log, n)))
            .max()
            .unwrap_or(0)
    };
    c.wait(
        "a waiting copy looked five times",
        Duration::from_secs(120),
        || async {
            let n = most_looks();
            if n >= 5 {
                Ok(())
            } else {
                Err(format!("most looks of a waiting copy: {n}"))
            }
        },
    )
    .await;
    let released = Instant::now();
    holding.release();
    let deadline = released + Duration::from_secs(25);
    for (n, b) in names.iter().zip(&before) {
        let left = deadline.saturating_duration_since(Instant::now());
        c.in_sync(NS, n, 3, Some(b), left).await;
    }
    c.timing(
        "every copy caught up after the sends went on",
        released.elapsed(),
    );
    holding.stop_watching();
    let most = most.lock().unwrap().clone();
    c.check(
        most.iter().all(|&m| m <= RECEIVES),
        &format!("a host ran more than {RECEIVES} zfs recv at once: {most:?}"),
    );
    c.check(
        !since_marks()
            .iter()
            .any(|l| l.contains("replica pass failed")),
        "a pass failed while copies waited for receives",
    );
}

/// Scenario 4: a secondary's agent is down while snapshots are taken; retention would prune
/// the snapshot the copy stands on, but the primary holds it (DESIGN §5.2): after its restart
/// the copy catches up incrementally (no full resend), and the hold is released once it moved
/// on.
#[tokio::test]
async fn s04_a_secondary_whose_agent_was_down_catches_up_on_its_held_base() {
    let Some(c) = Cluster::up_with_hosts("s04-catch-up").await else {
        return;
    };
    c.create_project(NS, "delta", json!({"quota": "100Mi", "owner": {"uid": 1000, "gid": 1000},
        "copies": 3, "snapshots": {"keep": {"frequent": 1, "hourly": 0, "daily": 0, "weekly": 0, "monthly": 0}}}))
    .await;
    let first = c
        .in_sync(NS, "delta", 3, None, Duration::from_secs(60))
        .await;
    let primary = c.primary(NS, "delta").await;
    let sec = c.secondary(NS, "delta").await;
    let ds = |pool: &str| format!("{}/projects/{NS}/delta", c.host_of_pool(pool).pool);
    let (p_ds, s_ds) = (ds(&primary.spec.pool), ds(&sec.spec.pool));
    let get = |what: &str, target: &str| {
        run("zfs", &["get", "-Hp", "-o", "value", what, target])
            .trim()
            .to_owned()
    };
    let base_name = c
        .replicas_api(NS)
        .get(&sec.name_any())
        .await
        .unwrap()
        .status
        .and_then(|s| s.applied_snapshot)
        .map(|a| a.name)
        .unwrap();
    let base = format!("{p_ds}@{base_name}");
    let copy_guid = get("guid", &s_ds);
    let host = c.host_of_pool(&sec.spec.pool).node.clone();
    c.kill(&format!("agent-{host}"), true);
    let mount = c.mount_path(NS, "delta").await;
    for i in 0..3 {
        std::fs::write(mount.join(format!("f{i}")), vec![i as u8; 50_000]).unwrap();
        c.snapshot_now(NS, "delta").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let tag = format!("projstore-copy-{}", sec.spec.pool);
    let held = c
        .wait(
            "the down copy's base held on the primary",
            Duration::from_secs(60),
            || async {
                let holds = get("projstore.io:holds", &base);
                if holds.split(',').any(|t| t == tag) {
                    Ok(holds)
                } else {
                    Err(holds)
                }
            },
        )
        .await;
    println!("[s04] {base} held: {held}");
    // Held on the ZFS, not just recorded: it cannot be destroyed.
    let destroy = std::process::Command::new("zfs")
        .args(["destroy", &base])
        .output()
        .unwrap();
    assert!(!destroy.status.success(), "a held base was destroyed");
    let t = Instant::now();
    c.release(&format!("agent-{host}"));
    let caught_up = c
        .in_sync(NS, "delta", 3, Some(&first), Duration::from_secs(90))
        .await;
    c.timing("restart → caught up", t.elapsed());
    assert_eq!(
        get("guid", &s_ds),
        copy_guid,
        "the copy was received afresh instead of incrementally"
    );
    // Moved on: the next pass of the primary releases the hold, and retention prunes it.
    std::fs::write(mount.join("last"), b"after the catch-up").unwrap();
    c.snapshot_now(NS, "delta").await;
    c.wait(
        "the old base released and pruned",
        Duration::from_secs(60),
        || async {
            let listed = snapshots_of(&p_ds);
            // (Not read again here: it may go between the listing and another command.)
            if listed.contains(&base) {
                Err(format!("{base} still there"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    c.in_sync(NS, "delta", 3, Some(&caught_up), Duration::from_secs(60))
        .await;
}

/// Scenario 4b: a copy whose agent was down catches up from another Ready copy while the
/// primary cannot be reached (DESIGN §5.4: a source is "the primary, or any Ready copy that
/// holds the snapshots needed").
#[tokio::test]
async fn s04b_a_copy_catches_up_from_another_copy_while_the_primary_is_down() {
    let Some(c) = Cluster::up_with_hosts("s04b-other-source").await else {
        return;
    };
    c.create_project(
        NS,
        "echo",
        json!({"quota": "100Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 3}),
    )
    .await;
    let first = c
        .in_sync(NS, "echo", 3, None, Duration::from_secs(60))
        .await;
    let primary = c.primary(NS, "echo").await;
    let secondaries: Vec<_> = c
        .replicas(NS, "echo")
        .await
        .into_iter()
        .filter(|r| r.spec.role == projstore_api::ReplicaRole::Secondary)
        .collect();
    let (behind, ahead) = (&secondaries[0], &secondaries[1]);
    let agent = |pool: &str| format!("agent-{}", c.host_of_pool(pool).node);
    let applied = |name: String| {
        let api = c.replicas_api(NS);
        async move {
            api.get(&name)
                .await
                .ok()
                .and_then(|r| r.status)
                .and_then(|s| s.applied_snapshot)
                .map(|a| a.guid)
                .unwrap_or_default()
        }
    };
    c.kill(&agent(&behind.spec.pool), true);
    let mount = c.mount_path(NS, "echo").await;
    for i in 0..2u8 {
        std::fs::write(mount.join(format!("e{i}")), vec![i; 60_000]).unwrap();
        c.snapshot_now(NS, "echo").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let last = c
        .wait(
            "the other copy holds the primary's newest snapshot",
            Duration::from_secs(60),
            || async {
                let (p, a) = (
                    applied(primary.name_any()).await,
                    applied(ahead.name_any()).await,
                );
                if !p.is_empty() && p != first && p == a {
                    Ok(p)
                } else {
                    Err(format!("primary {p}, other copy {a}"))
                }
            },
        )
        .await;
    // The primary goes down; the copy that was down comes back.
    c.kill(&agent(&primary.spec.pool), true);
    let t = Instant::now();
    c.release(&agent(&behind.spec.pool));
    c.wait(
        "the copy caught up from the other copy",
        Duration::from_secs(60),
        || async {
            let b = applied(behind.name_any()).await;
            if b == last { Ok(()) } else { Err(b) }
        },
    )
    .await;
    c.timing("restart → caught up from another copy", t.elapsed());
    let ds = format!(
        "{}/projects/{NS}/echo",
        c.host_of_pool(&behind.spec.pool).pool
    );
    let guids = run("zfs", &["get", "-Hp", "-r", "-o", "value", "guid", &ds]);
    assert!(guids.lines().any(|g| g.trim() == last), "{ds}: {guids}");
    let log = std::fs::read_to_string(
        c.dir
            .join("logs")
            .join(format!("{}.log", agent(&behind.spec.pool))),
    )
    .unwrap();
    assert!(
        log.contains("catching up from another copy"),
        "the copy did not say where it caught up from"
    );
    c.release(&agent(&primary.spec.pool));
    c.in_sync(NS, "echo", 3, Some(&first), Duration::from_secs(90))
        .await;
}

/// Scenario 5: agents SIGKILLed mid-transfer (the primary while its `zfs send` feeds a live
/// send, the secondary while its `zfs recv` takes one) resume after their restart, from the
/// newest snapshot applied; nothing partial is ever applied or visible.
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
    let source = format!(
        "{}/projects/{NS}/big",
        c.host_of_pool(&primary.spec.pool).pool
    );
    let target = format!(
        "{}/projects/{NS}/big",
        c.host_of_pool(&secondary.spec.pool).pool
    );

    // The primary killed while it sends.
    std::fs::write(mount.join("one"), random_bytes(160 << 20, 11)).unwrap();
    c.snapshot_now(NS, "big").await;
    c.check(
        catch_send(&source, Duration::from_secs(60)).await,
        "never saw the primary sending",
    );
    // The secondary's status as a watch sees every change of it: the retried transfer may
    // run for a moment only (a poll could miss it).
    let shown = std::sync::Arc::new(std::sync::Mutex::new(None));
    let watch = {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", secondary.name_any()));
        let mut events = watcher::watcher(c.replicas_api(NS), cfg).boxed();
        let shown = shown.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let Ok(watcher::Event::Apply(sr) | watcher::Event::InitApply(sr)) = e
                    && let Some(t) = sr.status.and_then(|s| s.transfer)
                    && t.bytes_total > 0
                    && let Ok(mut shown) = shown.lock()
                {
                    shown.get_or_insert(t);
                }
            }
        })
    };
    c.kill(&p_agent, false);
    println!("[s05] primary agent killed during a live send");
    let seen = c
        .wait(
            "the secondary reports transfer progress",
            Duration::from_secs(180),
            || async {
                match shown.lock().ok().and_then(|s| s.clone()) {
                    Some(t) => Ok(t),
                    None => Err("no transfer in status".into()),
                }
            },
        )
        .await;
    watch.abort();
    println!(
        "[s05] status.transfer: {} of {} bytes",
        seen.bytes_done, seen.bytes_total
    );
    let second = c
        .in_sync(NS, "big", 2, Some(&first), Duration::from_secs(180))
        .await;

    // The secondary killed while `zfs recv` takes a live send: the receive is cut off.
    std::fs::write(mount.join("two"), random_bytes(160 << 20, 13)).unwrap();
    c.snapshot_now(NS, "big").await;
    c.check(
        catch_receive(&target, Duration::from_secs(120)).await,
        &format!("never saw the secondary receiving into {target}"),
    );
    c.kill(&s_agent, false);
    println!("[s05] secondary agent killed during zfs recv");
    let t = Instant::now();
    c.in_sync(NS, "big", 2, Some(&second), Duration::from_secs(180))
        .await;
    c.timing("restart → receive completed", t.elapsed());
    for h in &c.hosts {
        let staged = datasets_below(h, "recv");
        // `recv` and its namespace folders may exist; a dataset below them is a receive.
        assert!(
            staged.lines().all(|l| l.matches('/').count() <= 2),
            "a partial receive is visible: {staged}"
        );
    }
    for pool in [&primary.spec.pool, &secondary.spec.pool] {
        let files = files_ending(&store_dir(&c, pool, "big"), "");
        assert!(files.is_empty(), "stream files on {pool}: {files:?}");
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

/// Scenario 6: a live send corrupted in flight (one byte flipped after the source hashed it,
/// by the agent's fault hook) is never applied; the copy asks again and applies the stream as
/// it was sent.
#[tokio::test]
async fn s06_a_stream_corrupted_in_flight_is_never_applied_and_sent_again() {
    let Some(c) = Cluster::up_with_hosts("s06-corrupt").await else {
        return;
    };
    c.create_project(NS, "cor", sized("100Mi", 2)).await;
    let first = c.in_sync(NS, "cor", 2, None, Duration::from_secs(60)).await;
    let primary = c.primary(NS, "cor").await;
    let secondary = c.secondary(NS, "cor").await;
    let s_agent = format!("agent-{}", secondary.spec.node);
    let hook = c
        .dir
        .join("hosts")
        .join(&primary.spec.node)
        .join("run")
        .join(projstore_agent::live::FLIP_NEXT_SEND);
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, b"").unwrap();
    let mount = c.mount_path(NS, "cor").await;
    std::fs::write(mount.join("payload"), random_bytes(2 << 20, 5)).unwrap();
    c.snapshot_now(NS, "cor").await;
    let new = c
        .in_sync(NS, "cor", 2, Some(&first), Duration::from_secs(90))
        .await;
    assert!(!hook.exists(), "the fault hook was never used");
    let log = std::fs::read_to_string(c.dir.join("logs").join(format!("{s_agent}.log"))).unwrap();
    assert!(
        log.contains("replica pass failed")
            && log.contains("not applied")
            && log.contains("BLAKE3 digest"),
        "the corrupted send was not refused by its digest"
    );
    let ds = |pool: &str| format!("{}/projects/{NS}/cor", c.host_of_pool(pool).pool);
    let snaps = snapshots_of(&ds(&secondary.spec.pool)).join("\n");
    println!("[s06] applied {new} after a refused send; the copy holds:\n{snaps}");
}

/// The snapshots of `ds` on its host, by full name.
fn snapshots_of(ds: &str) -> Vec<String> {
    run(
        "zfs",
        &["list", "-H", "-o", "name", "-t", "snapshot", "-r", ds],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

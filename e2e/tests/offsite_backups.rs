//! Offsite backups against a real S3-compatible server (`s3s-fs`, SigV4): back up, only the
//! increment uploaded, nothing readable in the bucket with a key set, an upload cut off by
//! killing its agent resumes, a corrupted object fails verification (condition, Event) and
//! is refused by a restore, and a project comes back after every host that held it is gone.
//! And the BackupTarget's status for wrong credentials, no server and no bucket, with the
//! project unaffected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;
use common::fixtures::{NS, random_bytes};
use common::hosts::run;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use projstore_api::{BackupPhase, BackupTarget, BackupTargetPhase};
use projstore_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use serde_json::json;

const BUCKET: &str = "backups";
/// Text the tenant wrote; never to be found in the bucket when the target has a key.
const MARKER: &[u8] = b"CONFIDENTIAL: chapter 3 of the thesis, draft 7";

fn s3(c: &Cluster) -> Option<S3Server> {
    let root = c.dir.join("s3");
    match S3Server::start(&root, BUCKET).unwrap() {
        Some(s) => Some(s),
        None => {
            assert!(
                std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
                "s3s-fs is required (make test installs it) but missing"
            );
            eprintln!("SKIP: no s3s-fs");
            None
        }
    }
}

/// Where BackupTargets' Secrets live: the chart creates this namespace and lets the
/// controller and agents read Secrets there only (values `backupSecretNamespaces`).
const SECRETS_NS: &str = "projstore-backup-secrets";

async fn secret(c: &Cluster, name: &str, data: serde_json::Value) {
    secret_in(c, SECRETS_NS, name, data).await;
}

async fn secret_in(c: &Cluster, ns: &str, name: &str, data: serde_json::Value) {
    let api: Api<Secret> = Api::namespaced(c.client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

async fn target(c: &Cluster, name: &str, spec: serde_json::Value) {
    let api: Api<BackupTarget> = Api::all(c.client.clone());
    let bt: BackupTarget = serde_json::from_value(json!({
        "apiVersion": "projstore.io/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &bt).await.unwrap();
}

async fn target_phase(c: &Cluster, name: &str, want: BackupTargetPhase, limit: Duration) -> String {
    let api: Api<BackupTarget> = Api::all(c.client.clone());
    c.wait(&format!("BackupTarget {name} {want:?}"), limit, || async {
        let bt = api.get(name).await.map_err(|e| e.to_string())?;
        let st = bt.status.unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        match (st.phase, ready) {
            (Some(p), Some(r)) if p == want => Ok(format!("{}: {}", r.reason, r.message)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn annotate(c: &Cluster, name: &str, key: &str, value: &str) {
    c.projects(NS)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

/// The project's `status.backup` as it stands (empty when none).
async fn backup_of(c: &Cluster, name: &str) -> Result<projstore_api::BackupStatus, String> {
    Ok(c.project_status(NS, name).await?.backup.unwrap_or_default())
}

/// Waits until the project's backup holds `snapshot` (phase Succeeded).
async fn backed_up(c: &Cluster, name: &str, snapshot: &str, limit: Duration) -> u64 {
    c.wait(
        &format!("{name} backed up at {snapshot}"),
        limit,
        || async {
            let b = backup_of(c, name).await?;
            if b.phase == Some(BackupPhase::Succeeded)
                && b.last_snapshot.as_deref() == Some(snapshot)
            {
                Ok(b.bytes.unwrap_or_default())
            } else {
                Err(format!(
                    "{:?} {:?}: {:?}",
                    b.phase, b.last_snapshot, b.message
                ))
            }
        },
    )
    .await
}

/// Asks for a verification (`request`, a new value) and waits until the project's
/// `BackupVerified` condition answers it with `ok`; its message.
async fn verification(c: &Cluster, name: &str, request: &str, ok: bool) -> String {
    annotate(c, name, "projstore.io/verify-backup-now", request).await;
    let want = if ok { "True" } else { "False" };
    c.wait(
        &format!("verification {request} of {name}: {want}"),
        Duration::from_secs(180),
        || async {
            let st = c.project_status(NS, name).await?;
            let b = st.backup.unwrap_or_default();
            st.conditions
                .iter()
                .find(|c| c.type_ == "BackupVerified" && c.status == want)
                .filter(|_| b.verify_requested.as_deref() == Some(request))
                .map(|c| c.message.clone())
                .ok_or_else(|| format!("{:?} {:?}", b.verify_requested, b.verify_message))
        },
    )
    .await
}

/// Waits until the primary of `name` reports an error containing one of `words`.
async fn refused(c: &Cluster, name: &str, what: &str, words: &[&str]) -> String {
    c.wait(what, Duration::from_secs(180), || async {
        let primary = c
            .replicas(NS, name)
            .await
            .into_iter()
            .find(|r| r.spec.role == projstore_api::ReplicaRole::Primary);
        primary
            .and_then(|r| r.status)
            .and_then(|s| s.last_error)
            .filter(|e| words.iter().any(|w| e.contains(w)))
            .ok_or_else(|| "no refusal yet".to_owned())
    })
    .await
}

/// Takes a snapshot and waits until `copies` copies hold it; returns its GUID and name.
async fn snapshot(c: &Cluster, name: &str, copies: usize) -> (String, String) {
    let before = c
        .in_sync(NS, name, copies, None, Duration::from_secs(120))
        .await;
    c.snapshot_now(NS, name).await;
    let guid = c
        .in_sync(NS, name, copies, Some(&before), Duration::from_secs(180))
        .await;
    let applied = c
        .primary(NS, name)
        .await
        .status
        .and_then(|s| s.applied_snapshot)
        .unwrap();
    assert_eq!(applied.guid, guid);
    (guid, applied.name)
}

/// Objects of the project under the target's prefix: (key, size).
fn objects(s: &S3Server, project: &str) -> Vec<(String, u64)> {
    s.objects(BUCKET, &format!("cluster-a/{NS}/{project}"))
}

fn stream_objects(s: &S3Server, project: &str) -> Vec<(String, u64)> {
    objects(s, project)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".zstream"))
        .collect()
}

/// Scenario 16: the whole life of a backed-up project, to its restore after every host that
/// held it is gone.
#[tokio::test]
async fn s16_projects_come_back_from_the_bucket_after_every_host_that_held_them_is_gone() {
    let Some(c) = Cluster::up_with_hosts("s16-backups").await else {
        return;
    };
    let Some(s3) = s3(&c) else {
        return;
    };
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(random_bytes(32, 16));
    secret(
        &c,
        "s3-credentials",
        json!({"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}),
    )
    .await;
    secret(&c, "backup-key", json!({"key": key})).await;
    target(
        &c,
        "offsite",
        json!({"endpoint": s3.endpoint, "bucket": BUCKET, "prefix": "cluster-a",
            "credentialsSecret": {"namespace": SECRETS_NS, "name": "s3-credentials"},
            "encryptionKeySecret": {"namespace": SECRETS_NS, "name": "backup-key"}}),
    )
    .await;
    let ready = target_phase(
        &c,
        "offsite",
        BackupTargetPhase::Ready,
        Duration::from_secs(60),
    )
    .await;
    println!("[s16] target: {ready}");

    c.create_project(
        NS,
        "thesis",
        json!({"quota": "300Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 2,
            "backup": {"target": "offsite"}}),
    )
    .await;
    let mount = c.mount_path_when_ready(NS, "thesis").await;
    let mut text = Vec::new();
    for _ in 0..2000 {
        text.extend_from_slice(MARKER);
        text.push(b'\n');
    }
    std::fs::write(mount.join("paper.tex"), &text).unwrap();
    std::fs::write(mount.join("data.bin"), random_bytes(4 << 20, 1)).unwrap();
    std::os::unix::fs::chown(mount.join("data.bin"), Some(1000), Some(1000)).unwrap();
    let (_, first) = snapshot(&c, "thesis", 2).await;
    annotate(&c, "thesis", "projstore.io/backup-now", "1").await;
    let first_bytes = backed_up(&c, "thesis", &first, Duration::from_secs(120)).await;
    let total: u64 = stream_objects(&s3, "thesis").iter().map(|(_, n)| n).sum();
    println!("[s16] backup of {first}: {first_bytes} bytes; {total} bytes in the bucket");
    c.check(
        total > 4 << 20 && total < 6 << 20,
        "the bucket holds the 4 MiB of data, once",
    );
    // The uploader is the Ready secondary: the primary's disks are spared.
    let secondary = c.secondary(NS, "thesis").await;
    c.check(
        secondary
            .status
            .as_ref()
            .and_then(|s| s.backup.as_ref())
            .is_some_and(|b| b.last_snapshot.as_deref() == Some(first.as_str())),
        "the secondary uploaded the backup",
    );
    // With a key, nothing of the project is readable in the bucket.
    for (k, _) in objects(&s3, "thesis") {
        let bytes = std::fs::read(s3.object_file(BUCKET, &k)).unwrap();
        c.check(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            &format!("object {k} holds the tenant's plaintext"),
        );
        c.check(
            !bytes.windows(6).any(|w| w == b"thesis" || w == b"paper."),
            &format!("object {k} names the project or its files in clear"),
        );
    }

    // One node at a time writes the project's objects: the uploader took the project's backup
    // Lease and released it when done. Held by another node (as if it were uploading), the
    // next backup waits and says so; once released, it runs.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "projstore-system");
    let lease_name = format!("projstore-backup.{NS}.thesis");
    let lease = leases.get(&lease_name).await.unwrap().spec.unwrap();
    c.check(
        lease.holder_identity.is_none() && lease.lease_transitions.is_some(),
        &format!("the uploader took the backup lease and released it: {lease:?}"),
    );
    let renewed = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let holder = |h: serde_json::Value| {
        Patch::Merge(json!({"spec": {"holderIdentity": h, "renewTime": renewed,
            "leaseDurationSeconds": 600}}))
    };
    let params = PatchParams::default();
    let streams_before = stream_objects(&s3, "thesis");
    leases
        .patch(&lease_name, &params, &holder(json!("host-elsewhere")))
        .await
        .unwrap();

    // The second backup uploads only the increment.
    std::fs::write(mount.join("more.bin"), random_bytes(2 << 20, 2)).unwrap();
    let (_, second) = snapshot(&c, "thesis", 2).await;
    annotate(&c, "thesis", "projstore.io/backup-now", "2").await;
    let waiting = c
        .wait(
            "the backup waits for the lease's holder",
            Duration::from_secs(120),
            || async {
                let b = backup_of(&c, "thesis").await?;
                let running = b.phase == Some(BackupPhase::Running);
                b.message
                    .clone()
                    .filter(|m| {
                        running && m.contains("host-elsewhere holds this project's backup lease")
                    })
                    .ok_or_else(|| format!("{:?} {:?}", b.phase, b.message))
            },
        )
        .await;
    println!("[s16] {waiting}");
    c.check(
        stream_objects(&s3, "thesis") == streams_before,
        "nothing was uploaded while another node held the lease",
    );
    leases
        .patch(&lease_name, &params, &holder(serde_json::Value::Null))
        .await
        .unwrap();
    let inc_bytes = backed_up(&c, "thesis", &second, Duration::from_secs(180)).await;
    let streams = stream_objects(&s3, "thesis");
    println!("[s16] increment: {inc_bytes} bytes; objects {streams:?}");
    let inc = streams
        .iter()
        .find(|(k, _)| k.ends_with(&format!("{first}--{second}.zstream")))
        .expect("an incremental object");
    c.check(
        inc.1 >= 2 << 20 && inc.1 < (2 << 20) + (1 << 20),
        &format!(
            "the increment's object holds about the 2 MiB written: {}",
            inc.1
        ),
    );
    c.check(
        inc_bytes == inc.1,
        "status.backup.bytes is the increment's size",
    );

    // An upload cut off by killing its agent goes on from its stored parts.
    std::fs::write(mount.join("big.bin"), random_bytes(40 << 20, 3)).unwrap();
    let (_, third) = snapshot(&c, "thesis", 2).await;
    let uploader = c.host_of_pool(&secondary.spec.pool).node.clone();
    let run_dir = c.dir.join("hosts").join(&uploader).join("run");
    let hold = run_dir.join(projstore_agent::backup::bucket::HOLD_UPLOAD);
    std::fs::create_dir_all(hold.parent().unwrap()).unwrap();
    std::fs::write(&hold, b"").unwrap();
    annotate(&c, "thesis", "projstore.io/backup-now", "3").await;
    let state_dir = run_dir.join("backup-uploads");
    c.wait(
        "the upload stored parts",
        Duration::from_secs(120),
        || async {
            let parts = std::fs::read_dir(&state_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| t.matches("\"etag\"").count())
                .max()
                .unwrap_or(0);
            if parts >= 1 {
                Ok(())
            } else {
                Err(format!("{parts} parts"))
            }
        },
    )
    .await;
    let agent = format!("agent-{uploader}");
    c.kill(&agent, true);
    std::fs::remove_file(&hold).unwrap();
    // While the uploader is down the primary takes a newer snapshot: the restarted upload
    // finishes the snapshot it began, then uploads the newer one as an increment from it.
    std::fs::write(mount.join("later.bin"), random_bytes(1 << 20, 5)).unwrap();
    c.snapshot_now(NS, "thesis").await;
    let fourth = c
        .wait(
            "the primary's newer snapshot",
            Duration::from_secs(120),
            || async {
                let p = c.primary(NS, "thesis").await;
                match p.status.and_then(|s| s.applied_snapshot) {
                    Some(a) if a.name != third => Ok(a.name),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    c.release(&agent);
    backed_up(&c, "thesis", &fourth, Duration::from_secs(180)).await;
    let log = std::fs::read_to_string(c.dir.join("logs").join(format!("{agent}.log")))
        .unwrap_or_default();
    c.check(
        log.contains("upload resumed after its stored parts"),
        "the restarted agent resumed the upload instead of starting over",
    );
    let streams = stream_objects(&s3, "thesis");
    c.check(
        streams
            .iter()
            .any(|(k, _)| k.ends_with(&format!("{second}--{third}.zstream")))
            && streams
                .iter()
                .any(|(k, _)| k.ends_with(&format!("{third}--{fourth}.zstream"))),
        &format!(
            "the cut-off stream was finished, then the newer snapshot followed it: {streams:?}"
        ),
    );

    // An upload runs beside the copy's work: while one is held half-way, the Project shows
    // its progress, and a new snapshot still reaches the uploading copy.
    std::fs::write(mount.join("more2.bin"), random_bytes(20 << 20, 4)).unwrap();
    let (_, newest) = snapshot(&c, "thesis", 2).await;
    std::fs::write(&hold, b"").unwrap();
    annotate(&c, "thesis", "projstore.io/backup-now", "4").await;
    let running = c
        .wait(
            "the held upload's progress in status",
            Duration::from_secs(120),
            || async {
                let b = backup_of(&c, "thesis").await?;
                match (b.phase, b.bytes_done, b.bytes_total) {
                    (Some(BackupPhase::Running), Some(done), Some(total))
                        if done >= 8 << 20 && total >= 16 << 20 =>
                    {
                        Ok((done, total))
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    println!(
        "[s16] upload under way: {} of {} bytes",
        running.0, running.1
    );
    let (_, later) = snapshot(&c, "thesis", 2).await;
    let b = c
        .project_status(NS, "thesis")
        .await
        .unwrap()
        .backup
        .unwrap();
    c.check(
        b.phase == Some(BackupPhase::Running),
        &format!("the upload was still held when {later} reached both copies: {b:?}"),
    );
    c.check(
        c.project_status(NS, "thesis")
            .await
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "BackedUp" && c.status == "True"),
        "BackedUp stays True while the next upload runs",
    );
    std::fs::remove_file(&hold).unwrap();
    backed_up(&c, "thesis", &newest, Duration::from_secs(180)).await;

    // Verified on request: restored into a scratch dataset and compared.
    let verified = verification(&c, "thesis", "1", true).await;
    c.check(
        verified.contains(&format!("restored {newest} ")),
        "the newest backup was verified",
    );
    println!("[s16] {verified}");
    // On the host that holds no copy, and nothing left there.
    let holders: Vec<String> = c
        .replicas(NS, "thesis")
        .await
        .iter()
        .map(|r| r.spec.pool.clone())
        .collect();
    let third_pool = c
        .hosts
        .iter()
        .map(|h| format!("{}-storage", h.node))
        .find(|p| !holders.contains(p))
        .unwrap();
    c.check(
        verified.contains(&format!("on spare pool {third_pool} ")),
        "verified on the pool that holds no copy",
    );
    let scratch = format!("{}/recv/backup.{NS}", c.host_of_pool(&third_pool).pool);
    let left = std::process::Command::new("zfs")
        .args(["list", "-H", "-r", "-o", "name", &scratch])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    c.check(
        left.lines().all(|l| l == scratch),
        &format!("the scratch dataset is gone: {left}"),
    );

    // A corrupted object: a restore refuses it, verification fails loudly, and the copy that
    // uploads puts the stream up again, which the next verification finds good.
    let (newest_key, _) = stream_objects(&s3, "thesis")
        .into_iter()
        .find(|(k, _)| k.ends_with(&format!("--{newest}.zstream")))
        .unwrap();
    let file = s3.object_file(BUCKET, &newest_key);
    let original = std::fs::read(&file).unwrap();
    let mut bad = original.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&file, &bad).unwrap();
    c.create_project(
        NS,
        "refused",
        json!({"quota": "300Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
            "restoreFrom": {"target": "offsite", "namespace": NS, "name": "thesis"}}),
    )
    .await;
    let refusal = refused(
        &c,
        "refused",
        "the corrupted restore refused",
        &["does not open", "SHA-256"],
    )
    .await;
    println!("[s16] restore refused: {refusal}");
    let refused_pool = c.primary(NS, "refused").await.spec.pool;
    let h = c.host_of_pool(&refused_pool);
    let ds = format!("{}/projects/{NS}/refused", h.pool);
    let listed = std::process::Command::new("zfs")
        .args(["list", "-H", "-o", "name", &ds])
        .output()
        .unwrap();
    c.check(
        !listed.status.success(),
        "no dataset was made from a corrupted backup",
    );
    c.projects(NS)
        .delete("refused", &Default::default())
        .await
        .unwrap();
    let failed = verification(&c, "thesis", "2", false).await;
    println!("[s16] corrupted: {failed}");
    // Uploaded again when the uploading copy still has the stream's base; when retention
    // pruned that base there meanwhile (timing: scheduled snapshots), routed around (the case
    // the next step makes certain).
    c.check(
        failed.contains("does not open")
            && (failed.contains("was uploaded again from this copy")
                || failed.contains("to route the chain around it")),
        "the failure names the broken stream, which was uploaded again or routed around",
    );
    let note = c.wait_event(NS, "BackupVerificationFailed", "thesis").await;
    println!("[s16] event: {note}");
    c.check(
        std::fs::read(&file).map_or(true, |now| now != bad),
        "the broken object was replaced or removed",
    );
    verification(&c, "thesis", "3", true).await;

    // A corrupted object whose first snapshot the uploading copy no longer has (pruned there):
    // the chain is routed around it, with a stream from what the copy still has, and the next
    // backup's GC removes the broken object.
    let streams = stream_objects(&s3, "thesis");
    let name_of = |k: &str| {
        k.rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".zstream")
            .to_owned()
    };
    let (broken_key, broken) = streams
        .iter()
        .map(|(k, _)| (k.clone(), name_of(k)))
        .filter(|(_, n)| !n.starts_with("full--") && !n.ends_with(&format!("--{newest}")))
        .min_by(|a, b| a.1.cmp(&b.1))
        .expect("an increment before the newest");
    let (gone_snap, _) = broken.split_once("--").unwrap();
    let file = s3.object_file(BUCKET, &broken_key);
    let mut bad = std::fs::read(&file).unwrap();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&file, &bad).unwrap();
    let uploader = c.secondary(NS, "thesis").await;
    let uploader_ds = format!(
        "{}/projects/{NS}/thesis@{gone_snap}",
        c.host_of_pool(&uploader.spec.pool).pool
    );
    run("zfs", &["destroy", &uploader_ds]);
    println!("[s16] {broken} corrupted, {uploader_ds} destroyed");
    let failed = verification(&c, "thesis", "4", false).await;
    println!("[s16] corrupted, its base gone: {failed}");
    c.check(
        failed.contains(&broken) && failed.contains("to route the chain around it"),
        "a broken stream whose base the uploader lacks is routed around",
    );
    verification(&c, "thesis", "5", true).await;
    annotate(&c, "thesis", "projstore.io/backup-now", "5").await;
    // (That backup may take up a snapshot the schedule took meanwhile, of the same files.)
    let newest = c
        .wait("backup 5 done", Duration::from_secs(120), || async {
            let b = backup_of(&c, "thesis").await?;
            match (b.requested.as_deref(), b.phase, b.last_snapshot) {
                (Some("5"), Some(BackupPhase::Succeeded), Some(s)) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let left: Vec<String> = stream_objects(&s3, "thesis")
        .iter()
        .map(|(k, _)| name_of(k))
        .collect();
    c.check(
        !left.contains(&broken),
        &format!("GC removed the broken {broken}: {left:?}"),
    );

    // Every host that held the project goes: its agents stopped, its pools destroyed.
    let files: Vec<(PathBuf, Vec<u8>)> = ["paper.tex", "data.bin", "more.bin", "big.bin"]
        .iter()
        .map(|f| (PathBuf::from(f), std::fs::read(mount.join(f)).unwrap()))
        .collect();
    let held: Vec<String> = c
        .replicas(NS, "thesis")
        .await
        .iter()
        .map(|r| r.spec.pool.clone())
        .collect();
    for pool in &held {
        let h = c.host_of_pool(pool);
        c.kill(&format!("agent-{}", h.node), true);
        run("zpool", &["destroy", "-f", &h.pool]);
    }
    let spare = c
        .hosts
        .iter()
        .find(|h| !held.contains(&format!("{}-storage", h.node)))
        .unwrap();
    // The restore shows its progress while it runs (held after its first stream).
    let restore_hold = c
        .dir
        .join("hosts")
        .join(&spare.node)
        .join("run")
        .join(projstore_agent::backup::restore::HOLD_RESTORE);
    std::fs::create_dir_all(restore_hold.parent().unwrap()).unwrap();
    std::fs::write(&restore_hold, b"").unwrap();
    c.create_project(
        NS,
        "thesis-back",
        json!({"quota": "300Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
            "placement": {"pool": format!("{}-storage", spare.node)},
            "restoreFrom": {"target": "offsite", "namespace": NS, "name": "thesis"}}),
    )
    .await;
    let progress = c
        .wait(
            "the restore's progress",
            Duration::from_secs(120),
            || async {
                let b = c
                    .project_status(NS, "thesis-back")
                    .await?
                    .backup
                    .unwrap_or_default();
                match (b.phase, b.bytes_done, b.bytes_total, &b.message) {
                    (Some(BackupPhase::Running), Some(done), Some(total), Some(m))
                        if done > 0
                            && total >= 60 << 20
                            && m.starts_with("restoring from offsite:") =>
                    {
                        Ok(m.clone())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    println!("[s16] {progress}");
    std::fs::remove_file(&restore_hold).unwrap();
    let back = c.mount_path_when_ready(NS, "thesis-back").await;
    for (f, want) in &files {
        let got = std::fs::read(back.join(f)).unwrap();
        c.check(
            got == *want,
            &format!("{} differs after the restore", f.display()),
        );
    }
    let meta = std::fs::metadata(back.join("data.bin")).unwrap();
    use std::os::unix::fs::MetadataExt;
    c.check(meta.uid() == 1000 && meta.gid() == 1000, "owner kept");
    let root = std::fs::metadata(&back).unwrap();
    c.check(
        root.uid() == 1000 && root.gid() == 1000,
        "the project root's owner",
    );
    let st = c.project_status(NS, "thesis-back").await.unwrap();
    c.check(
        st.quota_bytes == Some(300 << 20),
        &format!("quota applied: {:?}", st.quota_bytes),
    );
    c.check(
        st.restored_from.as_deref() == Some(&format!("offsite:{NS}/thesis@{newest}")),
        &format!("status.restoredFrom: {:?}", st.restored_from),
    );
    for pool in &held {
        c.release(&format!("agent-{}", c.host_of_pool(pool).node));
    }
}

/// Scenario 17: a target that cannot be used says why; the project it backs up to stays
/// served; an unencrypted target backs up and restores too, a chosen snapshot included.
#[tokio::test]
async fn s17_a_target_that_cannot_be_used_says_why_and_leaves_the_project_alone() {
    let Some(c) = Cluster::up("s17-backup-targets").await else {
        return;
    };
    if !c.hosts_reachable("the S3 server on this machine") {
        return;
    }
    let Some(s3) = s3(&c) else {
        return;
    };
    secret(
        &c,
        "good",
        json!({"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}),
    )
    .await;
    secret(
        &c,
        "wrong",
        json!({"accessKeyId": ACCESS_KEY, "secretAccessKey": "not-the-secret"}),
    )
    .await;
    let creds = |name: &str| json!({"namespace": SECRETS_NS, "name": name});
    // Good credentials in a tenant's namespace: neither the controller nor an agent may read
    // Secrets there (the chart grants them in its own namespace only).
    c.expect_denial("controller", "get", "secrets", NS);
    secret_in(
        &c,
        NS,
        "tenant-creds",
        json!({"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}),
    )
    .await;
    target(
        &c,
        "tenant-secret",
        json!({"endpoint": s3.endpoint, "bucket": BUCKET,
            "credentialsSecret": {"namespace": NS, "name": "tenant-creds"}}),
    )
    .await;
    target(
        &c,
        "denied",
        json!({"endpoint": s3.endpoint, "bucket": BUCKET, "credentialsSecret": creds("wrong")}),
    )
    .await;
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    target(
        &c,
        "nowhere",
        json!({"endpoint": nowhere, "bucket": BUCKET, "credentialsSecret": creds("good")}),
    )
    .await;
    target(
        &c,
        "nobucket",
        json!({"endpoint": s3.endpoint, "bucket": "no-such-bucket", "credentialsSecret": creds("good")}),
    )
    .await;
    target(
        &c,
        "plain",
        json!({"endpoint": s3.endpoint, "bucket": BUCKET, "prefix": "cluster-a",
            "credentialsSecret": creds("good")}),
    )
    .await;
    let denied = target_phase(
        &c,
        "denied",
        BackupTargetPhase::Denied,
        Duration::from_secs(60),
    )
    .await;
    let nowhere = target_phase(
        &c,
        "nowhere",
        BackupTargetPhase::Unreachable,
        Duration::from_secs(60),
    )
    .await;
    let nobucket = target_phase(
        &c,
        "nobucket",
        BackupTargetPhase::Unreachable,
        Duration::from_secs(60),
    )
    .await;
    target_phase(
        &c,
        "plain",
        BackupTargetPhase::Ready,
        Duration::from_secs(60),
    )
    .await;
    let tenant_secret = target_phase(
        &c,
        "tenant-secret",
        BackupTargetPhase::Denied,
        Duration::from_secs(60),
    )
    .await;
    println!("[s17] denied: {denied}\n[s17] nowhere: {nowhere}\n[s17] nobucket: {nobucket}");
    println!("[s17] tenant-secret: {tenant_secret}");
    c.check(
        denied.starts_with("Denied:") && denied.contains("SignatureDoesNotMatch"),
        "wrong credentials are told with the service's own error",
    );
    c.check(
        tenant_secret.starts_with("SecretUnreadable") && tenant_secret.contains("forbidden"),
        "a Secret outside the namespaces the chart grants is not read, and the target says so",
    );
    c.check(
        nobucket.starts_with("NoSuchBucket"),
        "a missing bucket is told as such",
    );

    // A project backing up to the refused target: BackedUp=False, still served.
    c.create_project(
        NS,
        "notes",
        json!({"quota": "50Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
            "backup": {"target": "denied"}}),
    )
    .await;
    let mount = c.mount_path_when_ready(NS, "notes").await;
    std::fs::write(mount.join("a.txt"), b"first").unwrap();
    let (_, first) = snapshot(&c, "notes", 1).await;
    annotate(&c, "notes", "projstore.io/backup-now", "1").await;
    let why = c
        .wait("BackedUp=False", Duration::from_secs(60), || async {
            let st = c.project_status(NS, "notes").await?;
            st.conditions
                .iter()
                .find(|c| {
                    c.type_ == "BackedUp" && c.status == "False" && c.reason == "BackupFailed"
                })
                .map(|c| c.message.clone())
                .ok_or_else(|| format!("{:?}", st.backup))
        })
        .await;
    println!("[s17] backup to a refused target: {why}");
    c.wait_event(NS, "BackupFailed", "notes").await;
    let st = c.project_status(NS, "notes").await.unwrap();
    c.check(
        st.phase == Some(projstore_api::ProjectPhase::Ready),
        "the project stays Ready",
    );
    c.check(
        std::fs::read(mount.join("a.txt")).unwrap() == b"first",
        "the project's data is untouched",
    );
    c.check(
        s3.objects(BUCKET, "").is_empty(),
        "nothing was written to the bucket",
    );

    // Switched to the usable, unencrypted target: two backups, then a restore of the first.
    c.patch_project(
        NS,
        "notes",
        json!({"spec": {"backup": {"target": "plain"}}}),
    )
    .await;
    annotate(&c, "notes", "projstore.io/backup-now", "2").await;
    backed_up(&c, "notes", &first, Duration::from_secs(120)).await;
    std::fs::write(mount.join("a.txt"), b"second").unwrap();
    let (_, second) = snapshot(&c, "notes", 1).await;
    annotate(&c, "notes", "projstore.io/backup-now", "3").await;
    backed_up(&c, "notes", &second, Duration::from_secs(120)).await;
    c.check(
        stream_objects(&s3, "notes").len() == 2,
        "a full stream and an increment",
    );
    c.create_project(
        NS,
        "notes-then",
        json!({"quota": "50Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
            "restoreFrom": {"target": "plain", "namespace": NS, "name": "notes", "snapshot": first}}),
    )
    .await;
    // Another namespace's backups are not this namespace's to read.
    c.create_project(
        NS,
        "stolen",
        json!({"quota": "50Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
            "restoreFrom": {"target": "plain", "namespace": "kube-system", "name": "notes"}}),
    )
    .await;
    refused(
        &c,
        "stolen",
        "a restore from another namespace refused",
        &["only backups of namespace default"],
    )
    .await;
    let then = c.mount_path_when_ready(NS, "notes-then").await;
    c.check(
        std::fs::read(then.join("a.txt")).unwrap() == b"first",
        "the chosen snapshot was restored",
    );
    // `keep` lets every restore point but the newest go: a full stream of the newest
    // replaces the chain, and the bridged streams are removed.
    c.patch_project(
        NS,
        "notes",
        json!({"spec": {"backup": {"keep": {"daily": 0, "weekly": 0, "monthly": 0}}}}),
    )
    .await;
    annotate(&c, "notes", "projstore.io/backup-now", "4").await;
    let want = format!("cluster-a/{NS}/notes/full--{second}.zstream");
    c.wait(
        "the bucket keeps only the newest restore point",
        Duration::from_secs(120),
        || async {
            let now: Vec<String> = stream_objects(&s3, "notes")
                .into_iter()
                .map(|o| o.0)
                .collect();
            if now == [want.clone()] {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
}

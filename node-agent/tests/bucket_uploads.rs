//! Uploads no host finished are aborted from the bucket's own record, by whichever host backs
//! up next: against a real `s3s-fs` and real `zfs send`s, host A's upload is cut off after
//! its first part (its state file lost with the host), host B uploads the same snapshot, and
//! B's next clean-up aborts A's upload (its parts leave the service) once the record is old
//! enough, and never an upload the record does not name as this project's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};
use object_store::multipart::MultipartStore;
use projstore_agent::backup::bucket::{Bucket, Upload};
use projstore_agent::streams::{Manifest, SnapshotJson, StreamId};
use projstore_agent::zfs::{Progress, PropertyName, SendFlags};
use projstore_api::BackupTargetSpec;
use projstore_api::s3::{Credentials, Patience};
use projstore_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use sha2::Digest;
use support::{TestPool, write_tree, zfs_or_skip};

/// The part files `s3s-fs` keeps for multipart upload `id` (in its root).
fn parts_of(root: &Path, id: &str) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".upload_id-{id}.part-"))
        })
        .count()
}

/// The upload ids of the part files `s3s-fs` keeps.
fn uploads_with_parts(root: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let (id, _) = n.strip_prefix(".upload_id-")?.split_once(".part-")?;
            Some(id.to_owned())
        })
        .collect()
}

async fn records(store: &object_store::aws::AmazonS3) -> Vec<String> {
    let listing = store
        .list_with_delimiter(Some(&object_store::path::Path::from("ns/p/uploads")))
        .await
        .unwrap();
    listing
        .objects
        .iter()
        .map(|m| m.location.to_string())
        .collect()
}

#[tokio::test]
async fn an_upload_no_host_finished_is_aborted_by_the_next_backup_from_its_record() {
    let Some(zfs) = zfs_or_skip("bucket_uploads").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    let Some(s3) = S3Server::start(&s3_root, "ups").unwrap() else {
        assert!(
            std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
            "s3s-fs is required (make test installs it) but missing"
        );
        eprintln!("SKIP: no s3s-fs");
        return;
    };
    let pool = TestPool::new(&zfs, 512 << 20).await;
    let live = pool.name.dataset("live").unwrap();
    let mountpoint = pool.path("live");
    zfs.create(
        &live,
        &[(
            PropertyName::parse("mountpoint").unwrap(),
            mountpoint.to_str().unwrap().into(),
        )],
    )
    .await
    .unwrap();
    // Incompressible data of more than two parts (8 MiB each).
    write_tree(&mountpoint.join("t"), 7, 20 << 20);
    let snap = live.snapshot("s1").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();
    let info = zfs.snapshot_info(&snap).await.unwrap();

    let spec = BackupTargetSpec {
        endpoint: s3.endpoint.trim_end_matches('/').to_owned(),
        region: "us-east-1".into(),
        bucket: "ups".into(),
        prefix: None,
        credentials_secret: projstore_api::SecretRef {
            namespace: "x".into(),
            name: "x".into(),
        },
        encryption_key_secret: None,
        verify_interval_days: 7,
    };
    let creds = Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
    };
    let store = projstore_api::s3::store(&spec, &creds, Patience::Transfer).unwrap();
    let bucket = Bucket::new(
        store.clone(),
        object_store::path::Path::from("ns/p"),
        None,
        "ns/p".into(),
    );
    let id = StreamId::for_snapshots(None, "s1").unwrap();
    let upload = |host: &str, hold: Option<std::path::PathBuf>| Upload {
        zfs: &zfs,
        id: &id,
        snap: &snap,
        from: None,
        flags: SendFlags::default(),
        manifest: Manifest {
            project: "ns/p".into(),
            from: None,
            to: SnapshotJson {
                name: "s1".into(),
                guid: info.guid.to_string(),
                createtxg: info.createtxg,
                time: info.creation,
            },
            epoch: 1,
            bytes: 0,
            sha256: String::new(),
            created_at: "2026-11-30T00:00:00Z".into(),
            node: host.into(),
        },
        state_file: dir.path().join(host).join("pool.ns.p.full--s1.json"),
        hold,
        bound: 64 << 20,
    };

    // Host A: held after its first part, then lost (its task dropped, its state with it).
    let hold = dir.path().join("hold-a");
    std::fs::write(&hold, b"").unwrap();
    let a = upload("host-a", Some(hold.clone()));
    let progress = Progress::default();
    let a_upload = bucket.upload(&a, &progress);
    let a_id = tokio::select! {
        r = a_upload => panic!("host A's upload ended while held: {r:?}"),
        id = async {
            loop {
                if let Some(id) = uploads_with_parts(&s3_root).into_iter().next() {
                    break id;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } => id,
    };
    std::fs::remove_file(&hold).unwrap();
    std::fs::remove_dir_all(dir.path().join("host-a")).unwrap();
    assert!(parts_of(&s3_root, &a_id) >= 1);
    assert_eq!(
        records(&store).await.len(),
        1,
        "host A's upload is recorded"
    );

    // Another project's upload, recorded (by a forger) under this project's records: never
    // aborted from here.
    let other = object_store::path::Path::from("ns/q/full--s1.zstream");
    let other_id = store.create_multipart(&other).await.unwrap();
    store
        .put_part(&other, &other_id, 0, vec![1u8; 5 << 20].into())
        .await
        .unwrap();
    let digest = hex::encode(sha2::Sha256::digest(other_id.as_bytes()));
    store
        .put(
            &object_store::path::Path::from(format!("ns/p/uploads/{}.json", &digest[..32])),
            serde_json::to_vec(&serde_json::json!({
                "object": other.to_string(), "uploadId": other_id, "node": "forger"}))
            .unwrap()
            .into(),
        )
        .await
        .unwrap();

    // Host B uploads the same snapshot whole: its own record goes once it is complete.
    let b = upload("host-b", None);
    let m = bucket.upload(&b, &Progress::default()).await.unwrap();
    assert!(m.stream.bytes > 16 << 20);
    assert_eq!(
        records(&store).await.len(),
        2,
        "A's and the forged record stay"
    );
    let streams = bucket.streams().await.unwrap();
    assert_eq!(streams.len(), 1, "the records are not part of the chain");

    // Too young: left alone (the uploading copy may have just changed).
    let b_dir = dir.path().join("host-b");
    bucket
        .abandon_other_uploads(&b_dir, "pool.ns.p.", Duration::from_secs(600))
        .await;
    assert!(
        parts_of(&s3_root, &a_id) >= 1,
        "a young record is left alone"
    );
    // Old enough: A's upload is aborted and its record removed; the forged one is not acted on.
    bucket
        .abandon_other_uploads(&b_dir, "pool.ns.p.", Duration::ZERO)
        .await;
    assert_eq!(
        parts_of(&s3_root, &a_id),
        0,
        "host A's parts left the service"
    );
    assert_eq!(
        parts_of(&s3_root, &other_id),
        1,
        "another project's upload is never aborted"
    );
    let left = records(&store).await;
    assert_eq!(left.len(), 1, "only the forged record is left: {left:?}");
    assert!(left[0].contains(&digest[..32]));
    assert_eq!(bucket.streams().await.unwrap().len(), 1);
    drop(s3);
}

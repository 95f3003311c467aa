//! Uploads no host finished are aborted from the bucket's own record, by whichever host backs
//! up next: against a real `s3s-fs` and real `zfs send`s, host A's upload is cut off after
//! its first part (its state file lost with the host), host B uploads the same snapshot, and
//! B's next clean-up aborts A's upload (its parts leave the service) once the record is old
//! enough, and never an upload the record does not name as this project's. A record is
//! written again while its upload stores parts (as often as asked) and removed when the upload
//! completes, as the service saw the requests; an upload the service refuses ends with its
//! `zfs send`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::{ObjectStore, ObjectStoreExt};
use projstore_agent::backup::bucket::{Bucket, Upload};
use projstore_agent::backup::seal::SealKey;
use projstore_agent::streams::{Manifest, SnapshotJson, StreamId};
use projstore_agent::zfs::{Progress, PropertyName, SendFlags, SnapshotInfo, SnapshotName, Zfs};
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
    records_under(store, "ns/p").await
}

/// The upload records under project root `root`.
async fn records_under(store: &object_store::aws::AmazonS3, root: &str) -> Vec<String> {
    let listing = store
        .list_with_delimiter(Some(&object_store::path::Path::from(format!(
            "{root}/uploads"
        ))))
        .await
        .unwrap();
    listing
        .objects
        .iter()
        .map(|m| m.location.to_string())
        .collect()
}

/// Dataset `live` of `pool` with `bytes` of incompressible files, snapshot `s1` of it.
async fn snapshot_of_data(
    zfs: &Zfs,
    pool: &TestPool,
    bytes: usize,
) -> (SnapshotName, SnapshotInfo) {
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
    write_tree(&mountpoint.join("t"), 7, bytes);
    let snap = live.snapshot("s1").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();
    let info = zfs.snapshot_info(&snap).await.unwrap();
    (snap, info)
}

/// The test bucket `ups` of the S3 service at `endpoint`.
fn store_at(endpoint: &str) -> std::sync::Arc<object_store::aws::AmazonS3> {
    let spec = BackupTargetSpec {
        endpoint: endpoint.to_owned(),
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
    projstore_api::s3::store(&spec, &creds, Patience::Transfer).unwrap()
}

/// Host `host`'s upload of full stream `id` of `snap` (its state file under `dir/<host>`).
fn upload_of<'a>(
    zfs: &'a Zfs,
    id: &'a StreamId,
    snap: &'a SnapshotName,
    info: &SnapshotInfo,
    host: &str,
    dir: &Path,
    hold: Option<std::path::PathBuf>,
) -> Upload<'a> {
    Upload {
        zfs,
        id,
        snap,
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
        state_file: dir.join(host).join("pool.ns.p.full--s1.json"),
        hold,
        bound: 64 << 20,
    }
}

/// A relay on loopback in front of `upstream` that refuses (403) every part upload but the
/// first, as a service whose credentials were revoked mid-upload would.
async fn refusing_relay(upstream: String) -> String {
    relay(upstream, true, Arc::default()).await
}

/// A relay on loopback in front of `upstream` that notes each request (method and path) in
/// `seen`, and with `refuse_later_parts` refuses (403) every part upload but the first.
async fn relay(
    upstream: String,
    refuse_later_parts: bool,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) -> String {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let upstream = upstream.clone();
                        let seen = seen.clone();
                        async move {
                            seen.lock()
                                .unwrap()
                                .push((req.method().to_string(), req.uri().path().to_owned()));
                            let query = req.uri().query().unwrap_or_default().to_owned();
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let later_part = refuse_later_parts
                                && parts.method == hyper::Method::PUT
                                && query.contains("partNumber=")
                                && !query.split('&').any(|q| q == "partNumber=1");
                            if later_part {
                                let mut r = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                                    b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>",
                                )));
                                *r.status_mut() = hyper::StatusCode::FORBIDDEN;
                                return Ok::<_, hyper::Error>(r);
                            }
                            let sock = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                            let (mut sender, conn) =
                                hyper::client::conn::http1::handshake(TokioIo::new(sock))
                                    .await
                                    .unwrap();
                            tokio::spawn(conn);
                            let resp = sender
                                .send_request(hyper::Request::from_parts(parts, Full::new(body)))
                                .await?;
                            let (parts, body) = resp.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok(hyper::Response::from_parts(parts, Full::new(body)))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// ZFS, a scratch directory, `s3s-fs` serving bucket `ups` from `<dir>/s3`, and a test
/// pool; None (the test skips) when ZFS or `s3s-fs` is missing, unless they are required.
async fn zfs_s3_and_pool() -> Option<(Zfs, tempfile::TempDir, S3Server, TestPool)> {
    let zfs = zfs_or_skip("bucket_uploads").await?;
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(&dir.path().join("s3"), "ups").unwrap() else {
        assert!(
            std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
            "s3s-fs is required (make test installs it) but missing"
        );
        eprintln!("SKIP: no s3s-fs");
        return None;
    };
    let pool = TestPool::new(&zfs, 512 << 20).await;
    Some((zfs, dir, s3, pool))
}

/// Project `ns/p`'s place at `root` in the bucket of `store`.
fn project_bucket(
    store: &std::sync::Arc<object_store::aws::AmazonS3>,
    root: impl Into<String>,
    key: Option<SealKey>,
) -> Bucket {
    let root: String = root.into();
    Bucket::new(
        store.clone(),
        object_store::path::Path::from(root),
        key,
        "ns/p".into(),
    )
}

/// `host:port` of the service.
fn host_port(s3: &S3Server) -> String {
    s3.endpoint
        .trim_end_matches('/')
        .trim_start_matches("http://")
        .to_owned()
}

/// The `zfs send` processes of `pool` still running.
fn sends_of(pool: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" send ") && c.contains(pool))
        .count()
}

#[tokio::test]
async fn an_upload_the_service_refuses_ends_with_its_zfs_send() {
    let Some((zfs, dir, s3, pool)) = zfs_s3_and_pool().await else {
        return;
    };
    let (snap, info) = snapshot_of_data(&zfs, &pool, 40 << 20).await;
    let upstream = host_port(&s3);
    let store = store_at(&refusing_relay(upstream).await);
    let bucket = project_bucket(&store, "ns/p", None);
    let id = StreamId::for_snapshots(None, "s1").unwrap();
    let up = upload_of(&zfs, &id, &snap, &info, "host-a", dir.path(), None);
    // Five parts' worth of stream: the second part is refused while `zfs send` still has far
    // more to give than the pipe and the channel hold. The upload must end, and its send with
    // it, instead of waiting on each other.
    let ended = tokio::time::timeout(
        Duration::from_secs(180),
        bucket.upload(&up, &Progress::default()),
    )
    .await
    .expect("an upload whose part was refused must end, not hang");
    let e = ended.expect_err("a refused part fails the upload");
    println!("refused: {e}");
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = sends_of(pool.name.as_str());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the upload's zfs send ended with it");
    assert!(
        bucket.streams().await.unwrap().is_empty(),
        "nothing of it is a stream"
    );
    drop(s3);
}

#[tokio::test]
async fn an_uploads_record_is_written_again_while_it_stores_parts_and_removed_when_it_completes() {
    let Some((zfs, dir, s3, pool)) = zfs_s3_and_pool().await else {
        return;
    };
    // Five parts' worth of incompressible stream (8 MiB parts).
    let (snap, info) = snapshot_of_data(&zfs, &pool, 36 << 20).await;
    let upstream = host_port(&s3);
    let id = StreamId::for_snapshots(None, "s1").unwrap();
    // Record writes, as the service saw them (removals go in batches: the listing tells).
    let record_requests = |seen: &Mutex<Vec<(String, String)>>, method: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == method && p.contains("/uploads/") && p.ends_with(".json"))
            .count()
    };
    for (every, host) in [
        (Duration::ZERO, "host-a"),
        (Duration::from_secs(3600), "host-b"),
    ] {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let store = store_at(&relay(upstream.clone(), false, seen.clone()).await);
        let bucket = project_bucket(&store, format!("ns/p/{host}"), None).record_every(every);
        let up = upload_of(&zfs, &id, &snap, &info, host, dir.path(), None);
        bucket.upload(&up, &Progress::default()).await.unwrap();
        let puts = record_requests(&seen, "PUT");
        println!("record refreshed every {every:?}: {puts} writes");
        if every.is_zero() {
            // Written when it began, then after each part but the last.
            assert!(
                puts >= 5,
                "the record was written {puts} times for five parts"
            );
        } else {
            assert_eq!(
                puts, 1,
                "written once when it began, not again within the hour"
            );
        }
        assert!(
            records_under(&store, &format!("ns/p/{host}"))
                .await
                .is_empty(),
            "the record was removed when the upload completed"
        );
        assert_eq!(bucket.streams().await.unwrap().len(), 1, "the stream is up");
    }
    drop(s3);
}

#[tokio::test]
async fn an_upload_no_host_finished_is_aborted_by_the_next_backup_from_its_record() {
    abandoned_uploads(None).await;
}

#[tokio::test]
async fn an_upload_no_host_finished_is_aborted_also_from_its_sealed_record() {
    abandoned_uploads(Some(SealKey::new(&[7u8; 32]).unwrap())).await;
}

async fn abandoned_uploads(key: Option<SealKey>) {
    let sealed = key.is_some();
    let Some((zfs, dir, s3, pool)) = zfs_s3_and_pool().await else {
        return;
    };
    let s3_root = dir.path().join("s3");
    // Incompressible data of more than two parts (8 MiB each).
    let (snap, info) = snapshot_of_data(&zfs, &pool, 20 << 20).await;
    let store = store_at(s3.endpoint.trim_end_matches('/'));
    let bucket = project_bucket(&store, "ns/p", key);
    let id = StreamId::for_snapshots(None, "s1").unwrap();
    let upload = |host: &str, hold: Option<std::path::PathBuf>| {
        upload_of(&zfs, &id, &snap, &info, host, dir.path(), hold)
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
    let recorded = records(&store).await;
    assert_eq!(recorded.len(), 1, "host A's upload is recorded");
    // Another node sees A's upload running from its young record, and waits; A does not.
    let five = Duration::from_secs(300);
    assert_eq!(
        bucket.uploading_elsewhere("host-b", five).await,
        Some(("host-a".into(), "ns/p/full--s1.zstream".into()))
    );
    assert_eq!(bucket.uploading_elsewhere("host-a", five).await, None);
    assert_eq!(
        bucket.uploading_elsewhere("host-b", Duration::ZERO).await,
        None,
        "an old record is no upload running"
    );
    let text = store
        .get(&object_store::path::Path::from(recorded[0].as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        text.windows(6).any(|w| w == b"host-a"),
        !sealed,
        "a record is sealed exactly when the target has a key"
    );

    // Uploads a forger recorded under this project's records: of a sibling project, of an
    // object nested below this project's root, and one of this project's own object recorded
    // under a name that is not its upload id's digest. None is aborted from here.
    let mut forged = Vec::new();
    for (object, named_right) in [
        ("ns/pq/full--s1.zstream", true),
        ("ns/p/x/full--s1.zstream", true),
        ("ns/p/full--s1.zstream", false),
    ] {
        let at = object_store::path::Path::from(object);
        let upload_id = store.create_multipart(&at).await.unwrap();
        store
            .put_part(&at, &upload_id, 0, vec![1u8; 5 << 20].into())
            .await
            .unwrap();
        let digest = hex::encode(sha2::Sha256::digest(if named_right {
            upload_id.as_bytes()
        } else {
            b"another upload id"
        }));
        store
            .put(
                &object_store::path::Path::from(format!("ns/p/uploads/{}.json", &digest[..32])),
                serde_json::to_vec(&serde_json::json!({
                    "object": object, "uploadId": upload_id, "node": "forger\nFAKE LOG LINE"}))
                .unwrap()
                .into(),
            )
            .await
            .unwrap();
        forged.push((object, upload_id));
    }

    // Host B uploads the same snapshot whole: its own record goes once it is complete.
    let b = upload("host-b", None);
    let m = bucket.upload(&b, &Progress::default()).await.unwrap();
    assert!(m.stream.bytes > 16 << 20);
    assert_eq!(
        records(&store).await.len(),
        4,
        "A's and the forged records stay"
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
    for (object, upload_id) in &forged {
        assert_eq!(
            parts_of(&s3_root, upload_id),
            1,
            "the upload of {object} a forged record names is not aborted"
        );
    }
    let left = records(&store).await;
    assert_eq!(left.len(), 3, "only the forged records are left: {left:?}");
    assert_eq!(bucket.streams().await.unwrap().len(), 1);
    drop(s3);
}

//! `make bench` for offsite backups (issue: upload and restore throughput ≥ 0.7 of raw):
//! a 256 MiB snapshot uploaded to a real S3-compatible server on loopback (`s3s-fs`, SigV4)
//! — `zfs send` straight into a multipart upload, sealed with AES-256-GCM and without a key
//! — against a raw `zfs send` of the same snapshot into a local file; and restored from the
//! bucket (download, open, SHA-256, `zfs recv` with the tail held back) against a raw
//! `zfs recv` from that file. Ratios from 3 alternating rounds in one run (medians). Needs
//! root, ZFS and s3s-fs; says so and is skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: fail loudly

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use projstore_agent::backup::bucket::{Bucket, Upload};
use projstore_agent::backup::restore::receive_chain;
use projstore_agent::backup::seal::SealKey;
use projstore_agent::layout::{NewProject, PoolLayout, create_project, ensure_layout};
use projstore_agent::streams::{Manifest, ProjectKey, SnapshotJson, StreamId};
use projstore_agent::zfs::{PoolName, Progress, SendFlags, Vdev, Zfs};
use projstore_api::BackupTargetSpec;
use projstore_api::s3::{Credentials, Patience};
use projstore_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

const MIB: u64 = 1 << 20;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

struct Pool(String);
impl Drop for Pool {
    fn drop(&mut self) {
        for _ in 0..40 {
            if Command::new("zpool")
                .args(["destroy", "-f", &self.0])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn bench() {
    let zfs = match Zfs::detect().await {
        Ok(z) => z,
        Err(e) => {
            println!("backup throughput: skipped, no usable ZFS here ({e})");
            return;
        }
    };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // Another S3-compatible server to measure against, when one is named: its endpoint, and
    // an access key with its secret that may write its bucket `bench`.
    let other = std::env::var("PROJSTORE_BENCH_S3").ok();
    let (endpoint, creds, server, _s3) = match other
        .as_deref()
        .map(|o| o.splitn(3, ',').collect::<Vec<_>>())
    {
        Some(v) if v.len() == 3 => (
            v[0].to_owned(),
            Credentials {
                access_key_id: v[1].into(),
                secret_access_key: v[2].into(),
            },
            v[0].to_owned(),
            None,
        ),
        Some(_) => panic!("PROJSTORE_BENCH_S3 is ENDPOINT,ACCESS_KEY,SECRET_KEY"),
        None => {
            let Some(s3) = S3Server::start(&dir.path().join("s3"), "bench").unwrap() else {
                println!("backup throughput: skipped, no s3s-fs (make test installs it)");
                return;
            };
            (
                s3.endpoint.clone(),
                Credentials {
                    access_key_id: ACCESS_KEY.into(),
                    secret_access_key: SECRET_KEY.into(),
                },
                "s3s-fs".to_owned(),
                Some(s3),
            )
        }
    };
    let name = format!("psbackup{}", std::process::id());
    let _cleanup = Pool(name.clone());
    let pool = PoolName::parse(&name).unwrap();
    let img = dir.path().join("pool.img");
    zfs.pool_create(
        &pool,
        &[Vdev::new(img.to_str().unwrap(), Some(2048 * MIB)).unwrap()],
        &[],
    )
    .await
    .unwrap();
    let layout = PoolLayout::new(pool.clone());
    ensure_layout(&zfs, &layout, &dir.path().join("streams"))
        .await
        .unwrap();
    let key = ProjectKey::new("bench", "data").unwrap();
    let mp = dir.path().join("mnt");
    let ds = create_project(
        &zfs,
        &layout,
        &NewProject {
            key: &key,
            mountpoint: &mp,
            quota_bytes: 900 * MIB,
            uid: 1000,
            gid: 1000,
            epoch: 1,
        },
    )
    .await
    .unwrap();
    let size = 256 * MIB;
    let noise: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    std::fs::write(mp.join("noise"), &noise).unwrap();
    drop(noise);
    let snap = ds.snapshot("bench").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();
    let info = zfs.snapshot_info(&snap).await.unwrap();

    let spec = BackupTargetSpec {
        endpoint: endpoint.clone(),
        region: "us-east-1".into(),
        bucket: "bench".into(),
        prefix: None,
        credentials_secret: projstore_api::SecretRef {
            namespace: "x".into(),
            name: "x".into(),
        },
        encryption_key_secret: None,
        verify_interval_days: 7,
    };
    let store = projstore_api::s3::store(&spec, &creds, Patience::Transfer).unwrap();
    let buckets = [
        (
            "sealed",
            Bucket::new(
                store.clone(),
                object_store::path::Path::from("sealed/bench/data"),
                Some(SealKey::new(&[7u8; 32]).unwrap()),
                "bench/data".into(),
            ),
        ),
        (
            "plain",
            Bucket::new(
                store.clone(),
                object_store::path::Path::from("plain/bench/data"),
                None,
                "bench/data".into(),
            ),
        ),
    ];
    let id = StreamId::for_snapshots(None, "bench").unwrap();
    let json = SnapshotJson {
        name: info.name.clone(),
        guid: info.guid.to_string(),
        createtxg: info.createtxg,
        time: info.creation,
    };
    let file = dir.path().join("raw.zstream");
    let (mut raw_send, mut raw_recv) = (Vec::new(), Vec::new());
    let mut up: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut down: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut stored = [0u64; 2];
    for round in 0..3 {
        // Raw: zfs send into a local file, zfs recv from it.
        let t = Instant::now();
        let out = std::fs::File::create(&file).unwrap();
        let ok = Command::new("zfs")
            .args(["send", &snap.full()])
            .stdout(Stdio::from(out))
            .status()
            .unwrap();
        assert!(ok.success());
        raw_send.push(t.elapsed());
        let target = format!("{name}/raw{round}");
        let t = Instant::now();
        let ok = Command::new("zfs")
            .args(["recv", "-u", &target])
            .stdin(Stdio::from(std::fs::File::open(&file).unwrap()))
            .status()
            .unwrap();
        assert!(ok.success());
        raw_recv.push(t.elapsed());
        let _ = Command::new("zfs")
            .args(["destroy", "-r", &target])
            .status();

        for (i, (what, bucket)) in buckets.iter().enumerate() {
            let t = Instant::now();
            let m = bucket
                .upload(
                    &Upload {
                        zfs: &zfs,
                        id: &id,
                        snap: &snap,
                        from: None,
                        flags: SendFlags::default(),
                        manifest: Manifest {
                            project: "bench/data".into(),
                            from: None,
                            to: json.clone(),
                            epoch: 1,
                            bytes: 0,
                            sha256: String::new(),
                            created_at: String::new(),
                            node: "bench".into(),
                        },
                        state_file: dir.path().join(format!("upload-{what}.json")),
                        hold: None,
                        bound: size,
                    },
                    &Progress::new(),
                )
                .await
                .unwrap();
            up[i].push(t.elapsed());
            stored[i] = m.stored_bytes;
            let chain = bucket.streams().await.unwrap();
            let staging = pool.dataset(&format!("restore-{what}{round}")).unwrap();
            let t = Instant::now();
            receive_chain(&zfs, bucket, &key, &chain, &staging, &Progress::new(), None)
                .await
                .unwrap();
            down[i].push(t.elapsed());
            let _ = Command::new("zfs")
                .args(["destroy", "-r", staging.as_str()])
                .status();
        }
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    let (rs, rr) = (median(raw_send), median(raw_recv));
    println!(
        "backup: a {} MiB snapshot ({:.0} MiB stream) on {}, {server} on loopback; raw zfs send > file {:.2} s, raw zfs recv < file {:.2} s",
        size / MIB,
        bytes as f64 / MIB as f64,
        zfs.capabilities().implementation.as_str(),
        rs.as_secs_f64(),
        rr.as_secs_f64()
    );
    for (i, (what, _)) in buckets.iter().enumerate() {
        let (u, d) = (median(up[i].clone()), median(down[i].clone()));
        println!(
            "backup {what}: upload {:.2} s ({:.0} MiB/s, {} bytes stored) ratio {:.2} (goal >= 0.7); restore {:.2} s ratio {:.2} (goal >= 0.7); medians of 3 alternating rounds",
            u.as_secs_f64(),
            bytes as f64 / MIB as f64 / u.as_secs_f64(),
            stored[i],
            rs.as_secs_f64() / u.as_secs_f64(),
            d.as_secs_f64(),
            rr.as_secs_f64() / d.as_secs_f64()
        );
    }
    server_floor(&store, &server, &file, &name, rs, rr).await;
}

/// What the S3 server alone takes on this machine: the raw stream file, already written,
/// put as a multipart upload of [`PART`]-sized parts, two in flight (as an upload does), and
/// in one PUT (which a stream of unknown length cannot use, but which needs no assembly at
/// completion); read back whole in ranges of 8 MiB, four in flight (as a restore does), and
/// in one GET — no `zfs`, no sealing, no hashing of ours. The faster of each pair, against
/// the raw `zfs` times, estimates the best ratios this server allows here. And the ranges
/// piped straight into `zfs recv` (nothing checked): a restore's floor with this server.
async fn server_floor(
    store: &object_store::aws::AmazonS3,
    server: &str,
    file: &std::path::Path,
    pool: &str,
    raw_send: Duration,
    raw_recv: Duration,
) {
    use futures::StreamExt;
    use object_store::{ObjectStoreExt, WriteMultipart};
    let data = bytes::Bytes::from(std::fs::read(file).unwrap());
    let (mut puts, mut gets, mut whole_puts, mut whole_gets, mut piped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let path = object_store::path::Path::from(format!("floor/raw{round}"));
        let t = Instant::now();
        let upload = store.put_multipart(&path).await.unwrap();
        let mut w =
            WriteMultipart::new_with_chunk_size(upload, projstore_agent::backup::bucket::PART);
        for part in data.chunks(projstore_agent::backup::bucket::PART) {
            w.wait_for_capacity(2).await.unwrap();
            w.put(data.slice_ref(part));
        }
        w.finish().await.unwrap();
        puts.push(t.elapsed());
        let t = Instant::now();
        let len = data.len() as u64;
        let got: u64 = ranged(store, &path, len)
            .fold(0, |n, b| async move { n + b.len() as u64 })
            .await;
        assert_eq!(got, len);
        gets.push(t.elapsed());
        // The same ranges, in order, straight into zfs recv.
        let target = format!("{pool}/floor{round}");
        let t = Instant::now();
        let mut recv = tokio::process::Command::new("zfs")
            .args(["recv", "-u", &target])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = recv.stdin.take().unwrap();
        let mut ranges = std::pin::pin!(ranged(store, &path, len));
        while let Some(b) = ranges.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &b)
                .await
                .unwrap();
        }
        drop(stdin);
        assert!(recv.wait().await.unwrap().success());
        piped.push(t.elapsed());
        let _ = Command::new("zfs")
            .args(["destroy", "-r", &target])
            .status();
        store.delete(&path).await.unwrap();
        let t = Instant::now();
        store.put(&path, data.clone().into()).await.unwrap();
        whole_puts.push(t.elapsed());
        let t = Instant::now();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len() as u64, len);
        whole_gets.push(t.elapsed());
        store.delete(&path).await.unwrap();
    }
    let (put, get) = (median(puts), median(gets));
    let (whole_put, whole_get, piped) = (median(whole_puts), median(whole_gets), median(piped));
    println!(
        "backup floor ({server} alone, the same stream file, no zfs/sealing/hashing of ours): multipart put {:.2} s, one put {:.2} s, ranged get {:.2} s, one get {:.2} s; ranges piped into zfs recv {:.2} s; the best ratios this server allows here: upload {:.2}, restore {:.2} (goal >= 0.7)",
        put.as_secs_f64(),
        whole_put.as_secs_f64(),
        get.as_secs_f64(),
        whole_get.as_secs_f64(),
        piped.as_secs_f64(),
        raw_send.as_secs_f64() / put.min(whole_put).as_secs_f64(),
        raw_recv.as_secs_f64() / piped.as_secs_f64(),
    );
}

/// The `len` bytes of `path`, read in ranges of 8 MiB, four in flight, in order (as a restore
/// reads an object).
fn ranged<'a>(
    store: &'a object_store::aws::AmazonS3,
    path: &'a object_store::path::Path,
    len: u64,
) -> impl futures::Stream<Item = bytes::Bytes> + 'a {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    futures::stream::iter(
        (0..len)
            .step_by(8 << 20)
            .map(move |at| at..(at + (8 << 20)).min(len)),
    )
    .map(move |r| async move { store.get_range(path, r).await.unwrap() })
    .buffered(4)
}

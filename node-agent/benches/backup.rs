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
    let Some(s3) = S3Server::start(&dir.path().join("s3"), "bench").unwrap() else {
        println!("backup throughput: skipped, no s3s-fs (make test installs it)");
        return;
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
        endpoint: s3.endpoint.clone(),
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
    let creds = Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
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
        "backup: a {} MiB snapshot ({:.0} MiB stream) on {}, s3s-fs on loopback; raw zfs send > file {:.2} s, raw zfs recv < file {:.2} s",
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
    server_floor(&store, &file, rs, rr).await;
}

/// What the S3 server alone allows on this machine: the raw stream file, already written,
/// put as a multipart upload of [`PART`]-sized parts, two in flight (as an upload does), and
/// read back whole in ranges of 8 MiB, four in flight (as a restore does) — no `zfs`, no
/// sealing, no hashing of ours. The upload (or restore) cannot be faster than this, so its
/// ratio here bounds theirs.
async fn server_floor(
    store: &object_store::aws::AmazonS3,
    file: &std::path::Path,
    raw_send: Duration,
    raw_recv: Duration,
) {
    use futures::StreamExt;
    use object_store::{ObjectStoreExt, WriteMultipart};
    let data = bytes::Bytes::from(std::fs::read(file).unwrap());
    let (mut puts, mut gets) = (Vec::new(), Vec::new());
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
        let ranges: Vec<_> = (0..len)
            .step_by(8 << 20)
            .map(|at| at..(at + (8 << 20)).min(len))
            .collect();
        let got: u64 = futures::stream::iter(ranges)
            .map(|r| {
                let path = path.clone();
                async move { store.get_range(&path, r).await.unwrap().len() as u64 }
            })
            .buffered(4)
            .fold(0, |n, m| async move { n + m })
            .await;
        assert_eq!(got, len);
        gets.push(t.elapsed());
        store.delete(&path).await.unwrap();
    }
    let (put, get) = (median(puts), median(gets));
    println!(
        "backup floor (s3s-fs alone, the same stream file, no zfs/sealing/hashing of ours): multipart put {:.2} s, ranged get {:.2} s; the best ratios this server allows here: upload {:.2}, restore {:.2} (goal >= 0.7)",
        put.as_secs_f64(),
        get.as_secs_f64(),
        raw_send.as_secs_f64() / put.as_secs_f64(),
        raw_recv.as_secs_f64() / get.as_secs_f64(),
    );
}

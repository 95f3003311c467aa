//! `make bench` for the storage engine: prints each measurement with how it was taken.
//!
//! 1. Planner time on 10,000 streams with forks (goal: under 20 ms).
//! 2. Throughput of one live send (`zfs send` → mutual TLS on loopback → verified `zfs recv`,
//!    DESIGN §5.4) against raw `zfs send | zfs recv` of the same snapshot, measured in the same
//!    run, as a ratio: the data path alone. Replication's own targets, end to end on a dev
//!    cluster, are `e2e/benches/replication.rs`. Needs root and ZFS; says so and is skipped
//!    otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: fail loudly

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use projstore_agent::fetch::Peer;
use projstore_agent::layout::{NewProject, PoolLayout, create_project, ensure_layout};
use projstore_agent::live::{SendRequest, Sources};
use projstore_agent::server::{StreamServer, bind, serve};
use projstore_agent::streams::{Edge, ProjectKey, Snap, StreamStore, plan};
use projstore_agent::tls::NodeTls;
use projstore_agent::zfs::{PoolName, Progress, Vdev, Zfs};

fn main() {
    planner_bench();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(throughput_bench());
}

/// About `n` streams: a main line of incrementals with a fresh full every 30 snapshots (none in
/// the last 25, so the chain ends in a run of incrementals), and a 3-stream fork branching off
/// every 10th snapshot of the first half (forks keep their ancestors; the rest is superseded).
fn graph(n: usize) -> Vec<Edge> {
    let snap = |i: u64| Snap {
        name: format!("s{i}"),
        guid: 1_000_000 + i,
        createtxg: i * 10,
        time: i as i64 * 60,
    };
    // Each main-line snapshot brings 1 + 1/30 + 3/20 streams on average.
    let last = (n as f64 / (1.0 + 1.0 / 30.0 + 0.15)) as u64;
    let mut edges = Vec::with_capacity(n + 8);
    edges.push(Edge {
        id: "full--s1".into(),
        from: None,
        to: snap(1),
        bytes: 1 << 30,
    });
    for i in 1..last {
        let (a, b) = (snap(i), snap(i + 1));
        edges.push(Edge {
            id: format!("s{i}--s{}", i + 1),
            from: Some(a.clone()),
            to: b.clone(),
            bytes: 1 << 20,
        });
        if i.is_multiple_of(30) && i + 25 < last {
            edges.push(Edge {
                id: format!("full--s{}", i + 1),
                from: None,
                to: b,
                bytes: 1 << 30,
            });
        }
        if i.is_multiple_of(10) && i < last / 2 {
            let mut prev = a;
            for k in 0..3u64 {
                let f = Snap {
                    name: format!("f{i}-{k}"),
                    guid: 9_000_000 + i * 10 + k,
                    createtxg: i * 10 + k + 1,
                    time: i as i64 * 60 + 1 + k as i64,
                };
                edges.push(Edge {
                    id: format!("{}--{}", prev.name, f.name),
                    from: Some(prev),
                    to: f.clone(),
                    bytes: 4096,
                });
                prev = f;
            }
        }
    }
    edges
}

fn planner_bench() {
    let edges = graph(10_000);
    let count = edges.len();
    let mut times = Vec::new();
    let mut result = None;
    for _ in 0..21 {
        let t = Instant::now();
        result = Some(plan(&edges).unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    let p = result.unwrap();
    println!(
        "planner: {count} streams (main line, a full every 30, a 3-stream fork every 10 in the first half): median {:.2} ms over 21 runs \
         (min {:.2} ms); chain {} streams, {} deletable; goal < 20 ms",
        ms(times[10]),
        ms(times[0]),
        p.chain.len(),
        p.deletable.len()
    );
}

/// Runs `cmd` (never through a shell) and asserts that it succeeded.
fn succeed(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Pools(Vec<String>);
impl Drop for Pools {
    fn drop(&mut self) {
        for p in &self.0 {
            for _ in 0..40 {
                if Command::new("zpool")
                    .args(["destroy", "-f", p])
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

async fn throughput_bench() {
    let zfs = match Zfs::detect().await {
        Ok(z) => z,
        Err(e) => {
            println!("throughput: skipped, no usable ZFS here ({e})");
            return;
        }
    };
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| format!("psbench{}{s}", std::process::id()))
        .collect();
    let _cleanup = Pools(names.clone());
    let mut layouts = Vec::new();
    for n in &names {
        let pool = PoolName::parse(n).unwrap();
        let img = dir.path().join(format!("{n}.img"));
        zfs.pool_create(
            &pool,
            &[Vdev::new(img.to_str().unwrap(), Some(1024 * MIB)).unwrap()],
            &[],
        )
        .await
        .unwrap();
        let layout = PoolLayout::new(pool);
        ensure_layout(&zfs, &layout, &dir.path().join(format!("{n}-streams")))
            .await
            .unwrap();
        layouts.push(layout);
    }
    let key = ProjectKey::new("bench", "data").unwrap();
    let mp = dir.path().join("mnt");
    let new = NewProject {
        key: &key,
        mountpoint: &mp,
        quota_bytes: 900 * MIB,
        uid: 1000,
        gid: 1000,
        epoch: 1,
    };
    let ds = create_project(&zfs, &layouts[0], &new).await.unwrap();
    let size = 96 * MIB;
    let noise: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    std::fs::write(mp.join("noise"), &noise).unwrap();
    let snap = ds.snapshot("bench").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();

    let guid = zfs
        .snapshots(&ds, &[])
        .await
        .unwrap()
        .iter()
        .find(|s| s.name == "bench")
        .unwrap()
        .guid;
    let peer = live_source(&zfs, &key, &ds, dir.path()).await;
    let mut live = Vec::new();

    let mut raw = Vec::new();
    for round in 0..3 {
        // Raw: zfs send | zfs recv, two processes joined by a pipe.
        let raw_target = format!("{}/raw{round}", names[1]);
        let t = Instant::now();
        let mut send = Command::new("zfs")
            .args(["send", &snap.full()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let recv = Command::new("zfs")
            .args(["recv", "-u", &raw_target])
            .stdin(Stdio::from(send.stdout.take().unwrap()))
            .status()
            .unwrap();
        assert!(send.wait().unwrap().success() && recv.success());
        raw.push(t.elapsed());

        // Live: zfs send → the stream server → mutual TLS → verified zfs recv.
        let live_target = PoolName::parse(&names[1])
            .unwrap()
            .dataset(&format!("live{round}"))
            .unwrap();
        let t = Instant::now();
        let want = SendRequest {
            project: key.clone(),
            from: None,
            to: guid,
            resume: None,
        };
        peer.receive(&zfs, &want, &live_target, &Progress::new())
            .await
            .unwrap();
        live.push(t.elapsed());
        // Room for the next round: the copies measured are not needed.
        for target in [raw_target.as_str(), live_target.as_str()] {
            succeed(Command::new("zfs").args(["destroy", "-r", target]));
        }
    }
    raw.sort();
    live.sort();
    let r = raw[1];
    let bytes = std::fs::metadata(mp.join("noise")).unwrap().len() as f64;
    println!(
        "throughput live: {:.0} MiB snapshot on {}: zfs send → mutual TLS on loopback → verified zfs recv \
         median {:.2} s ({:.1} MiB/s) against the raw pipe's {:.2} s; ratio {:.2} (3 alternating rounds)",
        bytes / MIB as f64,
        zfs.capabilities().implementation.as_str(),
        live[1].as_secs_f64(),
        bytes / MIB as f64 / live[1].as_secs_f64(),
        r.as_secs_f64(),
        r.as_secs_f64() / live[1].as_secs_f64()
    );
}

/// A stream server on loopback serving live sends of `ds` as project `key` to node "b", and
/// node b's client for it.
async fn live_source(
    zfs: &Zfs,
    key: &ProjectKey,
    ds: &projstore_agent::zfs::DatasetName,
    dir: &std::path::Path,
) -> Peer {
    let ca = projstore_e2e::pki::ClusterCa::new("bench-ca").unwrap();
    for node in ["a", "b"] {
        ca.write_node_dir(
            &dir.join(format!("tls-{node}")),
            node,
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    }
    let tls_a = Arc::new(NodeTls::load(&dir.join("tls-a"), "a").unwrap());
    let tls_b = Arc::new(NodeTls::load(&dir.join("tls-b"), "b").unwrap());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (served, wanted) = (ds.clone(), key.clone());
    let server = Arc::new(StreamServer {
        store: StreamStore::new(dir.join("live-store")),
        verify: None,
        authorize: Arc::new(|_, node: String| Box::pin(async move { Ok(node == "b") })),
        sources: Some(Sources::new(
            zfs.clone(),
            Arc::new(move |project| {
                let ds = (project == wanted).then(|| served.clone());
                Box::pin(async move { ds })
            }),
        )),
    });
    tokio::spawn(serve(listener, server, tls_a));
    Peer::new(&format!("https://{addr}"), "a", tls_b).unwrap()
}

//! `make bench` for the controller:
//! 1. placement of 100,000 projects over 1,000 pools (goal: under 2 s);
//! 2. the controller's resident memory reconciling 10,000 Projects in the test API server
//!    (goal: under 200 MiB), measured on the controller process alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: fail loudly

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, PostParams};
use projstore_api::{Project, StoragePool};
use projstore_controller::placement::{Fleet, PoolInfo, Request, Spread};
use serde_json::json;

fn placement_bench() {
    let pools: Vec<PoolInfo> = (0..1000)
        .map(|i| PoolInfo {
            name: format!("pool-{i}"),
            node: format!("node-{i}"),
            zone: format!("z{}", i % 20),
            datacenter: format!("dc{}", i % 4),
            ready: i % 50 != 0,
            schedulable: true,
            experimental: i % 97 == 0,
            selected: true,
            free_bytes: (1 + (i as u64 * 7919) % 100) << 40,
            reserved_bytes: 1 << 40,
        })
        .collect();
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("ns{}/project-{i}", i % 100))
        .collect();
    let t = Instant::now();
    let fleet = Fleet::new(&pools);
    let mut placed = 0usize;
    for n in &names {
        let r = Request {
            project: n,
            copies: 3,
            quota_bytes: 10 << 30,
            pinned: None,
            spread: Spread::Datacenter,
            tolerate_experimental: false,
            existing: &[],
        };
        placed += fleet.place(&r).pools.len();
    }
    let took = t.elapsed();
    println!(
        "placement: 100000 projects x 3 copies over 1000 pools (4 DCs, 20 zones, some not Ready/experimental) in {:.2} s, one thread ({placed} copies placed); goal < 2 s",
        took.as_secs_f64()
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn memory_bench() {
    use projstore_e2e::apiserver::{ApiServer, Config};
    let server = ApiServer::start(Config::default()).await.unwrap();
    server
        .register_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let kcy = kube::config::Kubeconfig::from_yaml(&std::fs::read_to_string(&kc).unwrap()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kcy, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "projstore-system"}})).unwrap(),
    )
    .await
    .unwrap();
    let pools: Api<StoragePool> = Api::all(client.clone());
    for i in 0..6 {
        let p: StoragePool = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": format!("pool-{i}")},
            "spec": {"nodeName": format!("node-{i}"), "poolName": "storage", "vdevs": [{"path": "/dev/sdb"}], "topology": {"datacenter": format!("dc{}", i % 2)}}
        }))
        .unwrap();
        pools.create(&PostParams::default(), &p).await.unwrap();
    }
    let projects: Api<Project> = Api::namespaced(client.clone(), "default");
    let mut tasks = Vec::new();
    for c in 0..16 {
        let projects = projects.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..10_000).step_by(16) {
                let p: Project = serde_json::from_value(json!({
                    "apiVersion": "projstore.io/v1alpha1", "kind": "Project", "metadata": {"name": format!("p{i}")},
                    "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
                }))
                .unwrap();
                projects.create(&PostParams::default(), &p).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_projstore-controller"))
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "pretty"])
        .env("KUBECONFIG", &kc)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // All unplaceable (no pool is Ready without agents): every Project gets a status.
    loop {
        let l = projects.list(&ListParams::default()).await.unwrap();
        let done = l.items.iter().filter(|p| p.status.is_some()).count();
        if done == 10_000 || t.elapsed() > Duration::from_secs(300) {
            println!(
                "controller: {done} of 10000 Projects reconciled in {:.1} s; controller peak RSS {} MiB (goal < 200 MiB)",
                t.elapsed().as_secs_f64(),
                rss_kib(child.id()) / 1024
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    placement_bench();
    // PROJSTORE_BENCH=placement runs only the first part (for profiling).
    if std::env::var("PROJSTORE_BENCH").as_deref() != Ok("placement") {
        memory_bench().await;
    }
}

//! `make bench` for the test API server: 10,000 Projects created by concurrent clients and
//! observed by a watcher (goal: under 10 s), and the server's memory holding them.
//! The server runs as its own process so its memory is measured alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark binary: fail loudly

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use projstore_api::Project;
use serde_json::json;

const N: usize = 10_000;
const CLIENTS: usize = 32;

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kc_path = dir.path().join("kubeconfig");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_projstore-apiserver"))
        .arg("--kubeconfig")
        .arg(&kc_path)
        .arg("--crds")
        .arg(&crds)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while !kc_path.exists() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = projstore_e2e::testkit::client_for(&kc_path).await.unwrap();
    let idle_rss = rss_kib(pid, "VmRSS:");
    let api: Api<Project> = Api::namespaced(client.clone(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let watcher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            let mut stream = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await
                .unwrap()
                .boxed();
            while let Some(ev) = stream.try_next().await.unwrap() {
                if let WatchEvent::Added(_) = ev {
                    seen += 1;
                    if seen == N {
                        break;
                    }
                }
            }
            (seen, Instant::now())
        })
    };
    let t0 = Instant::now();
    let mut creators = Vec::new();
    for c in 0..CLIENTS {
        let api = api.clone();
        creators.push(tokio::spawn(async move {
            for i in (c..N).step_by(CLIENTS) {
                let p: Project = serde_json::from_value(json!({
                    "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
                    "metadata": {"name": format!("p{i}")},
                    "spec": {"quota": "1Gi", "owner": {"uid": 1000, "gid": 1000}}
                }))
                .unwrap();
                api.create(&PostParams::default(), &p).await.unwrap();
            }
        }));
    }
    for c in creators {
        c.await.unwrap();
    }
    let created = t0.elapsed();
    let (seen, last) = watcher.await.unwrap();
    let observed = last - t0;
    let rss = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    let count = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .items
        .first()
        .map(|p| p.name_any())
        .is_some();
    println!(
        "apiserver: {N} Projects created by {CLIENTS} concurrent kube-rs clients in {:.2} s ({:.0}/s), all {seen} observed by a watcher after {:.2} s (goal < 10 s); \
         server RSS {} MiB with them (idle {} MiB, peak {} MiB){}",
        created.as_secs_f64(),
        N as f64 / created.as_secs_f64(),
        observed.as_secs_f64(),
        rss / 1024,
        idle_rss / 1024,
        peak / 1024,
        if count {
            ""
        } else {
            " (list came back empty!)"
        }
    );
    let _ = child.kill();
    let _ = child.wait();
}

//! Where the agents keep streams on the dev hosts, and catching them in flight (to kill an
//! agent at that moment).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Cluster;
use super::fixtures::NS;

/// The stream store directory of a project on a host.
pub fn store_dir(c: &Cluster, pool: &str, project: &str) -> PathBuf {
    c.streams_dir(c.host_of_pool(pool)).join(NS).join(project)
}

/// The files in `dir` whose names end in `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls every 10 ms until a file ending in `suffix` with data appears in `dir`.
pub async fn catch_in_flight(dir: &Path, suffix: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if files_ending(dir, suffix)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Polls every 10 ms until a `zfs recv` into `dataset` runs.
pub async fn catch_receive(dataset: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        let running = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.contains(&b"recv".as_slice()) && args.contains(&dataset.as_bytes())
                })
            });
        if running {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

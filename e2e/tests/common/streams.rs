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

/// Polls every 10 ms until a `zfs recv` into `dataset` runs.
pub async fn catch_receive(dataset: &str, limit: Duration) -> bool {
    catch_zfs(limit, |args| {
        args.contains(&b"recv".as_slice()) && args.contains(&dataset.as_bytes())
    })
    .await
}

/// Polls every 10 ms until a `zfs send` of a snapshot of `dataset` runs. (zfs-fuse's `zfs`
/// splits its own `dataset@snapshot` argument in place, so its command line shows the
/// dataset as an argument of its own; OpenZFS shows `dataset@snapshot`.)
pub async fn catch_send(dataset: &str, limit: Duration) -> bool {
    let prefix = format!("{dataset}@");
    catch_zfs(limit, |args| {
        args.contains(&b"send".as_slice())
            && args
                .iter()
                .any(|a| *a == dataset.as_bytes() || a.starts_with(prefix.as_bytes()))
    })
    .await
}

/// Polls every 10 ms until a process whose arguments satisfy `matches` runs.
async fn catch_zfs(limit: Duration, matches: impl Fn(&[&[u8]]) -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        let running = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    matches(&args)
                })
            });
        if running {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

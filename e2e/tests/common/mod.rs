//! The scenario harness: a dev cluster per scenario (or a real cluster when
//! `PROJSTORE_E2E_KUBECONFIG` is set), waits that print their timings, and fault injection.
//! The API objects a scenario looks at are in `objects.rs`, the hosts it reaches into in
//! `hosts.rs`; `fixtures.rs` and `streams.rs` hold what scenarios create and catch.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test support

pub mod fixtures;
pub mod hosts;
mod objects;
pub mod streams;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;
use projstore_e2e::dev::Host;

pub const DEV: &str = env!("CARGO_BIN_EXE_projstore-dev");

/// A running cluster; taken down (pools, mounts, files) when dropped.
pub struct Cluster {
    pub name: &'static str,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub client: Client,
    pub hosts: Vec<Host>,
    started: Instant,
    /// Denials the scenario provokes on purpose (their records, as JSON lines).
    expected_denials: std::sync::Mutex<Vec<String>>,
    _tmp: Option<tempfile::TempDir>,
}

fn zfs_usable() -> bool {
    Command::new("zpool")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    projstore_e2e::testkit::client_for(kubeconfig)
        .await
        .unwrap()
}

impl Cluster {
    /// Starts a three-host dev cluster for scenario `name`; None when ZFS is missing and not
    /// required (with PROJSTORE_REQUIRE_ZFS=1 a missing part fails the scenario).
    pub async fn up(name: &'static str) -> Option<Cluster> {
        if let Ok(kc) = std::env::var("PROJSTORE_E2E_KUBECONFIG") {
            let kubeconfig = PathBuf::from(kc);
            return Some(Cluster {
                name,
                dir: PathBuf::new(),
                client: client_for(&kubeconfig).await,
                kubeconfig,
                hosts: Vec::new(),
                started: Instant::now(),
                expected_denials: Default::default(),
                _tmp: None,
            });
        }
        let bins = Path::new(DEV).parent().unwrap();
        let missing = projstore_e2e::dev::missing_components(bins);
        assert!(missing.is_empty(), "build the workspace first: {missing:?}");
        if !zfs_usable() {
            assert!(
                std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
                "ZFS is required but unusable"
            );
            eprintln!("SKIP {name}: no usable ZFS");
            return None;
        }
        // Not below /tmp: the agents' sftp chroot needs root-owned, unwritable parents.
        let base = Path::new("/var/lib/projstore-e2e");
        std::fs::create_dir_all(base).unwrap();
        let tmp = tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(base)
            .unwrap();
        let dir = tmp.path().join("s");
        let started = Instant::now();
        let up = Command::new(DEV)
            .args(["up", "--state-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        if !up.status.success() {
            let _ = Command::new(DEV)
                .args(["down", "--state-dir"])
                .arg(&dir)
                .output();
            panic!(
                "[{name}] dev cluster did not start: {}{}",
                String::from_utf8_lossy(&up.stdout),
                String::from_utf8_lossy(&up.stderr)
            );
        }
        let kubeconfig = dir.join("kubeconfig");
        let cluster = Cluster {
            name,
            client: client_for(&kubeconfig).await,
            kubeconfig,
            hosts: projstore_e2e::dev::hosts(3, &dir),
            dir,
            started,
            expected_denials: Default::default(),
            _tmp: Some(tmp),
        };
        println!(
            "[{name}] dev cluster up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Some(cluster)
    }

    /// A cluster whose hosts this test reaches (disks, `zfs`, agents to kill): the dev
    /// cluster; None against a real cluster too, said on the test's output.
    pub async fn up_with_hosts(name: &'static str) -> Option<Self> {
        Self::up(name)
            .await
            .filter(|c| c.hosts_reachable("the scenario (disks, zfs, agent processes)"))
    }

    pub fn is_dev(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Whether the rest of the scenario, `what`, may reach into the hosts: on the dev cluster
    /// only; against a real cluster it says so on the test's output that it did not run.
    pub fn hosts_reachable(&self, what: &str) -> bool {
        if !self.is_dev() {
            println!(
                "[{}] NOT RUN against {}: {what} reaches into the hosts, which only the dev cluster allows",
                self.name,
                self.kubeconfig.display()
            );
        }
        self.is_dev()
    }

    /// Prints a timing line for this scenario.
    pub fn timing(&self, what: &str, d: Duration) {
        println!("[{}] {what}: {:.1}s", self.name, d.as_secs_f64());
    }

    /// Waits up to `limit` for `f` to give Some, printing how long it took.
    pub async fn wait<T, F, Fut>(&self, what: &str, limit: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let t = Instant::now();
        loop {
            let last = match f().await {
                Ok(v) => {
                    self.timing(what, t.elapsed());
                    return v;
                }
                Err(e) => e,
            };
            if t.elapsed() > limit {
                self.dump_logs();
                panic!(
                    "[{}] {what}: not within {}s; last: {last}",
                    self.name,
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Asserts `ok`; when it fails, the processes' logs are printed first.
    pub fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.dump_logs();
            panic!("[{}] {what}", self.name);
        }
    }

    /// The dev cluster's process logs.
    fn log_files(&self) -> impl Iterator<Item = std::fs::DirEntry> {
        std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
    }

    pub fn dump_logs(&self) {
        for e in self.log_files() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines)", e.path().display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    pub fn dev(&self, args: &[&str]) -> String {
        let out = Command::new(DEV)
            .args(args)
            .arg("--state-dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "projstore-dev {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs `controller` or `agent-host-x`; `hold` keeps it down until `release`.
    pub fn kill(&self, process: &str, hold: bool) {
        let mut a = vec!["kill", process];
        if hold {
            a.push("--hold");
        }
        self.dev(&a);
    }
    pub fn release(&self, process: &str) {
        self.dev(&["release", process]);
    }

    /// Runs kubectl with `input` on stdin (None when there is no kubectl).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input.as_bytes()).ok()?;
        child.wait_with_output().ok()
    }

    /// Runs the stock kubectl against this cluster (None when there is none).
    pub fn kubectl(&self, args: &[&str]) -> Option<std::process::Output> {
        self.kubectl_command(args).output().ok()
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }
}

/// Where scenarios leave the RBAC rules they used (read by the `rbac_report` test).
pub fn rbac_usage_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbac-usage")
}

impl Cluster {
    /// The chart's roles are meant to refuse `role` (`controller`, `agent`) this request in
    /// namespace `namespace` in this scenario: its denial does not fail it.
    pub fn expect_denial(&self, role: &str, verb: &str, resource: &str, namespace: &str) {
        let u = projstore_e2e::rbac::Use {
            role: role.into(),
            rule: None,
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            namespace: namespace.into(),
        };
        if let Ok(mut e) = self.expected_denials.lock() {
            e.push(serde_json::to_string(&u).unwrap());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.is_dev() {
            // Every request of the controller and the agents ran under the chart's roles.
            let used = self.dir.join("rbac-used.jsonl");
            let _ = std::fs::create_dir_all(rbac_usage_dir());
            let _ = std::fs::copy(&used, rbac_usage_dir().join(format!("{}.jsonl", self.name)));
            let expected = self
                .expected_denials
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            let denied: String = std::fs::read_to_string(self.dir.join("rbac-denied.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !expected.iter().any(|e| e == l))
                .map(|l| format!("{l}\n"))
                .collect();
            if std::thread::panicking() {
                // The processes' logs outlive a failed scenario, for the one who looks into it.
                let kept = std::env::temp_dir()
                    .join("projstore-e2e-failed")
                    .join(self.name);
                let _ = std::fs::create_dir_all(&kept);
                for e in self.log_files() {
                    let _ = std::fs::copy(e.path(), kept.join(e.file_name()));
                }
                eprintln!("[{}] logs kept in {}", self.name, kept.display());
            }
            let _ = Command::new(DEV)
                .args(["down", "--state-dir"])
                .arg(&self.dir)
                .output();
            println!(
                "[{}] total {:.1}s",
                self.name,
                self.started.elapsed().as_secs_f64()
            );
            if !denied.is_empty() && !std::thread::panicking() {
                panic!(
                    "[{}] the chart's RBAC denied requests (a missing permission):\n{denied}",
                    self.name
                );
            }
        }
    }
}

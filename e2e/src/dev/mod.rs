//! The dev cluster (DESIGN §8): `projstore-dev up|down|status --state-dir DIR`.
//!
//! `up` starts a supervisor process in the background and returns once it reports ready. The
//! supervisor (`supervisor.rs`) runs the test API server (persistent in `DIR/apiserver`),
//! installs the chart with Helm's library (its CRDs, ServiceAccounts and RBAC), and in a full
//! cluster declares one StoragePool per simulated host and supervises the controller and one
//! agent per host on its own 127.0.0.x address. This module
//! holds the hosts' layout and the commands that start, inspect and stop it.

mod supervisor;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use supervisor::supervise;

/// What `up` was asked for, saved as `DIR/cluster.json` for `status` and `down`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterSpec {
    pub nodes: u32,
    pub api_only: bool,
}

/// A simulated storage host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub node: String,
    pub addr: String,
    pub pool: String,
    pub datacenter: String,
    pub zone: String,
}

/// The hosts of an `n`-node cluster: `host-a`, `host-b`, … on 127.X.Y.2, .3, …, in two
/// datacenters like `examples/` (host-a and host-b in dc1, host-c in dc2, then alternating).
/// Pool names and the X.Y of the addresses carry a hash of the state directory: several dev
/// clusters share one ZFS and one loopback network.
pub fn hosts(n: u32, dir: &Path) -> Vec<Host> {
    let tag = dir
        .display()
        .to_string()
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    (0..n)
        .map(|i| {
            let letter = char::from(b'a' + (i % 26) as u8);
            let dc = if i == 2 || (i > 2 && i % 2 == 0) {
                "dc2"
            } else {
                "dc1"
            };
            Host {
                node: format!("host-{letter}"),
                addr: format!(
                    "127.{}.{}.{}",
                    1 + (tag >> 16) % 254,
                    (tag >> 8) & 0xff,
                    i + 2
                ),
                pool: format!("ps{:06x}{letter}", tag & 0xff_ffff),
                datacenter: dc.into(),
                zone: format!("{dc}-{letter}"),
            }
        })
        .collect()
}

/// Which binaries a full cluster needs and does not have yet.
pub fn missing_components(bin_dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !bin_dir.join("projstore-controller").exists() {
        missing.push("projstore-controller (the controller binary is not built yet)".to_owned());
    }
    let agent = bin_dir.join("projstore-agent");
    let supports_run = Command::new(&agent)
        .arg("help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("run --node-name"));
    if !supports_run {
        missing.push("projstore-agent run (the node agent runtime is not built yet)".to_owned());
    }
    missing
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("supervisor.pid")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `up`: starts the supervisor in the background and waits until it is ready.
pub fn up(dir: &Path, spec: &ClusterSpec, exe: &Path) -> Result<(), String> {
    if let Some(pid) = read_pid(dir).filter(|p| alive(*p)) {
        return Err(format!(
            "a dev cluster already runs from {} (pid {pid}); run down first",
            dir.display()
        ));
    }
    if !spec.api_only {
        check_sftp_chroot_parent(dir)?;
        let bin_dir = exe.parent().unwrap_or(Path::new("."));
        let missing = missing_components(bin_dir);
        if !missing.is_empty() {
            return Err(format!(
                "cannot start the full cluster, missing: {}. Use --api-only for the API server alone.",
                missing.join("; ")
            ));
        }
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        // 0755 (less the umask): never writable by group or others, as the sftp chroot needs.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_vec_pretty(spec).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write cluster.json: {e}"))?;
    let log = std::fs::File::create(dir.join("supervisor.log"))
        .map_err(|e| format!("cannot create the log: {e}"))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(exe)
        .arg("supervise")
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    std::fs::write(pid_file(dir), child.id().to_string()).map_err(|e| e.to_string())?;
    // Longer than the supervisor's own wait for the pools, so its error is the one reported.
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline {
        if ready.exists() {
            return Ok(());
        }
        if !alive(child.id()) {
            kill_group(child.id());
            let log = std::fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default();
            return Err(format!("the supervisor exited before it was ready:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the dev cluster did not become ready within 150 s; see supervisor.log".into())
}

/// The agents' sftp chroots live below the state dir, and OpenSSH refuses a `ChrootDirectory`
/// with any component not owned by root or writable by group or others (like `/tmp`): every
/// folder mount between hosts would then fail with only an agent log saying why. So a full
/// cluster is refused at once, before anything is created, in such a place.
fn check_sftp_chroot_parent(dir: &Path) -> Result<(), String> {
    let abs = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let existing = abs
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    projstore_agent::sftp::check_chroot(existing).map_err(|why| {
        format!(
            "cannot start a full dev cluster in {}: {why}. OpenSSH refuses to chroot the agents' sftp sessions there, so folder mounts between hosts would fail. Choose a state dir below directories that only root owns and writes, e.g. --state-dir /var/lib/projstore-dev, or start the API server alone with --api-only.",
            dir.display()
        )
    })
}

/// The namespace of the agents' Leases and the ServiceAccounts' identities.
const SYSTEM_NS: &str = "projstore-system";

/// The script that drives Helm's library on the chart (`charts/tests/helm_release.py`, which
/// finds the chart beside it): next to the repository this binary was built from.
fn helm_script() -> Result<PathBuf, String> {
    in_repo(
        "PROJSTORE_HELM_RELEASE",
        "charts/tests/helm_release.py",
        Path::is_file,
    )
}

/// The CRD manifests: next to the repository this binary was built from.
pub fn crds_dir() -> Result<PathBuf, String> {
    in_repo("PROJSTORE_CRDS", "crds/manifests", Path::is_dir)
}

/// `rel` in the repository this binary was built from, unless the variable `var` names
/// another place; the first that is `found`.
fn in_repo(var: &str, rel: &str, found: fn(&Path) -> bool) -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os(var).map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| found(p))
        .ok_or_else(|| format!("cannot find {rel} (set {var})"))
}

/// `down`: stops the supervisor (and what it started), removes pools, mounts and state.
pub fn down(dir: &Path) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    if let Some(pid) = read_pid(dir)
        && alive(pid)
    {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        done.push(format!("stopped supervisor (pid {pid})"));
    }
    if let Some(pid) = read_pid(dir) {
        kill_group(pid);
    }
    // Mounts below the state dir (projects, sshfs, bindfs) go first, then the pools (ZFS may
    // say "busy" for a moment after the agents stopped), then the files.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let prefix = dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let _ = Command::new("umount").args(["-l", m]).status();
            done.push(format!("unmounted {m}"));
        }
    }
    let spec: Option<ClusterSpec> = std::fs::read(dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(spec) = spec.filter(|s| !s.api_only) {
        for h in hosts(spec.nodes, dir) {
            let exists = || {
                Command::new("zpool")
                    .args(["list", &h.pool])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while exists() && Instant::now() < deadline {
                if Command::new("zpool")
                    .args(["destroy", "-f", &h.pool])
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    done.push(format!("destroyed pool {}", h.pool));
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if exists() {
                return Err(format!(
                    "pool {} is still busy; the state in {} is kept so down can be run again",
                    h.pool,
                    dir.display()
                ));
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        done.push(format!("removed {}", dir.display()));
    }
    Ok(done)
}

/// `status`: one line per process and pool.
pub fn status(dir: &Path) -> Result<Vec<String>, String> {
    let spec: ClusterSpec = std::fs::read(dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("no dev cluster in {}", dir.display()))?;
    let mut lines = Vec::new();
    let pid = read_pid(dir);
    let state = match pid {
        Some(p) if alive(p) && dir.join("ready").exists() => format!("running (pid {p})"),
        Some(p) if alive(p) => format!("starting (pid {p})"),
        _ => "stopped".to_owned(),
    };
    lines.push(format!("supervisor    {state}"));
    let url = std::fs::read_to_string(dir.join("apiserver.url")).unwrap_or_default();
    lines.push(format!(
        "apiserver     {} {}",
        if state.starts_with("running") {
            "serving"
        } else {
            "down"
        },
        url.trim()
    ));
    lines.push(format!(
        "kubeconfig    {}",
        dir.join("kubeconfig").display()
    ));
    if spec.api_only {
        lines.push("mode          api-only (no controller, agents or pools)".into());
    } else {
        for h in hosts(spec.nodes, dir) {
            let health = Command::new("zpool")
                .args(["list", "-H", "-o", "health", &h.pool])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "absent".into());
            lines.push(format!(
                "pool {:<8} node {} {} {} {}",
                h.pool, h.node, h.addr, h.datacenter, health
            ));
        }
    }
    Ok(lines)
}

fn held(dir: &Path, key: &str) -> bool {
    dir.join("held").join(key).exists()
}

fn check_key(key: &str) -> Result<(), String> {
    let ok = key == "controller"
        || key
            .strip_prefix("agent-host-")
            .is_some_and(|l| l.len() == 1 && l.bytes().all(|b| b.is_ascii_lowercase()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a process of the dev cluster (controller, agent-host-a, …)"
        ))
    }
}

/// `kill`: SIGKILLs a supervised process (`controller`, `agent-host-a`, …). The supervisor
/// restarts it within a second unless `hold` keeps it down until [`release`].
pub fn kill(dir: &Path, key: &str, hold: bool) -> Result<Vec<String>, String> {
    check_key(key)?;
    if hold {
        let d = dir.join("held");
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        std::fs::write(d.join(key), "").map_err(|e| e.to_string())?;
    }
    let pid: u32 = std::fs::read_to_string(dir.join("pids").join(key))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("no pid recorded for {key}: is the cluster up?"))?;
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    Ok(vec![format!(
        "killed {key} (pid {pid}){}",
        if hold {
            "; held down until release"
        } else {
            ""
        }
    )])
}

/// `release`: lets the supervisor start a held process again.
pub fn release(dir: &Path, key: &str) -> Result<Vec<String>, String> {
    check_key(key)?;
    match std::fs::remove_file(dir.join("held").join(key)) {
        Ok(()) => Ok(vec![format!("released {key}")]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(vec![format!("{key} was not held")])
        }
        Err(e) => Err(e.to_string()),
    }
}

/// SIGKILLs whatever is left of the supervisor's process group (it leads its own group, and
/// the agents and controller it started belong to it).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_below_root_only_directories_may_hold_the_sftp_chroot() {
        // The parts that do not exist yet are created 0755 by `up`.
        assert_eq!(
            check_sftp_chroot_parent(Path::new("/var/lib/projstore-never-made/x")),
            Ok(())
        );
        let e = check_sftp_chroot_parent(Path::new("/tmp/ps")).unwrap_err();
        assert!(e.contains("/tmp must be owned by root"), "{e}");
    }
}

//! The dev cluster (DESIGN §8): `projstore-dev up|down|status --state-dir DIR`.
//!
//! `up` starts a supervisor process in the background and returns once it reports ready. The
//! supervisor runs the test API server (persistent in `DIR/apiserver`), registers the CRDs,
//! and in a full cluster declares one StoragePool per simulated host and supervises the
//! controller and one agent per host on its own 127.0.0.x address.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::apiserver::{ApiServer, Config};

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
        let bin_dir = exe.parent().unwrap_or(Path::new("."));
        let missing = missing_components(bin_dir);
        if !missing.is_empty() {
            return Err(format!(
                "cannot start the full cluster, missing: {}. Use --api-only for the API server alone.",
                missing.join("; ")
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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

/// The supervisor itself (runs until SIGTERM or SIGINT).
pub async fn supervise(dir: &Path) -> Result<(), String> {
    let spec: ClusterSpec = std::fs::read(dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("cluster.json is missing or unreadable")?;
    // The controller and the agents run under the chart's ClusterRoles, enforced.
    let chart = chart_dir()?;
    let mut tokens = Vec::new();
    let mut roles = Vec::new();
    for component in ["controller", "agent"] {
        let user = crate::rbac::service_account_user(SYSTEM_NS, &format!("projstore-{component}"));
        let token_file = dir.join(format!("token-{component}"));
        let token = match std::fs::read_to_string(&token_file) {
            Ok(t) => t.trim().to_owned(),
            Err(_) => {
                let t = uuid::Uuid::new_v4().simple().to_string();
                std::fs::write(&token_file, &t).map_err(|e| e.to_string())?;
                t
            }
        };
        tokens.push((
            token,
            crate::apiserver::Identity {
                user: user.clone(),
                groups: vec!["system:serviceaccounts".into()],
            },
        ));
        roles.push(crate::rbac::Role {
            name: component.into(),
            user,
            rules: crate::rbac::load_rules(&crate::rbac::rules_file(&chart, component))?,
        });
    }
    let server = ApiServer::start(Config {
        state_dir: Some(dir.join("apiserver")),
        tokens: tokens.clone(),
        authorizer: Some(Box::new(crate::rbac::RbacAuthorizer::new(roles, dir))),
        ..Config::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    for ((token, who), component) in tokens.iter().zip(["controller", "agent"]) {
        std::fs::write(
            dir.join(format!("kubeconfig-{component}")),
            server.kubeconfig(token, &who.user),
        )
        .map_err(|e| e.to_string())?;
    }
    let crds = crds_dir()?;
    server.register_crds(&crds).map_err(|e| e.to_string())?;
    server
        .write_kubeconfig(&dir.join("kubeconfig"))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("apiserver.url"), &server.url).map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    if !spec.api_only {
        children = start_hosts(&server, dir, &spec).await?;
    }
    std::fs::write(dir.join("ready"), "ready\n").map_err(|e| e.to_string())?;
    tracing::info!(url = %server.url, "dev cluster ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = check.tick() => {
                // Supervision: a child that died is started again (the dev cluster's agents
                // and controller are meant to run; tests kill them on purpose via `kill`).
                for c in children.iter_mut() {
                    if held(dir, &c.key) {
                        // `projstore-dev kill --hold`: keep it down until released.
                        if c.child.try_wait().ok().flatten().is_none() {
                            let _ = c.child.kill();
                            let _ = c.child.wait();
                        }
                        continue;
                    }
                    if let Ok(Some(status)) = c.child.try_wait() {
                        tracing::warn!(name = %c.name, %status, "restarting");
                        match c.spawn() {
                            Ok(new) => {
                                c.child = new;
                                c.record_pid(dir);
                            }
                            Err(e) => tracing::error!(name = %c.name, error = %e, "cannot restart"),
                        }
                    }
                }
            }
        }
    }
    for c in children.iter_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.child.id().to_string()])
            .status();
    }
    for c in children.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
    server.shutdown().await;
    let _ = std::fs::remove_file(dir.join("ready"));
    Ok(())
}

/// A supervised child process.
struct Supervised {
    name: String,
    /// `controller` or `agent-<node>`: what `kill` and `release` name.
    key: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    kubeconfig: PathBuf,
    child: std::process::Child,
}

impl Supervised {
    /// Written aside and renamed: `kill` never reads a half-written (empty) pid file.
    fn record_pid(&self, dir: &Path) {
        let pids = dir.join("pids");
        let _ = std::fs::create_dir_all(&pids);
        let aside = pids.join(format!(".{}.new", self.key));
        if std::fs::write(&aside, self.child.id().to_string()).is_ok() {
            let _ = std::fs::rename(&aside, pids.join(&self.key));
        }
    }
    fn spawn(&self) -> std::io::Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let err = log.try_clone()?;
        Command::new(&self.program)
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
    }
}

/// Starts ZFS if needed, declares a StoragePool per host, and starts the controller and one
/// agent per host; returns once every pool is Ready.
async fn start_hosts(
    server: &ApiServer,
    dir: &Path,
    spec: &ClusterSpec,
) -> Result<Vec<Supervised>, String> {
    if !Command::new("zpool")
        .arg("list")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let started = Command::new("zfs-fuse")
            .args(["--no-kstat-mount", "-p"])
            .arg(dir.join("zfs-fuse.pid"))
            .status();
        if !started.is_ok_and(|s| s.success()) {
            return Err("no ZFS: zpool does not work and zfs-fuse did not start".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let bin = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    // The agents' cluster CA and a key and certificate per node (the chart's job in a cluster).
    let ca = crate::pki::ClusterCa::new("projstore-dev-agents-ca")?;
    let _ = server.create_object(
        "",
        "v1",
        "namespaces",
        "",
        serde_json::json!({"metadata": {"name": "projstore-system"}}),
    );
    let mut children = Vec::new();
    for h in hosts(spec.nodes, dir) {
        let img = dir.join("pools").join(format!("{}.img", h.node));
        let pool = serde_json::json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "StoragePool",
            "metadata": {"name": format!("{}-storage", h.node), "labels": {"tier": "standard"}},
            "spec": {"nodeName": h.node, "poolName": h.pool,
                     "vdevs": [{"path": img.display().to_string(), "sizeBytes": 4u64 << 30}],
                     "topology": {"datacenter": h.datacenter, "zone": h.zone}}
        });
        if let Err(e) = server.create_object("projstore.io", "v1alpha1", "storagepools", "", pool)
            && !e.to_string().contains("already exists")
        {
            return Err(e.to_string());
        }
        let host_dir = dir.join("hosts").join(&h.node);
        std::fs::create_dir_all(host_dir.join("projects")).map_err(|e| e.to_string())?;
        let tls_dir = dir.join("tls").join(&h.node);
        let addr: std::net::IpAddr = h.addr.parse().map_err(|e| format!("{}: {e}", h.addr))?;
        ca.write_node_dir(&tls_dir, &h.node, &[addr])?;
        let mut s = Supervised {
            name: format!("agent {}", h.node),
            key: format!("agent-{}", h.node),
            program: bin.join("projstore-agent"),
            args: vec![
                "run".into(),
                "--node-name".into(),
                h.node.clone(),
                "--projects-root".into(),
                host_dir.join("projects").display().to_string(),
                "--streams-root".into(),
                host_dir.join("streams").display().to_string(),
                "--listen".into(),
                format!("{}:7420", h.addr),
                "--advertise".into(),
                format!("https://{}:7420", h.addr),
                "--tls-dir".into(),
                tls_dir.display().to_string(),
                "--sftp-listen".into(),
                format!("{}:7422", h.addr),
                "--sftp-advertise".into(),
                format!("{}:7422", h.addr),
                "--health-listen".into(),
                format!("{}:7421", h.addr),
                "--run-dir".into(),
                host_dir.join("run").display().to_string(),
                "--log-format".into(),
                "pretty".into(),
            ],
            log: logs.join(format!("agent-{}.log", h.node)),
            kubeconfig: dir.join("kubeconfig-agent"),
            child: Command::new("true").spawn().map_err(|e| e.to_string())?,
        };
        s.child = s
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", s.name))?;
        s.record_pid(dir);
        children.push(s);
    }
    let mut ctrl = Supervised {
        name: "controller".into(),
        key: "controller".into(),
        program: bin.join("projstore-controller"),
        args: vec![
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--lease-namespace".into(),
            "projstore-system".into(),
            "--failover-grace-seconds".into(),
            "30".into(),
            "--log-format".into(),
            "pretty".into(),
        ],
        log: logs.join("controller.log"),
        kubeconfig: dir.join("kubeconfig-controller"),
        child: Command::new("true").spawn().map_err(|e| e.to_string())?,
    };
    ctrl.child = ctrl
        .spawn()
        .map_err(|e| format!("cannot start the controller: {e}"))?;
    ctrl.record_pid(dir);
    children.push(ctrl);
    // Ready when every pool is.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = hosts(spec.nodes, dir).iter().all(|h| {
            server
                .object_field(
                    "projstore.io",
                    "storagepools",
                    "",
                    &format!("{}-storage", h.node),
                    "/status/phase",
                )
                .as_deref()
                == Some("Ready")
        });
        if ready {
            return Ok(children);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pools not Ready after 90 s; see {}",
                logs.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The namespace of the agents' Leases and the ServiceAccounts' identities.
const SYSTEM_NS: &str = "projstore-system";

/// The Helm chart (its RBAC rules): next to the repository this binary was built from.
fn chart_dir() -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("PROJSTORE_CHART").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/projstore")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("files").is_dir())
        .ok_or_else(|| "cannot find charts/projstore (set PROJSTORE_CHART)".to_owned())
}

/// The CRD manifests: next to the repository this binary was built from.
fn crds_dir() -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("PROJSTORE_CRDS").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
        .ok_or_else(|| "cannot find crds/manifests (set PROJSTORE_CRDS)".to_owned())
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

//! The dev cluster's supervisor: the background process `up` starts. It serves the test API
//! server, installs the chart with Helm (the RBAC objects Helm creates are what is enforced), declares the hosts' pools, starts the
//! controller and the agents, and restarts whichever dies (unless held).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ClusterSpec, SYSTEM_NS, held, helm_script, hosts};
use crate::apiserver::stored_rbac::StoredRbac;
use crate::apiserver::{ApiServer, Config};

/// The supervisor itself (runs until SIGTERM or SIGINT).
pub async fn supervise(dir: &Path) -> Result<(), String> {
    let spec: ClusterSpec = std::fs::read(dir.join("cluster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("cluster.json is missing or unreadable")?;
    // The controller and the agents run under the ServiceAccounts, ClusterRoles and bindings
    // a Helm install of the chart creates, enforced from the stored objects as a real API
    // server does.
    let mut tokens = Vec::new();
    let mut recorded = Vec::new();
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
        recorded.push((user, component.to_owned()));
    }
    let server = ApiServer::start(Config {
        state_dir: Some(dir.join("apiserver")),
        tokens: tokens.clone(),
        authorizer: Some(Box::new(StoredRbac::recording(recorded, dir))),
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
    let kubeconfig = dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .map_err(|e| e.to_string())?;
    // The CRDs, ServiceAccounts and roles come from the chart, installed by Helm's library.
    let installed = tokio::task::spawn_blocking(move || helm_install(&kubeconfig))
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = installed {
        server.shutdown().await;
        return Err(e);
    }
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

/// Installs the chart (or upgrades the release a restarted cluster already has) with Helm's
/// own library, through `charts/tests/helm_release.py`.
fn helm_install(kubeconfig: &Path) -> Result<(), String> {
    let script = helm_script()?;
    let out = Command::new("python3")
        .arg(&script)
        .arg(kubeconfig)
        .arg("ensure")
        .arg("{}")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run python3 {}: {e} (make deps installs it)",
                script.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("No module named") {
            " (make deps installs helm-python-sdk)"
        } else {
            ""
        };
        return Err(format!(
            "installing the chart with Helm failed: {}{hint}",
            err.trim()
        ));
    }
    tracing::info!("chart installed by Helm");
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
                // The scenarios corrupt a send in flight through it (s06).
                "--test-fault-hooks".into(),
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

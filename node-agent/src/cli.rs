//! The `projstore-agent` command line.

use std::io::Write;

use crate::streams::{PlanOutput, parse_plan_input, plan};

/// Usage text.
pub const USAGE: &str = "usage: projstore-agent run --node-name N [--projects-root DIR] [--streams-root DIR]\n\
                            [--listen ADDR] [--advertise URL] [--lease-namespace NS]\n\
                            --tls-dir DIR [--interval-seconds N] [--log-format json|pretty]\n\
                            [--sftp-listen ADDR --sftp-advertise HOST:PORT] [--health-listen ADDR]\n\
                            [--run-dir DIR]\n\
                            [--zfs PATH --zpool PATH] [--test-fault-hooks]\n\
       projstore-agent check --pool POOL... [--projects-root DIR] [--streams-root DIR]\n\
       projstore-agent streams plan --json FILE\n\
       projstore-agent alive [--run-dir DIR] [--max-age-seconds N]\n\n\
  run                        keep this host's StoragePools, renew the heartbeat Lease, serve streams\n\
  --test-fault-hooks         (run) arm the test suites' fault hooks; never in production\n\
  check                      run the start-up sanity checks and print them (exit 1 if one fails)\n\
  streams plan --json FILE   print the chain and the deletable streams of the stream graph in FILE\n\
                             (DESIGN §5.3); exit code 2 on invalid input\n";

/// Runs the command line `args` (without the program name); returns the exit code.
pub fn main(args: &[String], out: &mut impl Write, err: &mut impl Write) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["streams", "plan", "--json", file] => streams_plan(file, out, err),
        ["run", rest @ ..] => match parse_run(rest) {
            Ok((cfg, json)) => run(cfg, json, err),
            Err(e) => {
                let _ = writeln!(err, "projstore-agent run: {e}\n{USAGE}");
                2
            }
        },
        ["check", rest @ ..] => check(rest, out, err),
        ["alive", rest @ ..] => alive(rest, out, err),
        ["help" | "--help" | "-h"] => {
            let _ = write!(out, "{USAGE}");
            0
        }
        _ => {
            let _ = write!(err, "{USAGE}");
            2
        }
    }
}

/// The liveness probe: exit 0 when the agent's main loop marked itself alive (the file
/// `<run-dir>/alive`, touched at every tick) within `--max-age-seconds` (default 120), 1
/// otherwise. A file, not a port: no other process on the host can crowd it out, and a loop
/// that is stuck (a hung mount, a lock) is restarted.
fn alive(args: &[&str], out: &mut impl Write, err: &mut impl Write) -> i32 {
    let (mut run_dir, mut max_age) = (std::path::PathBuf::from("/run/projstore"), 120u64);
    for a in args {
        if let Some(v) = a.strip_prefix("--run-dir=") {
            run_dir = v.into();
        } else if let Some(v) = a
            .strip_prefix("--max-age-seconds=")
            .and_then(|v| v.parse().ok())
        {
            max_age = v;
        } else {
            let _ = writeln!(
                err,
                "projstore-agent alive: unknown argument {a:?}\n{USAGE}"
            );
            return 2;
        }
    }
    let file = crate::runtime::alive_file(&run_dir);
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default());
    match age {
        Ok(age) if age.as_secs() <= max_age => {
            let _ = writeln!(out, "alive: the main loop ran {} s ago", age.as_secs());
            0
        }
        Ok(age) => {
            let _ = writeln!(
                err,
                "not alive: the main loop last ran {} s ago",
                age.as_secs()
            );
            1
        }
        Err(e) => {
            let _ = writeln!(err, "not alive: {}: {e}", file.display());
            1
        }
    }
}

fn streams_plan(file: &str, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let fail = |err: &mut dyn Write, msg: String| {
        // One line, whatever the message holds.
        let _ = writeln!(
            err,
            "projstore-agent streams plan: {}",
            msg.replace('\n', " ")
        );
        2
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(err, format!("cannot read {file}: {e}")),
    };
    let edges = match parse_plan_input(&text) {
        Ok(e) => e,
        Err(e) => return fail(err, e),
    };
    match plan(&edges) {
        Ok(p) => {
            let output = PlanOutput {
                chain: p.chain,
                deletable: p.deletable,
            };
            match serde_json::to_string(&output) {
                Ok(json) => {
                    let _ = writeln!(out, "{json}");
                    0
                }
                Err(e) => fail(err, e.to_string()),
            }
        }
        Err(e) => fail(err, e.to_string()),
    }
}

fn parse_run(args: &[&str]) -> Result<(crate::runtime::Config, bool), String> {
    let mut cfg = crate::runtime::Config {
        node_name: String::new(),
        projects_root: "/projects".into(),
        streams_root: "/var/lib/projstore/streams".into(),
        listen: "0.0.0.0:7420".parse().map_err(|e| format!("{e}"))?,
        advertise: String::new(),
        lease_namespace: "projstore-system".into(),
        tls: None,
        interval: std::time::Duration::from_secs(10),
        sftp_listen: None,
        sftp_advertise: None,
        health_listen: None,
        run_dir: "/run/projstore".into(),
        zfs_bin: None,
        zpool_bin: None,
        fault_hooks: false,
    };
    let mut json = true;
    let mut tls_dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--test-fault-hooks" {
            cfg.fault_hooks = true;
            continue;
        }
        let mut v = || {
            it.next()
                .map(|s| (*s).to_owned())
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match *a {
            "--node-name" => cfg.node_name = v()?,
            "--projects-root" => cfg.projects_root = v()?.into(),
            "--streams-root" => cfg.streams_root = v()?.into(),
            "--listen" => cfg.listen = v()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--advertise" => cfg.advertise = v()?,
            "--lease-namespace" => cfg.lease_namespace = v()?,
            "--tls-dir" => tls_dir = Some(std::path::PathBuf::from(v()?)),
            "--interval-seconds" => {
                cfg.interval = std::time::Duration::from_secs(
                    v()?.parse()
                        .map_err(|e| format!("--interval-seconds: {e}"))?,
                )
            }
            "--log-format" => json = v()? == "json",
            "--sftp-listen" => {
                cfg.sftp_listen = Some(v()?.parse().map_err(|e| format!("--sftp-listen: {e}"))?)
            }
            "--sftp-advertise" => cfg.sftp_advertise = Some(v()?),
            "--health-listen" => {
                cfg.health_listen = Some(v()?.parse().map_err(|e| format!("--health-listen: {e}"))?)
            }
            "--run-dir" => cfg.run_dir = v()?.into(),
            "--zfs" => cfg.zfs_bin = Some(v()?.into()),
            "--zpool" => cfg.zpool_bin = Some(v()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !projstore_api::names::is_dns1123_subdomain(&cfg.node_name) {
        return Err("--node-name is required and must be a Kubernetes node name".into());
    }
    let tls_dir = tls_dir.ok_or(
        "--tls-dir is required: agents authenticate each other with certificates of the cluster CA (ca.crt, tls.crt, tls.key)",
    )?;
    let tls = crate::tls::NodeTls::load(&tls_dir, &cfg.node_name)
        .map_err(|e| format!("--tls-dir: {e}"))?;
    cfg.tls = Some(std::sync::Arc::new(tls));
    if cfg.advertise.is_empty() {
        cfg.advertise = format!("https://{}", cfg.listen);
    }
    if !cfg.advertise.starts_with("https://") {
        return Err(
            "--advertise must be an https:// URL: the stream server speaks TLS only".into(),
        );
    }
    Ok((cfg, json))
}

fn run(cfg: crate::runtime::Config, json: bool, err: &mut impl Write) -> i32 {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "projstore-agent run: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no Kubernetes client: set KUBECONFIG or run in a cluster");
                return 1;
            }
        };
        match crate::runtime::run(client, cfg).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "stopping");
                1
            }
        }
    })
}

fn check(args: &[&str], out: &mut impl Write, err: &mut impl Write) -> i32 {
    let (mut pools, mut projects_root, mut streams_root) = (
        Vec::new(),
        std::path::PathBuf::from("/projects"),
        std::path::PathBuf::from("/var/lib/projstore/streams"),
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (*a, it.next()) {
            ("--pool", Some(p)) => match crate::zfs::PoolName::parse(p) {
                Ok(n) => pools.push(n),
                Err(e) => {
                    let _ = writeln!(err, "projstore-agent check: {e}");
                    return 2;
                }
            },
            ("--projects-root", Some(p)) => projects_root = p.into(),
            ("--streams-root", Some(p)) => streams_root = p.into(),
            _ => {
                let _ = write!(err, "{USAGE}");
                return 2;
            }
        }
    }
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return 1;
    };
    let checks = rt.block_on(async {
        let zfs = crate::zfs::Zfs::detect().await.ok();
        let list: Vec<_> = pools
            .iter()
            .map(|p| {
                (
                    crate::layout::PoolLayout::new(p.clone()),
                    streams_root.join(p.as_str()),
                )
            })
            .collect();
        crate::sanity::run_checks(zfs.as_ref(), &list, &projects_root).await
    });
    for c in &checks {
        let _ = writeln!(
            out,
            "{} {:<40} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    i32::from(!checks.iter().all(|c| c.ok))
}

//! `projstore-dev up --state-dir DIR [--nodes N] [--api-only] | down --state-dir DIR |
//! status --state-dir DIR`: the dev cluster (DESIGN §8).

use std::path::PathBuf;
use std::process::ExitCode;

use projstore_e2e::dev::{self, ClusterSpec};

const USAGE: &str = "usage: projstore-dev up --state-dir DIR [--nodes N] [--api-only]\n       projstore-dev down --state-dir DIR\n       projstore-dev status --state-dir DIR\n       projstore-dev kill --state-dir DIR PROCESS [--hold]   (PROCESS: controller, agent-host-a, ...)\n       projstore-dev release --state-dir DIR PROCESS\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let (mut dir, mut nodes, mut api_only, mut hold, mut target) = (None, 3u32, false, false, None);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state-dir" => dir = it.next().map(PathBuf::from),
            "--nodes" => match it
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=20).contains(n))
            {
                Some(n) => nodes = n,
                None => {
                    eprintln!("projstore-dev: --nodes takes a number from 1 to 20");
                    return ExitCode::from(2);
                }
            },
            "--api-only" => api_only = true,
            "--hold" => hold = true,
            other if !other.starts_with('-') && target.is_none() => target = Some(other.to_owned()),
            other => {
                eprintln!("projstore-dev: unknown argument {other}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("projstore-dev: --state-dir is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let result = match cmd.as_str() {
        "up" => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("projstore-dev"));
            dev::up(&dir, &ClusterSpec { nodes, api_only }, &exe).map(|()| {
                vec![
                    format!(
                        "dev cluster ready: kubectl --kubeconfig {}",
                        dir.join("kubeconfig").display()
                    ),
                    format!(
                        "stop it with: projstore-dev down --state-dir {}",
                        dir.display()
                    ),
                ]
            })
        }
        "down" => dev::down(&dir),
        "kill" | "release" => match &target {
            Some(t) if cmd == "kill" => dev::kill(&dir, t, hold),
            Some(t) => dev::release(&dir, t),
            None => Err(format!("{cmd} needs the process to act on\n{USAGE}")),
        },
        "status" => dev::status(&dir),
        "supervise" => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .init();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("projstore-dev: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(dev::supervise(&dir)).map(|()| Vec::new())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("projstore-dev {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `projstore-apiserver [--addr IP] [--port N] [--state-dir DIR] [--kubeconfig FILE] [--crds DIR]`:
//! the test API server on its own, until interrupted.

use std::path::PathBuf;
use std::process::ExitCode;

use projstore_e2e::apiserver::{ApiServer, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = Config::default();
    let (mut kubeconfig, mut crds) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--addr" => value().and_then(|v| {
                v.parse()
                    .map(|ip| config.addr = ip)
                    .map_err(|e| format!("--addr: {e}"))
            }),
            "--port" => value().and_then(|v| {
                v.parse()
                    .map(|p| config.port = p)
                    .map_err(|e| format!("--port: {e}"))
            }),
            "--state-dir" => value().map(|v| config.state_dir = Some(PathBuf::from(v))),
            "--kubeconfig" => value().map(|v| kubeconfig = Some(PathBuf::from(v))),
            "--crds" => value().map(|v| crds = Some(PathBuf::from(v))),
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = parsed {
            eprintln!("projstore-apiserver: {e}");
            return ExitCode::from(2);
        }
    }
    let server = match ApiServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("projstore-apiserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = crds
        && let Err(e) = server.register_crds(&dir)
    {
        eprintln!("projstore-apiserver: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(k) = kubeconfig
        && let Err(e) = server.write_kubeconfig(&k)
    {
        eprintln!("projstore-apiserver: {e}");
        return ExitCode::FAILURE;
    }
    println!("serving on {}", server.url);
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

//! `projstore-controller [--metrics-addr ADDR] [--lease-namespace NS] [--identity ID]
//! [--leader-lease-seconds N] [--failover-grace-seconds N] [--heartbeat-timeout-seconds N]
//! [--log-format json|pretty]`: wires the command line to the library.

use std::process::ExitCode;
use std::time::Duration;

use projstore_controller::context::Settings;
use projstore_controller::run::{Config, run};

fn parse() -> Result<(Config, bool), String> {
    let mut config = Config {
        metrics_addr: "0.0.0.0:8080".parse().map_err(|e| format!("{e}"))?,
        identity: std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("controller-{}", std::process::id())),
        leader_lease: Duration::from_secs(15),
        settings: Settings {
            lease_namespace: "projstore-system".into(),
            failover_grace: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(40),
        },
    };
    let mut json = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let secs = |s: String| {
            s.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| format!("{e}"))
        };
        match a.as_str() {
            "--metrics-addr" => {
                config.metrics_addr = v()?.parse().map_err(|e| format!("--metrics-addr: {e}"))?
            }
            "--lease-namespace" => config.settings.lease_namespace = v()?,
            "--identity" => config.identity = v()?,
            "--leader-lease-seconds" => config.leader_lease = secs(v()?)?,
            "--failover-grace-seconds" => config.settings.failover_grace = secs(v()?)?,
            "--heartbeat-timeout-seconds" => config.settings.heartbeat_timeout = secs(v()?)?,
            "--log-format" => json = v()? == "json",
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((config, json))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (config, json) = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("projstore-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client: set KUBECONFIG or run in a cluster");
            return ExitCode::FAILURE;
        }
    };
    match run(client, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopping");
            ExitCode::FAILURE
        }
    }
}

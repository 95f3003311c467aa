//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The controller's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub projects_by_phase: IntGaugeVec,
    pub lag: HistogramVec,
    pub placement_failures: IntCounterVec,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("projstore_reconciles_total", "Reconciles by kind"),
            &["kind"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "projstore_reconcile_errors_total",
                "Reconcile errors by kind",
            ),
            &["kind"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "projstore_reconcile_duration_seconds",
                "Reconcile duration by kind",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["kind"],
        )?;
        let projects_by_phase = IntGaugeVec::new(
            Opts::new("projstore_projects", "Projects by phase"),
            &["phase"],
        )?;
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "projstore_replication_lag_seconds",
                "Replication lag of secondaries",
            )
            .buckets(vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            &["namespace"],
        )?;
        let placement_failures = IntCounterVec::new(
            Opts::new(
                "projstore_placement_failures_total",
                "Projects that could not be fully placed",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(projects_by_phase.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(placement_failures.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            projects_by_phase,
            lag,
            placement_failures,
            ready: AtomicBool::new(false),
        })
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves the endpoints until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (code, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => (200, "ok".to_owned()),
                        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                            (200, "ok".to_owned())
                        }
                        "/readyz" => (503, "caches not synced".to_owned()),
                        _ => (404, "not found".to_owned()),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() =
                        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

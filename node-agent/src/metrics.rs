//! The agent's Prometheus counters, served at `/metrics` on the stream port.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters (one agent per process).
#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub streams_written: AtomicU64,
    pub streams_applied: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub errors: AtomicU64,
    pub connections_refused: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    bytes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    streams_written: AtomicU64::new(0),
    streams_applied: AtomicU64::new(0),
    snapshots_taken: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
};

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The Prometheus text format.
pub fn render(m: &Metrics) -> String {
    let rows = [
        (
            "projstore_agent_stream_bytes_sent_total",
            "Stream bytes served to peers.",
            &m.bytes_sent,
        ),
        (
            "projstore_agent_stream_bytes_received_total",
            "Stream bytes fetched from peers.",
            &m.bytes_received,
        ),
        (
            "projstore_agent_streams_written_total",
            "Streams written from local snapshots.",
            &m.streams_written,
        ),
        (
            "projstore_agent_streams_applied_total",
            "Streams applied with zfs recv.",
            &m.streams_applied,
        ),
        (
            "projstore_agent_snapshots_taken_total",
            "Managed snapshots taken.",
            &m.snapshots_taken,
        ),
        (
            "projstore_agent_replica_errors_total",
            "Replica passes that ended in an error.",
            &m.errors,
        ),
        (
            "projstore_agent_connections_refused_total",
            "Stream-server connections refused over the total or per-peer limit.",
            &m.connections_refused,
        ),
    ];
    let mut out = String::new();
    for (name, help, v) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_prometheus_format() {
        let m = Metrics::default();
        add(&m.bytes_sent, 42);
        let text = render(&m);
        assert!(
            text.contains("projstore_agent_stream_bytes_sent_total 42\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE projstore_agent_streams_applied_total counter"));
    }
}

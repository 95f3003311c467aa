//! The agent's Prometheus counters, served at `/metrics` on the stream port.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters (one agent per process).
#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// `zfs send`s started for live sends, and receivers that joined one already running.
    pub live_sends: AtomicU64,
    pub live_send_joins: AtomicU64,
    pub streams_written: AtomicU64,
    pub streams_applied: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub errors: AtomicU64,
    pub connections_refused: AtomicU64,
    pub backup_bytes: AtomicU64,
    pub backup_verifications: AtomicU64,
    pub backup_verification_failures: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    bytes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    live_sends: AtomicU64::new(0),
    live_send_joins: AtomicU64::new(0),
    streams_written: AtomicU64::new(0),
    streams_applied: AtomicU64::new(0),
    snapshots_taken: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    backup_bytes: AtomicU64::new(0),
    backup_verifications: AtomicU64::new(0),
    backup_verification_failures: AtomicU64::new(0),
};

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Which way a live send went, seen from this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }
}

/// Live sends with one peer in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct PeerTransfers {
    pub transfers: u64,
    pub failures: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Live sends per peer node and direction.
pub static PEERS: Mutex<BTreeMap<(String, Direction), PeerTransfers>> = Mutex::new(BTreeMap::new());

/// Counts one live send with `peer` that moved `bytes` in `seconds`, failed or not.
pub fn record_transfer(peer: &str, direction: Direction, bytes: u64, seconds: f64, ok: bool) {
    if let Ok(mut peers) = PEERS.lock() {
        let t = peers.entry((peer.to_owned(), direction)).or_default();
        t.transfers += 1;
        t.failures += u64::from(!ok);
        t.bytes += bytes;
        t.seconds += seconds;
    }
}

/// A metric family: name, help, type, and its value for one peer.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerTransfers) -> String,
);

/// The per-peer rows of `/metrics`.
pub fn render_peers(peers: &BTreeMap<(String, Direction), PeerTransfers>) -> String {
    let mut out = String::new();
    let families: [Family; 4] = [
        (
            "projstore_agent_live_transfers_total",
            "Live sends, per peer node and direction.",
            "counter",
            |t| t.transfers.to_string(),
        ),
        (
            "projstore_agent_live_failures_total",
            "Live sends that did not commit, per peer node and direction.",
            "counter",
            |t| t.failures.to_string(),
        ),
        (
            "projstore_agent_live_bytes_total",
            "Stream bytes of live sends, per peer node and direction.",
            "counter",
            |t| t.bytes.to_string(),
        ),
        (
            "projstore_agent_live_seconds_total",
            "Time spent in live sends, per peer node and direction.",
            "counter",
            |t| format!("{:.3}", t.seconds),
        ),
    ];
    for (name, help, kind, value) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for ((peer, dir), t) in peers {
            // Node names are DNS names; anything else is escaped as the format asks.
            let peer = peer
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            out.push_str(&format!(
                "{name}{{peer=\"{peer}\",direction=\"{}\"}} {}\n",
                dir.as_str(),
                value(t)
            ));
        }
    }
    out
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
            "projstore_agent_live_sends_total",
            "zfs sends run to serve live sends.",
            &m.live_sends,
        ),
        (
            "projstore_agent_live_send_joins_total",
            "Live sends served by joining a zfs send already running for another receiver.",
            &m.live_send_joins,
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
        (
            "projstore_agent_backup_bytes_uploaded_total",
            "Bytes uploaded to backup targets (as stored).",
            &m.backup_bytes,
        ),
        (
            "projstore_agent_backup_verifications_total",
            "Backups restored into a scratch dataset and found equal.",
            &m.backup_verifications,
        ),
        (
            "projstore_agent_backup_verification_failures_total",
            "Backup verifications that failed.",
            &m.backup_verification_failures,
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

    #[test]
    fn live_sends_render_per_peer_and_direction() {
        let mut peers = BTreeMap::new();
        peers.insert(
            ("host-b".to_owned(), Direction::Received),
            PeerTransfers {
                transfers: 3,
                failures: 1,
                bytes: 4096,
                seconds: 1.5,
            },
        );
        peers.insert(
            ("we\"ird".to_owned(), Direction::Sent),
            PeerTransfers::default(),
        );
        let text = render_peers(&peers);
        for want in [
            "projstore_agent_live_transfers_total{peer=\"host-b\",direction=\"received\"} 3\n",
            "projstore_agent_live_failures_total{peer=\"host-b\",direction=\"received\"} 1\n",
            "projstore_agent_live_bytes_total{peer=\"host-b\",direction=\"received\"} 4096\n",
            "projstore_agent_live_seconds_total{peer=\"host-b\",direction=\"received\"} 1.500\n",
            "projstore_agent_live_bytes_total{peer=\"we\\\"ird\",direction=\"sent\"} 0\n",
            "# TYPE projstore_agent_live_seconds_total counter\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}

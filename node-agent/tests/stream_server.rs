//! The stream server over real HTTP: token, manifests, bytes, `Range`, and hostile paths.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use projstore_agent::fetch::Peer;
use projstore_agent::server::{
    BackupVerified, StreamServer, VerifyFailed, bind, serve_health, serve_with_write_stall,
};
use projstore_agent::streams::{ProjectKey, SnapshotJson, StreamId, StreamMeta, StreamStore};
use projstore_agent::tls::NodeTls;
use projstore_agent::zfs::Progress;
use projstore_e2e::limits::enough_descriptors;
use projstore_e2e::pki::ClusterCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Who asks: no client certificate, a node's certificate of the cluster CA (sent with its
/// node name), or a certificate naming a node from another CA.
#[derive(Clone, Copy)]
enum Who {
    Anonymous,
    Node(&'static str),
    ForeignCa,
}

/// host-b holds a copy of alice/thesis (and of bob/none); host-c holds none.
const B: Who = Who::Node("host-b");

struct Fx {
    addr: std::net::SocketAddr,
    data: Vec<u8>,
    dir: tempfile::TempDir,
    ca: ClusterCa,
    foreign: ClusterCa,
    tls: Arc<NodeTls>,
    health_addr: std::net::SocketAddr,
}

async fn start() -> Fx {
    start_with(projstore_agent::live::STALL).await
}

/// [`start`], with a server that drops a peer taking nothing for `stall`.
async fn start_with(stall: std::time::Duration) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = StreamStore::new(dir.path().join("streams"));
    let key = ProjectKey::new("alice", "thesis").unwrap();
    let id = StreamId::for_snapshots(None, "ps-1").unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = store.begin(&key, &id).await.unwrap();
    w.write_all(&data).await.unwrap();
    let snap = SnapshotJson {
        name: "ps-1".into(),
        guid: "42".into(),
        createtxg: 7,
        time: 1_800_000_000,
    };
    w.commit(StreamMeta {
        from: None,
        to: snap,
        epoch: 1,
        node: "host-a".into(),
    })
    .await
    .unwrap();
    // A secret outside the store, which no request may reach.
    std::fs::write(dir.path().join("secret"), b"top secret").unwrap();
    let ca = ClusterCa::new("test-agents-ca").unwrap();
    ca.write_node_dir(
        &dir.path().join("tls-a"),
        "host-a",
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap();
    let tls = Arc::new(NodeTls::load(&dir.path().join("tls-a"), "host-a").unwrap());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(StreamServer {
        store,
        sources: None,
        // A stand-in for the restore a verification runs: it takes a few seconds, counts
        // bytes, and finds alice/thesis good and bob/none bad.
        verify: Some(Arc::new(|project: ProjectKey, progress: Progress| {
            Box::pin(async move {
                for _ in 0..5 {
                    progress.add(1 << 20);
                    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                }
                if project.name == "thesis" {
                    Ok(BackupVerified {
                        pool: "host-a-storage".into(),
                        snapshot: "ps-1".into(),
                        guid: "42".into(),
                        streams: 1,
                    })
                } else {
                    Err(VerifyFailed {
                        message: "stream refused: SHA-256 differs".into(),
                        stream: Some("full--ps-1".into()),
                        busy: false,
                        host: false,
                    })
                }
            })
        })),
        authorize: Arc::new(|project: ProjectKey, node: String| {
            let holds = node == "host-b"
                && ["alice/thesis", "bob/none"].contains(&project.to_string().as_str());
            Box::pin(async move { Ok(holds) })
        }),
    });
    tokio::spawn(serve_with_write_stall(listener, server, tls.clone(), stall));
    let health = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let health_addr = health.local_addr().unwrap();
    tokio::spawn(serve_health(health, Arc::new(AtomicBool::new(true))));
    let foreign = ClusterCa::new("someone-elses-ca").unwrap();
    Fx {
        addr,
        data,
        dir,
        ca,
        foreign,
        tls,
        health_addr,
    }
}

impl Fx {
    fn client_config(&self, who: Who) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca.pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let issued = match who {
            Who::Anonymous => return builder.with_no_client_auth(),
            Who::Node(node) => self.ca.issue(node, &[]).unwrap(),
            Who::ForeignCa => self.foreign.issue("host-b", &[]).unwrap(),
        };
        let chain = rustls_pemfile::certs(&mut issued.0.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pemfile::private_key(&mut issued.1.as_bytes())
            .unwrap()
            .unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    }

    /// Sends a raw request over TLS (the server must prove to be host-a); returns (status,
    /// headers, body), or status 0 when the server closed the connection without answering.
    /// A plain HTTP GET of the health port: (status, body).
    async fn health(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.health_addr)
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The certificate the server presents to a new connection.
    async fn served_certificate(&self) -> Vec<u8> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(B)));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("host-a").unwrap();
        let s = connector.connect(name, tcp).await.unwrap();
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    async fn get(&self, path: &str, who: Who, range: Option<&str>) -> (u16, String, Vec<u8>) {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(who)));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("host-a").unwrap();
        let Ok(mut s) = connector.connect(name, tcp).await else {
            return (0, String::new(), Vec::new());
        };
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        match who {
            Who::Node(node) => req.push_str(&format!("X-Projstore-Node: {node}\r\n")),
            Who::ForeignCa => req.push_str("X-Projstore-Node: host-b\r\n"),
            Who::Anonymous => {}
        }
        if let Some(r) = range {
            req.push_str(&format!("Range: {r}\r\n"));
        }
        req.push_str("\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            return (0, String::new(), Vec::new());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (0, String::new(), Vec::new());
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, head, body)
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + n]);
        b = &b[line_end + 2 + n + 2..];
    }
}

/// A copy's agent has a spare host verify a backup: it sees the bytes received while the
/// restore runs and then the outcome; a node without a copy is refused.
#[tokio::test]
async fn a_backup_verification_reports_progress_then_its_outcome_to_a_holder_only() {
    let fx = start().await;
    fx.ca
        .write_node_dir(&fx.dir.path().join("tls-b"), "host-b", &[])
        .unwrap();
    let tls_b = Arc::new(NodeTls::load(&fx.dir.path().join("tls-b"), "host-b").unwrap());
    let peer = Peer::new(&format!("https://{}", fx.addr), "host-a", tls_b).unwrap();
    let progress = Progress::new();
    let v = peer
        .verify_backup(&ProjectKey::new("alice", "thesis").unwrap(), &progress)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.snapshot.as_str(), v.guid.as_str()), ("ps-1", "42"));
    assert!(
        progress.bytes() >= 1 << 20,
        "progress lines arrived: {}",
        progress.bytes()
    );
    let bad = peer
        .verify_backup(&ProjectKey::new("bob", "none").unwrap(), &Progress::new())
        .await
        .unwrap()
        .unwrap_err();
    assert!(bad.message.contains("SHA-256 differs"), "{bad:?}");
    assert_eq!(bad.stream.as_deref(), Some("full--ps-1"));
    let (code, _, _) = fx
        .get("/v1/verify-backup/alice/thesis", Who::Node("host-c"), None)
        .await;
    assert_eq!(code, 403);
    let (code, _, _) = fx.get("/v1/verify-backup/alice", B, None).await;
    assert_eq!(code, 400);
}

/// Only a node of the cluster CA that holds a copy of the project gets its data; plain HTTP
/// gets nothing at all; health answers anyone.
#[tokio::test]
async fn only_a_node_holding_a_copy_gets_a_projects_data() {
    let fx = start().await;
    let list = "/v1/streams/alice/thesis";
    let file = "/v1/streams/alice/thesis/full--ps-1.zstream";
    assert_eq!(fx.get(list, B, None).await.0, 200);
    // Without a client certificate no handshake completes; a node without a copy: 403.
    for (who, want) in [(Who::Anonymous, 0), (Who::Node("host-c"), 403)] {
        for path in [list, file] {
            let (code, _, body) = fx.get(path, who, None).await;
            assert_eq!(code, want, "{path}");
            assert!(body.len() < 1000, "{path}: data was sent");
        }
    }
    // A certificate from another CA does not even complete the handshake.
    assert_eq!(fx.get(file, Who::ForeignCa, None).await.0, 0);
    // A node's certificate, but the header names another node.
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(fx.client_config(Who::Node("host-c"))))
        .connect(
            rustls::pki_types::ServerName::try_from("host-a").unwrap(),
            tokio::net::TcpStream::connect(fx.addr).await.unwrap(),
        )
        .await
        .unwrap();
    s.write_all(format!("GET {file} HTTP/1.1\r\nHost: x\r\nX-Projstore-Node: host-b\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 401"),
        "a node claimed another's name"
    );
    // Plain HTTP: no answer, no data.
    let mut plain = tokio::net::TcpStream::connect(fx.addr).await.unwrap();
    plain
        .write_all(
            format!("GET {file} HTTP/1.1\r\nHost: x\r\nX-Projstore-Node: host-b\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut raw),
    )
    .await;
    assert!(!String::from_utf8_lossy(&raw).contains("HTTP/1.1 200") && raw.len() < 100);
    // Health, readiness and metrics: on the health port, in plain HTTP, for anyone; nothing
    // else there.
    assert_eq!(fx.health("/healthz").await, (200, "ok".into()));
    assert_eq!(fx.health("/readyz").await.0, 200);
    assert!(fx.health("/metrics").await.1.contains("projstore_agent"));
    assert_eq!(fx.health("/v1/streams/alice/thesis").await.0, 404);
    assert_eq!(fx.get("/healthz", B, None).await.0, 404);
}

#[tokio::test]
async fn manifests_bytes_and_ranges() {
    let fx = start().await;
    let data = fx.data.clone();
    let (code, _, body) = fx.get("/v1/streams/alice/thesis", B, None).await;
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["id"], "full--ps-1");
    assert_eq!(list[0]["manifest"]["bytes"], 200_000);
    let (code, _, body) = fx
        .get("/v1/streams/alice/thesis/full--ps-1.zstream", B, None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(body, data);
    let (code, head, body) = fx
        .get(
            "/v1/streams/alice/thesis/full--ps-1.zstream",
            B,
            Some("bytes=150000-"),
        )
        .await;
    assert_eq!(code, 206);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-range: bytes 150000-199999/200000"),
        "{head}"
    );
    assert_eq!(body, data[150_000..]);
    assert_eq!(
        fx.get(
            "/v1/streams/alice/thesis/full--ps-1.zstream",
            B,
            Some("bytes=300000-")
        )
        .await
        .0,
        416
    );
    let (code, _, body) = fx
        .get("/v1/streams/alice/thesis/full--ps-1.json", B, None)
        .await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"sha256\""));
    assert_eq!(
        fx.get("/v1/streams/alice/thesis/full--ps-9.zstream", B, None)
            .await
            .0,
        404
    );
    assert_eq!(
        fx.get("/v1/streams/bob/none", B, None).await.0,
        200,
        "an unknown project has no streams"
    );
}

#[tokio::test]
async fn hostile_paths_are_refused_and_never_served() {
    let fx = start().await;
    for path in [
        "/v1/streams/alice/thesis/../../secret",
        "/v1/streams/../secret",
        "/v1/streams/alice/../../secret",
        "/v1/streams/alice/thesis/..%2f..%2fsecret",
        "/v1/streams/alice/thesis/%2e%2e",
        "/v1/streams//etc/passwd",
        "/etc/passwd",
        "/v1/streams/alice/thesis/-rf.zstream",
        "/v1/streams/alice/thesis/.hidden--x.zstream",
        "/v1/streams/Alice/thesis",
        "/v1/streams/alice/thesis/full--ps-1.zstream/extra",
        "/v1/streams/alice/thesis/a;b--c.zstream",
    ] {
        let (code, _, body) = fx.get(path, B, None).await;
        assert!(matches!(code, 400 | 404), "{path}: {code}");
        assert!(
            !String::from_utf8_lossy(&body).contains("top secret"),
            "{path} leaked the secret"
        );
    }
}

/// Stream files are a project's data: 0600 in 0700 directories (a tenant uid on the host
/// reads none of them), and a symlink placed among them is refused, not served.
#[tokio::test]
async fn stream_files_are_private_and_a_planted_symlink_is_not_served() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fx = start().await;
    let dir = &fx.dir;
    let streams = dir.path().join("streams");
    let project = streams.join("alice/thesis");
    for d in [&streams, &streams.join("alice"), &project] {
        assert_eq!(
            std::fs::metadata(d).unwrap().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
    for f in std::fs::read_dir(&project).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(
            std::fs::metadata(&f).unwrap().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    // Even were the directories opened up, a tenant uid reads no stream file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = project.join("full--ps-1.zstream");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=2001",
            "--regid=2001",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "a tenant read a stream file"
    );

    // A symlink planted in place of a stream (and of its manifest) leads nowhere.
    let secret = dir.path().join("secret");
    for (planted, url) in [
        (
            "full--ps-1.zstream",
            "/v1/streams/alice/thesis/full--ps-1.zstream",
        ),
        (
            "full--ps-1.json",
            "/v1/streams/alice/thesis/full--ps-1.json",
        ),
    ] {
        std::fs::remove_file(project.join(planted)).unwrap();
        std::os::unix::fs::symlink(&secret, project.join(planted)).unwrap();
        let (status, _, body) = fx.get(url, B, None).await;
        assert_ne!(status, 200, "{planted}");
        assert!(!String::from_utf8_lossy(&body).contains("top secret"));
    }
}

/// 1,000 idle connections and a client that sends half a request, all from one peer address
/// without a certificate: the server keeps answering others at once, and closes the idle ones.
#[tokio::test]
async fn idle_and_slow_clients_cannot_starve_the_server() {
    use projstore_agent::server::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS_PER_PEER};
    enough_descriptors(4096);
    let fx = start().await;
    let data = fx.data.clone();
    let attacker: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((attacker, 0).into()).unwrap();
        idle.push(sock.connect(fx.addr).await.unwrap());
    }
    // Half a TLS ClientHello; and a finished handshake followed by half a request.
    let mut slow = idle.pop().unwrap();
    let _ = slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    let mut slow_tls = tokio_rustls::TlsConnector::from(Arc::new(fx.client_config(B)))
        .connect(
            rustls::pki_types::ServerName::try_from("host-a").unwrap(),
            tokio::net::TcpStream::connect(fx.addr).await.unwrap(),
        )
        .await
        .unwrap();
    slow_tls
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    slow_tls.flush().await.unwrap();

    // Another peer is served at once, health and data alike.
    let t = std::time::Instant::now();
    assert_eq!(fx.health("/healthz").await, (200, "ok".into()));
    let (status, _, body) = fx
        .get("/v1/streams/alice/thesis/full--ps-1.zstream", B, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, data);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );

    // Beyond the per-peer limit the attacker's connections were closed at once; the rest,
    // idle or half-sent, are closed after the header-read timeout.
    let closed = |s: &tokio::net::TcpStream| {
        let mut b = [0u8; 1];
        matches!(s.try_read(&mut b), Ok(0) | Ok(1))
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refused = idle.iter().filter(|s| closed(s)).count();
    assert!(
        refused >= 999 - MAX_CONNECTIONS_PER_PEER,
        "{refused} closed at once"
    );
    let limit = HEADER_READ_TIMEOUT.max(projstore_agent::server::HANDSHAKE_TIMEOUT);
    tokio::time::sleep(limit + std::time::Duration::from_secs(2)).await;
    let open = idle.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 0, "idle connections outlived the header-read timeout");
    assert!(
        closed(&slow),
        "a half-sent request outlived the header-read timeout"
    );
    // Over TLS too: the server ends the connection (what it says first, if anything, is no
    // answer to the half-sent request).
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        slow_tls.read_to_end(&mut rest),
    )
    .await;
    assert!(
        ended.is_ok() && !String::from_utf8_lossy(&rest).contains("200 OK"),
        "a half-sent request over TLS outlived the header-read timeout"
    );
}

/// A peer that stops reading an answer loses its connection once it took nothing for the
/// server's write stall (2 s here, 300 s in the agent), and with it what the answer held.
#[tokio::test]
async fn a_peer_that_stops_reading_loses_its_connection() {
    let stall = std::time::Duration::from_secs(2);
    let fx = start_with(stall).await;
    // A stream far larger than every buffer between the server and this client.
    let store = StreamStore::new(fx.dir.path().join("streams"));
    let key = ProjectKey::new("bob", "none").unwrap();
    let id = StreamId::for_snapshots(None, "big-1").unwrap();
    let big: Vec<u8> = (0..(48u32 << 20)).map(|i| (i % 253) as u8).collect();
    let mut w = store.begin(&key, &id).await.unwrap();
    w.write_all(&big).await.unwrap();
    w.commit(StreamMeta {
        from: None,
        to: SnapshotJson {
            name: "big-1".into(),
            guid: "43".into(),
            createtxg: 9,
            time: 1_800_000_000,
        },
        epoch: 1,
        node: "host-a".into(),
    })
    .await
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(fx.client_config(B)));
    let tcp = tokio::net::TcpStream::connect(fx.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("host-a").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(
        b"GET /v1/streams/bob/none/full--big-1.zstream HTTP/1.1\r\nHost: x\r\n\
          X-Projstore-Node: host-b\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut first = vec![0u8; 64 << 10];
    s.read_exact(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));
    // Nothing taken for a while, then the rest: it was cut short.
    tokio::time::sleep(3 * stall).await;
    let mut rest = Vec::new();
    let ended =
        tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the connection is still open");
    assert!(
        first.len() + rest.len() < big.len(),
        "the whole answer came: {} bytes",
        first.len() + rest.len()
    );
}

#[tokio::test]
async fn a_renewed_certificate_serves_the_next_connection_and_a_bad_one_changes_nothing() {
    let fx = start().await;
    let dir = fx.dir.path().join("tls-a");
    let pem_der = |path: &std::path::Path| {
        let pem = std::fs::read(path).unwrap();
        rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let first = pem_der(&dir.join("tls.crt"));
    assert_eq!(fx.served_certificate().await, first);
    assert!(!fx.tls.reload().unwrap(), "nothing changed");

    // Renewed (as cert-manager does: new key, new certificate, same CA).
    fx.ca
        .write_node_dir(&dir, "host-a", &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let renewed = pem_der(&dir.join("tls.crt"));
    assert_ne!(renewed, first);
    assert!(fx.tls.reload().unwrap());
    assert_eq!(fx.served_certificate().await, renewed);
    let (status, _, body) = fx
        .get("/v1/streams/alice/thesis/full--ps-1.zstream", B, None)
        .await;
    assert_eq!((status, body.len()), (200, fx.data.len()));

    // A certificate for another node (a mix-up, a half-written update) is not taken.
    let other = fx.dir.path().join("tls-other");
    fx.ca.write_node_dir(&other, "host-z", &[]).unwrap();
    std::fs::copy(other.join("tls.crt"), dir.join("tls.crt")).unwrap();
    std::fs::copy(other.join("tls.key"), dir.join("tls.key")).unwrap();
    let e = fx.tls.reload().unwrap_err().to_string();
    assert!(e.contains("host-a"), "{e}");
    assert_eq!(fx.served_certificate().await, renewed);
}

/// Other hosts holding every health connection they may (from one address, and from many)
/// do not keep this host's own probes out.
#[tokio::test]
async fn the_health_port_keeps_slots_for_this_hosts_probes() {
    use projstore_agent::server::{MAX_HEALTH_CONNECTIONS, MAX_HEALTH_CONNECTIONS_PER_PEER};
    enough_descriptors(1024);
    let fx = start().await;
    let mut held = Vec::new();
    // One address: only its share is kept open; many addresses: all the others' slots.
    for i in 0..(MAX_HEALTH_CONNECTIONS + 40) {
        let from: std::net::IpAddr = format!("127.0.1.{}", 1 + i / MAX_HEALTH_CONNECTIONS_PER_PEER)
            .parse()
            .unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((from, 0).into()).unwrap();
        held.push(sock.connect(fx.health_addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let open = held
        .iter()
        .filter(|s| {
            let mut b = [0u8; 1];
            !matches!(s.try_read(&mut b), Ok(0))
        })
        .count();
    assert_eq!(
        open, MAX_HEALTH_CONNECTIONS,
        "the others' slots are bounded"
    );
    // The probe from this host itself (127.0.0.1 reaching 127.0.0.1) is answered.
    assert_eq!(fx.health("/healthz").await, (200, "ok".into()));
    drop(held);
}

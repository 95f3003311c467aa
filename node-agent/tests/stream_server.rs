//! The stream server over real HTTP: token, manifests, bytes, `Range`, and hostile paths.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use projstore_agent::server::{StreamServer, bind, serve};
use projstore_agent::streams::{ProjectKey, SnapshotJson, StreamId, StreamMeta, StreamStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start() -> (std::net::SocketAddr, Vec<u8>, tempfile::TempDir) {
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
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(StreamServer {
        store,
        token: "s3cret-token".into(),
        ready: AtomicBool::new(true),
    });
    tokio::spawn(serve(listener, server));
    (addr, data, dir)
}

/// Sends a raw request; returns (status, headers, body).
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(r) = range {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
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

const TOKEN: Option<&str> = Some("s3cret-token");

#[tokio::test]
async fn the_token_is_required() {
    let (addr, _, _dir) = start().await;
    assert_eq!(
        get(addr, "/v1/streams/alice/thesis", None, None).await.0,
        401
    );
    assert_eq!(
        get(addr, "/v1/streams/alice/thesis", Some("wrong"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        get(addr, "/v1/streams/alice/thesis", Some("s3cret-toke"), None)
            .await
            .0,
        401
    );
    assert_eq!(get(addr, "/healthz", None, None).await.0, 200);
}

#[tokio::test]
async fn manifests_bytes_and_ranges() {
    let (addr, data, _dir) = start().await;
    let (code, _, body) = get(addr, "/v1/streams/alice/thesis", TOKEN, None).await;
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["id"], "full--ps-1");
    assert_eq!(list[0]["manifest"]["bytes"], 200_000);
    let (code, _, body) = get(
        addr,
        "/v1/streams/alice/thesis/full--ps-1.zstream",
        TOKEN,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body, data);
    let (code, head, body) = get(
        addr,
        "/v1/streams/alice/thesis/full--ps-1.zstream",
        TOKEN,
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
        get(
            addr,
            "/v1/streams/alice/thesis/full--ps-1.zstream",
            TOKEN,
            Some("bytes=300000-")
        )
        .await
        .0,
        416
    );
    let (code, _, body) = get(
        addr,
        "/v1/streams/alice/thesis/full--ps-1.json",
        TOKEN,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"sha256\""));
    assert_eq!(
        get(
            addr,
            "/v1/streams/alice/thesis/full--ps-9.zstream",
            TOKEN,
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(addr, "/v1/streams/bob/none", TOKEN, None).await.0,
        200,
        "an unknown project has no streams"
    );
}

#[tokio::test]
async fn hostile_paths_are_refused_and_never_served() {
    let (addr, _, _dir) = start().await;
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
        let (code, _, body) = get(addr, path, TOKEN, None).await;
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
    let (addr, _data, dir) = start().await;
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
        let (status, _, body) = get(addr, url, Some("s3cret-token"), None).await;
        assert_ne!(status, 200, "{planted}");
        assert!(!String::from_utf8_lossy(&body).contains("top secret"));
    }
}

/// 1,000 idle connections and a client that sends half a request, all from one peer address
/// without a token: the server keeps answering others at once, and closes the idle ones.
#[tokio::test]
async fn idle_and_slow_clients_cannot_starve_the_server() {
    use projstore_agent::server::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS_PER_PEER};
    let (addr, data, _dir) = start().await;
    let attacker: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((attacker, 0).into()).unwrap();
        idle.push(sock.connect(addr).await.unwrap());
    }
    let mut slow = idle.pop().unwrap();
    let _ = slow
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await;

    // Another peer is served at once, health and data alike.
    let t = std::time::Instant::now();
    let (status, _, body) = get(addr, "/healthz", None, None).await;
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, body) = get(
        addr,
        "/v1/streams/alice/thesis/full--ps-1.zstream",
        Some("s3cret-token"),
        None,
    )
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
    tokio::time::sleep(HEADER_READ_TIMEOUT + std::time::Duration::from_secs(2)).await;
    let open = idle.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 0, "idle connections outlived the header-read timeout");
    assert!(
        closed(&slow),
        "a half-sent request outlived the header-read timeout"
    );
}

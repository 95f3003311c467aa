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

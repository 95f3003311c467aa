//! A restore reads a stream object from the bucket in ranges, several at once: against a
//! real `s3s-fs` behind a relay that plays a hostile or broken service, a range longer or
//! shorter than asked for fails the read (an endless one is cut off at its length), the size
//! the service claims is handed to the caller (which compares it with the manifest's), and
//! an object rewritten between the reads fails them instead of mixing two versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use object_store::ObjectStoreExt;
use projstore_agent::backup::bucket::Bucket;
use projstore_agent::streams::StreamId;
use projstore_api::BackupTargetSpec;
use projstore_api::s3::{Credentials, Patience};
use projstore_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

/// What the relay does to the service's answers.
const PASS: u8 = 0;
/// A ranged GET's body goes on without end after its range (a length of 1 TiB declared).
const ENDLESS: u8 = 1;
/// A ranged GET's body is cut short by a byte.
const SHORTER: u8 = 2;
/// HEAD says the object holds a byte more.
const HEAD_LIES: u8 = 3;

/// A relay on loopback in front of `upstream`, altering answers as `mode` says.
async fn relay(upstream: String, mode: Arc<AtomicU8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (upstream, mode) = (upstream.clone(), mode.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (upstream, mode) = (upstream.clone(), mode.clone());
                        async move { forward(&upstream, req, mode.load(Ordering::SeqCst)).await }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn forward(
    upstream: &str,
    req: Request<hyper::body::Incoming>,
    mode: u8,
) -> Result<Response<Body>, hyper::Error> {
    let ranged = req.headers().contains_key(hyper::header::RANGE);
    let head = req.method() == hyper::Method::HEAD;
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let sock = tokio::net::TcpStream::connect(upstream.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (mut parts, body) = resp.into_parts();
    let mut body = body.collect().await?.to_bytes().to_vec();
    let length = |parts: &mut hyper::http::response::Parts, n: usize| {
        parts.headers.insert(
            hyper::header::CONTENT_LENGTH,
            n.to_string().parse().unwrap(),
        );
    };
    match mode {
        ENDLESS if ranged => {
            length(&mut parts, 1 << 40);
            let more = Bytes::from(vec![0x5a; 1 << 20]);
            let frames = futures::stream::iter(
                std::iter::once(Bytes::from(body)).chain(std::iter::repeat(more)),
            )
            .map(|b| Ok(hyper::body::Frame::data(b)));
            let endless = http_body_util::StreamBody::new(frames);
            return Ok(Response::from_parts(parts, BodyExt::boxed(endless)));
        }
        SHORTER if ranged => {
            body.pop();
            length(&mut parts, body.len());
        }
        HEAD_LIES if head => {
            let n: usize = parts.headers[hyper::header::CONTENT_LENGTH]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            length(&mut parts, n + 1);
        }
        _ => {}
    }
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed(Full::new(Bytes::from(body))),
    ))
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[tokio::test]
async fn ranges_are_read_whole_and_no_more_and_of_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(&dir.path().join("s3"), "reads").unwrap() else {
        assert!(
            std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
            "s3s-fs is required (make test installs it) but missing"
        );
        eprintln!("SKIP: no s3s-fs");
        return;
    };
    let mode = Arc::new(AtomicU8::new(PASS));
    let endpoint = relay(s3.endpoint.trim_end_matches('/').to_owned(), mode.clone()).await;
    let spec = BackupTargetSpec {
        endpoint,
        region: "us-east-1".into(),
        bucket: "reads".into(),
        prefix: None,
        credentials_secret: projstore_api::SecretRef {
            namespace: "x".into(),
            name: "x".into(),
        },
        encryption_key_secret: None,
        verify_interval_days: 7,
    };
    let creds = Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
    };
    let store = projstore_api::s3::store(&spec, &creds, Patience::Transfer).unwrap();
    let root = object_store::path::Path::from("ns/p");
    let bucket = Bucket::new(store.clone(), root, None, "ns/p".into());
    let id = StreamId::for_snapshots(None, "s1").unwrap();
    let at = object_store::path::Path::from(format!("ns/p/{}", id.file_name()));
    // Eight ranges and a bit: more than are asked for at once.
    let object = data((64 << 20) + 12345, 1);
    store.put(&at, object.clone().into()).await.unwrap();
    let size = object.len() as u64;

    let read_all = |bucket: Bucket, id: StreamId| async move {
        let (said, mut body) = bucket.get_stream(&id, size).await.unwrap();
        let mut got = Vec::new();
        while let Some(piece) = body.next().await {
            match piece {
                Ok(p) => got.extend_from_slice(&p),
                Err(e) => return (said, Err(e.to_string())),
            }
        }
        (said, Ok(got))
    };

    let (said, got) = read_all(bucket.clone(), id.clone()).await;
    assert_eq!(said, size);
    assert!(got.unwrap() == object, "read back in order, whole");

    // A range that never ends is cut off at its length, not gathered until memory runs out.
    mode.store(ENDLESS, Ordering::SeqCst);
    let (_, got) = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        read_all(bucket.clone(), id.clone()),
    )
    .await
    .expect("an endless range was read on and on");
    let e = got.unwrap_err();
    assert!(e.contains("more than was asked for"), "{e}");

    mode.store(SHORTER, Ordering::SeqCst);
    let (_, got) = read_all(bucket.clone(), id.clone()).await;
    let e = got.unwrap_err();
    assert!(e.contains("sent only"), "{e}");

    mode.store(HEAD_LIES, Ordering::SeqCst);
    let (said, _) = read_all(bucket.clone(), id.clone()).await;
    assert_eq!(
        said,
        size + 1,
        "the size the service claims is handed to the caller"
    );

    // Rewritten between the first range and the next: the reads fail, nothing of the new
    // version is mixed into the old.
    mode.store(PASS, Ordering::SeqCst);
    let (_, mut body) = bucket.get_stream(&id, size).await.unwrap();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &object[..first.len()]);
    store.put(&at, data(object.len(), 2).into()).await.unwrap();
    let mut rest = Vec::new();
    let mut failed = None;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(p) => rest.extend_from_slice(&p),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    // Ranges asked for before the rewrite may still come from the old version; none of the
    // new one passes.
    assert!(
        object[first.len()..].starts_with(&rest),
        "a range of the rewritten object was mixed in"
    );
    assert!(failed.is_some(), "the rewritten object was read to its end");
}

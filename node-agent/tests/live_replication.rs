//! Live replication over the stream server (DESIGN §5.4): real `zfs send` on one pool, real
//! `zfs recv` on others, mutual TLS between them; a stream commits only once verified.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::header::HeaderMap;
use projstore_agent::fetch::Peer;
use projstore_agent::live::{
    BYTES_TRAILER, DIGEST_TRAILER, LiveError, SendRequest, Sources, WITHHELD, apply_verified,
    check_begin, check_trailers,
};
use projstore_agent::server::{StreamServer, bind, serve};
use projstore_agent::streams::{ProjectKey, StreamStore};
use projstore_agent::tls::NodeTls;
use projstore_agent::zfs::{DatasetName, Progress, PropertyName, RecvOptions, SendFlags, Zfs};
use projstore_e2e::pki::ClusterCa;
use support::*;

const MIB: u64 = 1 << 20;

struct Fx {
    zfs: Zfs,
    source: TestPool,
    copies: Vec<TestPool>,
    live: DatasetName,
    mountpoint: std::path::PathBuf,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    ca: ClusterCa,
    /// The source's live sends (shared with its stream server).
    sources: Sources,
}

fn key() -> ProjectKey {
    ProjectKey::new("alice", "thesis").unwrap()
}

fn want(from: Option<u64>, to: u64) -> SendRequest {
    SendRequest {
        project: key(),
        from,
        to,
        resume: None,
    }
}

/// A source pool with a live dataset of alice/thesis served by a stream server as host-a
/// (host-b holds a copy, host-c none), and `copies` empty pools to receive into.
async fn start(zfs: Zfs, copies: usize) -> Fx {
    let source = TestPool::new(&zfs, 256 * MIB).await;
    let mut pools = Vec::new();
    for _ in 0..copies {
        pools.push(TestPool::new(&zfs, 256 * MIB).await);
    }
    let live = source.name.dataset("live").unwrap();
    let mountpoint = source.path("live");
    zfs.create(
        &live,
        &[(
            PropertyName::parse("mountpoint").unwrap(),
            mountpoint.to_str().unwrap().into(),
        )],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::new("live-test-ca").unwrap();
    for node in ["host-a", "host-b", "host-c"] {
        ca.write_node_dir(
            &dir.path().join(node),
            node,
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    }
    let tls = Arc::new(NodeTls::load(&dir.path().join("host-a"), "host-a").unwrap());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = live.clone();
    // Receivers a test starts together join one send: here they may take their time.
    let sources = Sources::new(
        zfs.clone(),
        Arc::new(move |project| {
            let ds = (project == key()).then(|| served.clone());
            Box::pin(async move { ds })
        }),
    )
    .with_join_time(std::time::Duration::from_secs(5));
    let server = Arc::new(StreamServer {
        store: StreamStore::new(dir.path().join("streams")),
        verify: None,
        authorize: Arc::new(|project: ProjectKey, node: String| {
            let holds = node == "host-b" && project == key();
            Box::pin(async move { Ok(holds) })
        }),
        sources: Some(sources.clone()),
    });
    tokio::spawn(serve(listener, server, tls));
    Fx {
        zfs,
        source,
        copies: pools,
        live,
        mountpoint,
        addr,
        dir,
        ca,
        sources,
    }
}

impl Fx {
    fn peer(&self, as_node: &str) -> Peer {
        let tls = Arc::new(NodeTls::load(&self.dir.path().join(as_node), as_node).unwrap());
        Peer::new(&format!("https://{}", self.addr), "host-a", tls).unwrap()
    }

    /// Writes `seed`'s files into the live dataset and snapshots it as `name`; its GUID.
    async fn snapshot(&self, name: &str, seed: u64) -> u64 {
        self.snapshot_of(name, seed, 3 << 20).await
    }

    /// [`Fx::snapshot`] with a large file of `large` bytes.
    async fn snapshot_of(&self, name: &str, seed: u64, large: usize) -> u64 {
        write_tree(&self.mountpoint.join(name), seed, large);
        let snap = self.live.snapshot(name).unwrap();
        self.zfs.snapshot(&snap, &[]).await.unwrap();
        self.guid_of(&self.live, name).await.unwrap()
    }

    async fn guid_of(&self, ds: &DatasetName, name: &str) -> Option<u64> {
        let snaps = self.zfs.snapshots(ds, &[]).await.ok()?;
        snaps.iter().find(|s| s.name == name).map(|s| s.guid)
    }

    async fn guids(&self, ds: &DatasetName) -> Vec<u64> {
        match self.zfs.snapshots(ds, &[]).await {
            Ok(s) => s.iter().map(|s| s.guid).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn copy(&self, i: usize) -> DatasetName {
        self.copies[i].name.dataset("copy").unwrap()
    }

    /// The stream `zfs send` makes of snapshot `to` (from `from`), and its BLAKE3 digest.
    async fn stream(&self, from: Option<&str>, to: &str) -> (Vec<u8>, String) {
        let to = self.live.snapshot(to).unwrap();
        let from = from.map(|f| self.live.snapshot(f).unwrap());
        let mut out = Vec::new();
        self.zfs
            .send(&to, from.as_ref(), &mut out, &Progress::new())
            .await
            .unwrap();
        let digest = blake3::hash(&out).to_hex().to_string();
        (out, digest)
    }
}

/// A live send's body as it would arrive: the data in chunks, then the given trailers.
fn body(
    data: &[u8],
    trailers: Option<HeaderMap>,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(100_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures::stream::iter(frames))
}

fn trailers(digest: &str, bytes: usize) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(DIGEST_TRAILER, digest.parse().unwrap());
    t.insert(BYTES_TRAILER, bytes.to_string().parse().unwrap());
    t
}

const RECV: RecvOptions = RecvOptions {
    unmounted: true,
    resumable: false,
};

#[tokio::test]
async fn only_a_plain_stream_of_the_snapshot_asked_for_gets_past_its_begin_record() {
    let Some(zfs) = zfs_or_skip("live begin record").await else {
        return;
    };
    let fx = start(zfs, 0).await;
    let s1 = fx.snapshot("s1", 7).await;
    let s2 = fx.snapshot("s2", 8).await;
    let (full, _) = fx.stream(None, "s1").await;
    let (inc, _) = fx.stream(Some("s1"), "s2").await;
    let begin = |b: &[u8]| b[..projstore_agent::live::RECORD].to_vec();
    let (full, inc) = (begin(&full), begin(&inc));
    assert_eq!(check_begin(&full, &want(None, s1), false), Ok(()));
    assert_eq!(check_begin(&inc, &want(Some(s1), s2), false), Ok(()));
    let set32 = |r: &[u8], at: usize, v: u32| {
        let mut r = r.to_vec();
        r[at..at + 4].copy_from_slice(&v.to_le_bytes());
        r
    };
    let flags = u32::from_le_bytes(full[36..40].try_into().unwrap());
    let info = u64::from_le_bytes(full[16..24].try_into().unwrap());
    let mut compound = full.clone();
    compound[16..24].copy_from_slice(&((info & !3) | 2).to_le_bytes());
    // A resumed send (OpenZFS `zfs send -t`): DMU_BACKUP_FEATURE_RESUMING among the feature
    // flags above the header type, and where it resumes in a payload after the record.
    let mut resumed = set32(&full, 4, 120);
    resumed[16..24].copy_from_slice(&(info | (1 << 20) << 2).to_le_bytes());
    let resuming = |from, to| SendRequest {
        resume: Some("1-a-b-c".into()),
        ..want(from, to)
    };
    assert_eq!(check_begin(&resumed, &resuming(None, s1), false), Ok(()));
    // The source's own check of a resumed send before a byte leaves (the peer wrote the
    // token): exactly this snapshot, by name and GUID, from this base, raw as the dataset is.
    use projstore_agent::live::check_resumed_begin;
    let name = fx.live.snapshot("s1").unwrap().full();
    assert_eq!(
        check_resumed_begin(&resumed, &name, s1, None, false),
        Ok(())
    );
    let other_name = fx.live.snapshot("s2").unwrap().full();
    for (what, record, name, to, from, raw) in [
        ("not resumed", &full, &name, s1, None, false),
        ("another name", &resumed, &other_name, s1, None, false),
        ("another GUID", &resumed, &name, s2, None, false),
        ("another base", &resumed, &name, s1, Some(s1), false),
        (
            "raw where the dataset is encrypted",
            &resumed,
            &name,
            s1,
            None,
            true,
        ),
    ] {
        assert!(
            check_resumed_begin(record, name, to, from, raw).is_err(),
            "{what}"
        );
    }
    // A raw send (OpenZFS `zfs send -w` of an encrypted dataset): DMU_BACKUP_FEATURE_RAW,
    // the wrapped key's parameters in a payload. Taken only by a receiver that asked for raw.
    let mut raw = set32(&full, 4, 400);
    raw[16..24].copy_from_slice(&(info | (1 << 24) << 2).to_le_bytes());
    assert_eq!(check_begin(&raw, &want(None, s1), true), Ok(()));
    assert!(check_begin(&raw, &want(None, s1), false).is_err());
    assert_eq!(check_begin(&full, &want(None, s1), true), Ok(()));
    for (what, record, asked) in [
        ("another snapshot", full.clone(), want(None, s2)),
        (
            "full where an increment was asked",
            full.clone(),
            want(Some(s1), s1),
        ),
        (
            "an increment where a full was asked",
            inc.clone(),
            want(None, s2),
        ),
        ("from another base", inc.clone(), want(Some(s2), s2)),
        ("a clone", set32(&full, 36, flags | 1), want(None, s1)),
        ("properties", set32(&full, 4, 100), want(None, s1)),
        ("not BEGIN", set32(&full, 0, 7), want(None, s1)),
        ("compound", compound, want(None, s1)),
        ("garbage", vec![0x5a; 312], want(None, s1)),
        ("short", full[..40].to_vec(), want(None, s1)),
        ("resumed, not asked", resumed.clone(), want(None, s1)),
        ("fresh, resume asked", full.clone(), resuming(None, s1)),
        (
            "resumed, a huge payload",
            set32(&resumed, 4, 1 << 20),
            resuming(None, s1),
        ),
        (
            "resumed, another snapshot",
            resumed.clone(),
            resuming(None, s2),
        ),
    ] {
        assert!(check_begin(&record, &asked, true).is_err(), "{what}");
    }
}

#[tokio::test]
async fn a_new_copy_receives_a_full_then_an_incremental_send_byte_identical() {
    let Some(zfs) = zfs_or_skip("live full then incremental").await else {
        return;
    };
    let fx = start(zfs, 1).await;
    let s1 = fx.snapshot("s1", 1).await;
    let s2 = fx.snapshot("s2", 2).await;
    let s3 = fx.snapshot("s3", 3).await;
    let peer = fx.peer("host-b");
    let listed = peer.snapshots(&key()).await.unwrap();
    let listed: Vec<(String, String)> = listed.into_iter().map(|s| (s.name, s.guid)).collect();
    assert_eq!(
        listed,
        vec![
            ("s1".into(), s1.to_string()),
            ("s2".into(), s2.to_string()),
            ("s3".into(), s3.to_string())
        ]
    );
    let copy = fx.copy(0);
    let progress = Progress::new();
    let full = peer
        .receive(&fx.zfs, &want(None, s1), &copy, &progress)
        .await
        .unwrap();
    assert!(full.bytes > 3 * MIB, "{full:?}");
    assert_eq!(fx.guids(&copy).await, vec![s1]);
    let inc = peer
        .receive(&fx.zfs, &want(Some(s1), s2), &copy, &progress)
        .await
        .unwrap();
    let inc2 = peer
        .receive(&fx.zfs, &want(Some(s2), s3), &copy, &progress)
        .await
        .unwrap();
    // One verified step per snapshot: the copy has the source's history.
    assert_eq!(fx.guids(&copy).await, vec![s1, s2, s3]);
    assert_eq!(progress.bytes(), full.bytes + inc.bytes + inc2.bytes);
    // The copy holds what the source holds, file for file.
    let at = fx.copies[0].path("copy");
    fx.zfs
        .set(
            &copy,
            &PropertyName::parse("mountpoint").unwrap(),
            at.to_str().unwrap(),
        )
        .await
        .unwrap();
    fx.zfs.mount(&copy).await.unwrap();
    assert_eq!(fingerprint(&at), fingerprint(&fx.mountpoint));
    fx.zfs.unmount(&copy).await.unwrap();
    drop(fx.source);
}

#[tokio::test]
async fn three_copies_receive_at_once() {
    let Some(zfs) = zfs_or_skip("live three copies at once").await else {
        return;
    };
    let fx = start(zfs, 3).await;
    let s1 = fx.snapshot("s1", 3).await;
    let peer = fx.peer("host-b");
    let copies: Vec<DatasetName> = (0..3).map(|i| fx.copy(i)).collect();
    let results = futures::future::join_all(copies.iter().map(|c| {
        let peer = peer.clone();
        let zfs = fx.zfs.clone();
        async move {
            peer.receive(&zfs, &want(None, s1), c, &Progress::new())
                .await
        }
    }))
    .await;
    for (r, c) in results.into_iter().zip(&copies) {
        r.unwrap();
        assert_eq!(fx.guids(c).await, vec![s1], "{c}");
    }
    // (Whether they shared a send depends on how close together they asked: the send may be
    // over before the last asks. What follows asks before anything is read.)
    let before = fx.sources.sends_started();

    // A receiver asking for flags this ZFS does not have asks for the same stream as one
    // asking for none, when the source sends the same bytes to both. (The stream is more
    // than the buffers of an answer not yet read: its send is still running, to be joined.)
    let s2 = fx.snapshot_of("s2", 7, 20 << 20).await;
    let query = |flags: &str| format!("to={s2}&from={s1}{flags}");
    let caps = fx.zfs.capabilities().send_flags();
    let asked = SendFlags::parse_letters("cLe").unwrap();
    let plain = fx.sources.send(key(), "host-b", &query("")).await;
    let flagged = fx.sources.send(key(), "host-b", &query("&flags=cLe")).await;
    // Read together, as two copies do.
    let (plain, flagged) = tokio::join!(
        http_body_util::BodyExt::collect(plain.into_body()),
        http_body_util::BodyExt::collect(flagged.into_body()),
    );
    let (plain, flagged) = (plain.unwrap(), flagged.unwrap());
    assert!(plain.trailers().is_some() && flagged.trailers().is_some());
    let same = asked.both(caps) == SendFlags::default();
    assert_eq!(
        fx.sources.sends_started() - before,
        if same { 1 } else { 2 },
        "flags {:?} here",
        caps
    );
    if same {
        assert_eq!(plain.to_bytes(), flagged.to_bytes());
    }
}

#[tokio::test]
async fn one_node_gets_at_most_its_share_of_a_sources_sends() {
    use projstore_agent::live::MAX_SENDS_PER_PEER;
    let Some(zfs) = zfs_or_skip("live sends per node").await else {
        return;
    };
    let fx = start(zfs, 0).await;
    // More than the buffers of answers not yet read: the send runs until they are read.
    let s1 = fx.snapshot_of("s1", 10, 20 << 20).await;
    let query = format!("to={s1}");
    let mut bodies = Vec::new();
    for _ in 0..MAX_SENDS_PER_PEER {
        let r = fx.sources.send(key(), "host-b", &query).await;
        assert_eq!(r.status(), 200);
        bodies.push(r.into_body());
    }
    // Joining counts too: the node's share is taken, another node's is not.
    let refused = fx.sources.send(key(), "host-b", &query).await;
    assert_eq!(refused.status(), 503);
    let other = fx.sources.send(key(), "host-c", &query).await;
    assert_eq!(other.status(), 200);
    bodies.push(other.into_body());
    assert_eq!(fx.sources.sends_started(), 1);
    // One hangs up; the others read to the end, and with them the shares are given back.
    drop(bodies.remove(0));
    let read = futures::future::join_all(
        bodies
            .into_iter()
            .map(|b| async move { http_body_util::BodyExt::collect(b).await.unwrap() }),
    )
    .await;
    assert!(read.iter().all(|r| r.trailers().is_some()));
    let again = fx.sources.send(key(), "host-b", &query).await;
    assert_eq!(again.status(), 200);
    let again = http_body_util::BodyExt::collect(again.into_body()).await;
    assert!(again.unwrap().trailers().is_some());
}

#[tokio::test]
async fn a_failed_receive_says_what_zfs_recv_said() {
    let Some(zfs) = zfs_or_skip("live receive errors").await else {
        return;
    };
    let fx = start(zfs, 1).await;
    let s1 = fx.snapshot("s1", 8).await;
    let s2 = fx.snapshot_of("s2", 9, 24 << 20).await;
    let (stream, digest) = fx.stream(Some("s1"), "s2").await;
    // More than what the feed buffers: zfs recv fails while the stream still comes.
    assert!(stream.len() > 16 << 20, "{}", stream.len());
    // An increment onto a copy that does not exist: zfs recv refuses it at once.
    let copy = fx.copy(0);
    let e = apply_verified(
        &fx.zfs,
        &copy,
        RECV,
        &Progress::new(),
        "test",
        &want(Some(s1), s2),
        body(&stream, Some(trailers(&digest, stream.len()))),
    )
    .await;
    assert!(matches!(e, Err(LiveError::Zfs(_))), "{e:?}");
    assert!(!fx.zfs.exists(&copy).await.unwrap());
}

#[tokio::test]
async fn a_node_without_a_copy_and_bad_requests_get_nothing() {
    let Some(zfs) = zfs_or_skip("live refusals").await else {
        return;
    };
    let fx = start(zfs, 1).await;
    let s1 = fx.snapshot("s1", 4).await;
    let copy = fx.copy(0);
    let stranger = fx.peer("host-c");
    let e = stranger
        .receive(&fx.zfs, &want(None, s1), &copy, &Progress::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(stranger.snapshots(&key()).await.is_err());
    let peer = fx.peer("host-b");
    for (from, to, status) in [
        (None, 12345, "404"),   // no such snapshot
        (Some(s1), s1, "400"),  // from must be older than to
        (Some(999), s1, "404"), // no such base
    ] {
        let e = peer
            .receive(&fx.zfs, &want(from, to), &copy, &Progress::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(status), "{from:?}->{to}: {e}");
    }
    // A project the node holds no copy of here.
    let other = ProjectKey::new("bob", "none").unwrap();
    assert!(peer.snapshots(&other).await.is_err());
    assert_eq!(fx.guids(&copy).await, Vec::<u64>::new(), "nothing received");
    // Hostile queries, over raw HTTP (the path is the project's, the query is the attack).
    for q in [
        "to=1;rm",
        "to=-1",
        "to=1&to=2",
        "to=1&x=2",
        "from=1",
        "to=99999999999999999999999",
    ] {
        assert!(projstore_agent::live::parse_send_query(q).is_err(), "{q}");
    }
    assert_eq!(
        projstore_agent::live::parse_send_query("to=7&from=3"),
        Ok(projstore_agent::live::SendQuery {
            from: Some(3),
            to: 7,
            flags: SendFlags::default(),
            resume: None,
        })
    );
    assert_eq!(
        projstore_agent::live::parse_send_query("to=7&resume=1-ab-cd-ef")
            .unwrap()
            .resume
            .as_deref(),
        Some("1-ab-cd-ef")
    );
    for q in [
        "to=7&resume=",
        "to=7&resume=1-ab-cd",
        "to=7&resume=1-ab-cd-e;f",
        "to=7&resume=../../x",
        "to=7&resume=1-a-b-c&resume=1-a-b-c",
    ] {
        assert!(projstore_agent::live::parse_send_query(q).is_err(), "{q}");
    }
    // A resumed send where the source's ZFS cannot resume (zfs-fuse), or with a token the
    // source cannot vouch for: refused before anything is sent.
    let resumed = SendRequest {
        resume: Some("1-bf31b879a-b8-789c6360".into()),
        ..want(None, s1)
    };
    if !fx.zfs.capabilities().resumable_send {
        let e = peer
            .receive(&fx.zfs, &resumed, &copy, &Progress::new())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("409") && e.to_string().contains("cannot resume"),
            "{e}"
        );
        assert_eq!(fx.guids(&copy).await, Vec::<u64>::new(), "nothing received");
    }
    let all = projstore_agent::live::parse_send_query("to=7&flags=cLe").unwrap();
    assert_eq!(all.flags.letters(), "cLe");
    for q in ["to=7&flags=x", "to=7&flags=cc", "to=7&flags=c&flags=L"] {
        assert!(projstore_agent::live::parse_send_query(q).is_err(), "{q}");
    }
    // The flags both ends have: none with zfs-fuse.
    assert_eq!(all.flags.both(SendFlags::default()), SendFlags::default());
    // Raw (-w) exactly when the dataset is encrypted; an encrypted one is never sent plain.
    use projstore_agent::live::raw_if_encrypted;
    let cle = all.flags;
    let clew = projstore_agent::live::parse_send_query("to=7&flags=cLew")
        .unwrap()
        .flags;
    assert_eq!(clew.letters(), "cLew");
    assert_eq!(raw_if_encrypted(clew, false), Ok(cle));
    assert_eq!(raw_if_encrypted(clew, true), Ok(clew));
    assert_eq!(raw_if_encrypted(cle, false), Ok(cle));
    assert!(raw_if_encrypted(cle, true).is_err());
}

#[tokio::test]
async fn a_stream_flipped_in_flight_or_cut_off_never_commits_and_the_whole_one_then_does() {
    let Some(zfs) = zfs_or_skip("live verification").await else {
        return;
    };
    let fx = start(zfs, 1).await;
    fx.snapshot("s1", 5).await;
    let s2 = fx.snapshot("s2", 6).await;
    let (full, digest) = fx.stream(None, "s2").await;
    assert!(full.len() > 4 * WITHHELD);
    let copy = fx.copy(0);
    let apply = |b| {
        let zfs = fx.zfs.clone();
        let copy = copy.clone();
        let asked = want(None, s2);
        async move { apply_verified(&zfs, &copy, RECV, &Progress::new(), "test", &asked, b).await }
    };
    // One byte flipped in the middle, the sender's digest following.
    let mut flipped = full.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    // (zfs recv may notice first where the stream format checksums records: then it is its
    // error; either way nothing commits.)
    let e = apply(body(&flipped, Some(trailers(&digest, full.len())))).await;
    assert!(
        matches!(e, Err(LiveError::Unverified { .. } | LiveError::Zfs(_))),
        "{e:?}"
    );
    assert_eq!(fx.guids(&copy).await, Vec::<u64>::new());
    // The last bytes flipped (in the END record itself).
    let mut end = full.clone();
    let last = end.len() - 10;
    end[last] ^= 1;
    let e = apply(body(&end, Some(trailers(&digest, full.len())))).await;
    assert!(
        matches!(e, Err(LiveError::Unverified { .. } | LiveError::Zfs(_))),
        "{e:?}"
    );
    assert_eq!(fx.guids(&copy).await, Vec::<u64>::new());
    // A substituted stream: whole and valid to ZFS (snapshot s1's), but not what the source
    // vouched for; then also with its own digest (a source that was taken over), but not the
    // snapshot asked for.
    let (other, other_digest) = fx.stream(None, "s1").await;
    let e = apply(body(&other, Some(trailers(&digest, full.len())))).await;
    assert!(matches!(e, Err(LiveError::Unverified { .. })), "{e:?}");
    let e = apply(body(&other, Some(trailers(&other_digest, other.len())))).await;
    assert!(
        matches!(&e, Err(LiveError::Unverified { reason, .. }) if reason.contains("not") && reason.contains("as asked")),
        "{e:?}"
    );
    assert_eq!(fx.guids(&copy).await, Vec::<u64>::new());
    // Cut at 10 %, 50 % and 99 %: no trailers arrive.
    for pct in [10, 50, 99] {
        let cut = full.len() * pct / 100;
        let e = apply(body(&full[..cut], None)).await;
        assert!(
            matches!(&e, Err(LiveError::Cut { reason, .. }) if reason.contains("without its digest")),
            "{pct}%: {e:?}"
        );
        assert_eq!(fx.guids(&copy).await, Vec::<u64>::new(), "{pct}%");
        // Nothing partial is visible: zfs recv cleaned up the dataset it had begun.
        assert!(!fx.zfs.exists(&copy).await.unwrap(), "{pct}%: {copy} left");
    }
    // All of it, but the source says another length, or failed.
    let e = apply(body(&full, Some(trailers(&digest, full.len() + 1)))).await;
    assert!(matches!(e, Err(LiveError::Unverified { .. })), "{e:?}");
    let mut failed = HeaderMap::new();
    failed.insert(
        projstore_agent::live::ERROR_TRAILER,
        "zfs send: broken pipe".parse().unwrap(),
    );
    let e = apply(body(&full, Some(failed))).await;
    assert!(
        matches!(&e, Err(LiveError::Unverified { reason, .. }) if reason.contains("broken pipe")),
        "{e:?}"
    );
    assert_eq!(fx.guids(&copy).await, Vec::<u64>::new());
    // Then the stream as sent: applied.
    let ok = apply(body(&full, Some(trailers(&digest, full.len()))))
        .await
        .unwrap();
    assert_eq!(ok.bytes, full.len() as u64);
    assert_eq!(fx.guids(&copy).await, vec![s2]);
    assert_eq!(check_trailers(&trailers(&digest, 5), &digest, 5), Ok(()));
    drop(fx.ca);
}

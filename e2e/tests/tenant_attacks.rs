//! Scenario 16: a tenant attacks through the whole stack (DESIGN §5.4, §5.7, invariants 6
//! and 7) on a three-host dev cluster: symlinked mount sources and mount paths fail with the
//! component named in the Project's status and change nothing outside; and a flood of idle
//! connections to a host's stream port does not stop a real replication.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;
use projstore_e2e::limits::enough_descriptors;
use serde_json::json;

const NS: &str = "default";
const SOURCE: (u32, u32) = (2101, 2101);
const CONSUMER: (u32, u32) = (3101, 3101);

/// Runs `program args` as the tenant `who`, which must succeed.
fn as_tenant(who: (u32, u32), program: &str, args: &[&str]) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .args(["--clear-groups", "--", program])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as {who:?}: {program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn s16_a_tenant_cannot_leave_its_project_through_mounts_or_starve_the_stream_server() {
    let Some(c) = Cluster::up_with_hosts("s16-tenant").await else {
        return;
    };
    c.create_project(
        NS,
        "src",
        json!({"quota": "200Mi", "owner": {"uid": SOURCE.0, "gid": SOURCE.1}, "copies": 2}),
    )
    .await;
    c.in_sync(NS, "src", 2, None, Duration::from_secs(90)).await;
    let src_pool = c.primary(NS, "src").await.spec.pool;
    let src = c.mount_path(NS, "src").await;
    let s = |p: &Path| p.display().to_string();
    // The source's owner: a real folder, and symlinks out at the last and a middle component.
    as_tenant(
        SOURCE,
        "mkdir",
        &[&s(&src.join("shared")), &s(&src.join("sub"))],
    );
    as_tenant(SOURCE, "ln", &["-s", "/etc", &s(&src.join("esc"))]);
    as_tenant(SOURCE, "ln", &["-s", "../..", &s(&src.join("sub/up"))]);

    let other_pool = c
        .hosts
        .iter()
        .map(|h| format!("{}-storage", h.node))
        .find(|p| *p != src_pool)
        .unwrap();
    c.create_project(
        NS,
        "dst",
        json!({"quota": "100Mi", "owner": {"uid": CONSUMER.0, "gid": CONSUMER.1}, "copies": 1,
               "placement": {"pool": other_pool}}),
    )
    .await;
    let dst = c.mount_path_when_ready(NS, "dst").await;
    // The consumer's owner points a folder of its own out of its project.
    let outside = c.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
    as_tenant(CONSUMER, "ln", &["-s", &s(&outside), &s(&dst.join("out"))]);

    c.patch_project(
        NS,
        "dst",
        json!({"spec": {"mounts": [
            {"project": "src", "path": "esc", "mountPath": "m-esc"},
            {"project": "src", "path": "sub/up/x", "mountPath": "m-up"},
            {"project": "src", "path": "shared", "mountPath": "out/x"},
            {"project": "src", "path": "shared", "mountPath": "ok"}
        ]}}),
    )
    .await;
    let mounts = c
        .wait("each mount settled", Duration::from_secs(90), || async {
            let st = c.project_status(NS, "dst").await?;
            let settled = st.mounts.len() == 4
                && st
                    .mounts
                    .iter()
                    .all(|m| matches!(m.phase.as_str(), "Mounted" | "Failed"))
                && st.mounts.iter().any(|m| m.phase == "Mounted");
            if settled {
                Ok(st.mounts)
            } else {
                Err(format!("{:?}", st.mounts))
            }
        })
        .await;
    for m in &mounts {
        let msg = m.message.clone().unwrap_or_default();
        println!("[s16] {}: {} {msg}", m.mount_path, m.phase);
        let named = match m.mount_path.as_str() {
            "ok" => {
                assert_eq!(m.phase, "Mounted");
                continue;
            }
            "m-esc" => "esc",
            "m-up" => "sub/up",
            "out/x" => "out",
            other => panic!("unexpected mount {other}"),
        };
        assert_eq!(m.phase, "Failed", "{}", m.mount_path);
        assert!(
            msg.contains(&format!("{named:?}")) && msg.contains("symbolic link"),
            "{}: the message names {named}: {msg}",
            m.mount_path
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "created outside"
    );
    let fuse_outside: Vec<String> = projstore_agent::mounts::mount_table()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse.") || m.fstype == "fuse")
        .filter(|m| m.fstype != "fuse.zfs" && m.target.starts_with(&c.dir))
        .map(|m| s(&m.target))
        .filter(|t| !t.starts_with(&s(&dst)) && !t.contains("/run/"))
        .collect();
    assert!(fuse_outside.is_empty(), "mounts outside: {fuse_outside:?}");

    // The spec no longer names the mounts: none is left anywhere below the consumer.
    c.patch_project(NS, "dst", json!({"spec": {"mounts": []}}))
        .await;
    c.wait_no_mounts_below("mounts released", &[dst.as_path()], Duration::from_secs(60))
        .await;

    // The source host let dst's node in to src alone while it mounted, and takes that view
    // away now: nothing is left in its peers' chroots; nothing is staged on dst's host.
    let src_host = c.host_of_pool(&src_pool).clone();
    let dst_host = c.host_of_pool(&other_pool).clone();
    let chroots = c.dir.join("hosts").join(&src_host.node).join("run/sftp");
    let staging = c.dir.join("hosts").join(&dst_host.node).join("run/mnt");
    c.wait_no_mounts_below(
        "peer views and staging released",
        &[chroots.as_path(), staging.as_path()],
        Duration::from_secs(60),
    )
    .await;

    // An open project keeps no stream files on any host (DESIGN §4): its copies received it
    // live, so a tenant has no stream file to read anywhere.
    let mut files = Vec::new();
    let mut dirs = vec![c.dir.join("hosts")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let p = e.path();
            // Not into project data or the agents' runtime directories.
            let skip = p.file_name().is_some_and(|n| n == "projects" || n == "run");
            if meta.is_dir() && !skip {
                dirs.push(p);
            } else if meta.is_file()
                && p.extension()
                    .is_some_and(|x| x == "zstream" || x == "partial" || x == "download")
            {
                files.push(p);
            }
        }
    }
    assert!(files.is_empty(), "stream files of open projects: {files:?}");

    // 1,000 idle connections to the source primary's stream port while it replicates a new
    // snapshot: the replication completes and health answers at once.
    let host = c.host_of_pool(&src_pool).clone();
    let addr: std::net::SocketAddr = format!("{}:7420", host.addr).parse().unwrap();
    enough_descriptors(4096);
    let attacker: std::net::IpAddr = "127.0.0.99".parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((attacker, 0).into()).unwrap();
        if let Ok(conn) = sock.connect(addr).await {
            idle.push(conn);
        }
    }
    let before = c.primary_snapshot(NS, "src").await;
    std::fs::write(src.join("shared/payload"), vec![7u8; 8 << 20]).unwrap();
    let t = Instant::now();
    c.snapshot_now(NS, "src").await;
    let me = c.hosts.iter().find(|h| h.node != host.node).unwrap();
    let tls =
        projstore_agent::tls::NodeTls::load(&c.dir.join("tls").join(&me.node), &me.node).unwrap();
    let probe = Instant::now();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.node.clone()).unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A peer's request on the stream port (answered: its data, or 403 when it holds no copy).
    let peer_request = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tls.connector().connect(name, tcp).await.unwrap();
        let req = format!(
            "GET /v1/streams/{NS}/src HTTP/1.1\r\nHost: x\r\nX-Projstore-Node: {}\r\nConnection: close\r\n\r\n",
            me.node
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(1), peer_request).await;
    assert!(
        answer
            .as_ref()
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.1 403")),
        "a peer was not answered within a second under 1,000 idle connections: {answer:?}"
    );
    // And the health port (plain HTTP, for kubelet) answers too.
    let health = async {
        let mut s = tokio::net::TcpStream::connect(format!("{}:7421", host.addr))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(1), health).await;
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")),
        "health did not answer within a second under 1,000 idle connections: {answer:?}"
    );
    c.timing("health under 1,000 idle connections", probe.elapsed());
    c.in_sync(NS, "src", 2, before.as_deref(), Duration::from_secs(120))
        .await;
    c.timing(
        "snapshot → replicated under 1,000 idle connections",
        t.elapsed(),
    );
    drop(idle);
}

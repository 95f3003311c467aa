//! What projstore refuses: bad manifests (naming the field), hostile requests to an agent's
//! stream server, and receiving anything on a host whose pool filesystem is not mounted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::time::Duration;

use common::Cluster;
use common::fixtures::{NS, spec};
use common::hosts::run;
use serde_json::json;

/// Scenario 13: bad manifests are refused naming the field; the agent refuses hostile stream
/// names and HTTP paths.
#[tokio::test]
async fn s13_bad_manifests_and_hostile_stream_requests_are_refused() {
    let Some(c) = Cluster::up("s13-bad-input").await else {
        return;
    };
    let bad = [
        (
            "spec.quota",
            json!({"quota": "lots", "owner": {"uid": 1, "gid": 1}}),
        ),
        (
            "spec.owner.uid",
            json!({"quota": "1Gi", "owner": {"uid": 0, "gid": 1}}),
        ),
        (
            "spec.mounts[0].path",
            json!({"quota": "1Gi", "owner": {"uid": 1, "gid": 1}, "mounts": [{"project": "x", "path": "../etc", "mountPath": "m"}]}),
        ),
        (
            "spec.copies",
            json!({"quota": "1Gi", "owner": {"uid": 1, "gid": 1}, "copies": 9}),
        ),
    ];
    for (field, spec) in bad {
        let p: projstore_api::Project = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
            "metadata": {"name": "bad", "namespace": NS}, "spec": spec
        }))
        .unwrap();
        let err = c
            .projects(NS)
            .create(&Default::default(), &p)
            .await
            .expect_err(field);
        let text = err.to_string();
        assert!(text.contains(field), "{field}: {text}");
        println!("[s13] refused: {text}");
    }
    if !c.hosts_reachable("the agent's stream server with the nodes' certificates") {
        return;
    }
    // As the second node (its own certificate) towards the first node's stream server.
    let server = &c.hosts[0];
    let me = &c.hosts[1];
    let addr = format!("{}:7420", server.addr);
    let tls =
        projstore_agent::tls::NodeTls::load(&c.dir.join("tls").join(&me.node), &me.node).unwrap();
    let get = |path: String, node: Option<&str>| {
        let (addr, connector) = (addr.clone(), tls.connector());
        let header = node
            .map(|n| format!("X-Projstore-Node: {n}\r\n"))
            .unwrap_or_default();
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from(server.node.clone()).unwrap();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut s = connector.connect(name, tcp).await.unwrap();
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert!(
        get("/v1/streams/default/p".into(), None)
            .await
            .contains(" 401 "),
        "no node named"
    );
    assert!(
        get("/v1/streams/default/p".into(), Some(&server.node))
            .await
            .contains(" 401 "),
        "a node named that the certificate does not prove"
    );
    assert!(
        get("/v1/streams/default/p".into(), Some(&me.node))
            .await
            .contains(" 403 "),
        "a node without a copy of default/p"
    );
    for hostile in [
        "/v1/streams/default/p/..%2F..%2Fetc%2Fpasswd",
        "/v1/streams/default/p/../x",
        "/v1/streams/../../etc/passwd",
        "/v1/streams//etc/passwd",
        "/v1/streams/default/p/-rf.zstream",
        "/v1/streams/default/p/a;rm%20-rf.zstream",
        "/v1/streams/default/p/full--x.json.partial",
    ] {
        let status = get(hostile.into(), Some(&me.node)).await;
        assert!(
            status.contains(" 400 ") || status.contains(" 404 ") || status.contains(" 403 "),
            "{hostile}: {status}"
        );
        println!("[s13] {hostile}: {status}");
    }
    // Plain HTTP gets no HTTP answer at all.
    let plain = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(s, "GET /v1/streams/default/p HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(
        !plain.contains("HTTP/1.1 200"),
        "plain HTTP was answered: {plain}"
    );
}

/// Scenario 14: an agent whose pool filesystem is not mounted stays not Ready and receives
/// nothing into the empty directory.
#[tokio::test]
async fn s14_an_unmounted_pool_filesystem_keeps_the_agent_not_ready() {
    let Some(c) = Cluster::up_with_hosts("s14-unmounted").await else {
        return;
    };
    let h = c.hosts[2].clone();
    let streams = format!("{}/streams", h.pool);
    // A dataset that cannot be mounted (as after a bad import): the agent cannot fix it.
    run("zfs", &["set", "canmount=off", &streams]);
    // zfs-fuse unmounts on canmount=off by itself; OpenZFS needs the unmount.
    let _ = std::process::Command::new("zfs")
        .args(["unmount", &streams])
        .output();
    let pool = format!("{}-storage", h.node);
    c.wait(
        "SanityChecksPassed=False",
        Duration::from_secs(30),
        || async {
            let sp = c.pools().get(&pool).await.map_err(|e| e.to_string())?;
            let st = sp.status.unwrap_or_default();
            match st
                .conditions
                .iter()
                .find(|c| c.type_ == "SanityChecksPassed")
            {
                Some(cond) if cond.status == "False" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    c.create_project(NS, "safe", spec()).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let dir = c.streams_dir(&h);
    let written: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "written into the unmounted streams directory: {written:?}"
    );
    let st = c.pools().get(&pool).await.unwrap().status.unwrap();
    assert_ne!(
        st.phase,
        Some(projstore_api::PoolPhase::Ready),
        "the pool is not Ready"
    );
    let ds = format!("{}/projects/{NS}/safe", h.pool);
    let exists = std::process::Command::new("zfs")
        .args(["list", &ds])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        !exists,
        "nothing received on the host that failed its checks"
    );
    // Fixed: the agent becomes Ready again and serves.
    run("zfs", &["set", "canmount=on", &streams]);
    run("zfs", &["mount", &streams]);
    c.wait("Ready again", Duration::from_secs(60), || async {
        let st = c
            .pools()
            .get(&pool)
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if st.phase == Some(projstore_api::PoolPhase::Ready) {
            Ok(())
        } else {
            Err(format!("{:?}", st.phase))
        }
    })
    .await;
}

//! A project's life on a three-host dev cluster in two datacenters: placed and Ready with its
//! copies, ownership, the quota, and which pools automatic placement may use. Each scenario
//! runs on its own dev cluster (or a real one, see `common`) and prints its key timings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::fixtures::{NS, random_bytes, sized, spec};
use kube::ResourceExt;
use projstore_api::ReplicaRole;
use serde_json::json;

/// Scenario 1: create → placed → Ready with 3 copies across both datacenters; kubectl columns.
#[tokio::test]
async fn s01_a_project_becomes_ready_with_three_copies_across_both_datacenters() {
    let Some(c) = Cluster::up("s01-lifecycle").await else {
        return;
    };
    let t = Instant::now();
    c.create_project(NS, "alpha", spec()).await;
    c.in_sync(NS, "alpha", 3, None, Duration::from_secs(60))
        .await;
    c.timing("created to Ready with 3 copies", t.elapsed());
    let srs = c.replicas(NS, "alpha").await;
    assert_eq!(
        srs.iter()
            .filter(|r| r.spec.role == ReplicaRole::Primary)
            .count(),
        1
    );
    let pools = c.pools().list(&Default::default()).await.unwrap().items;
    let dcs: std::collections::BTreeSet<String> = srs
        .iter()
        .filter_map(|r| pools.iter().find(|p| p.name_any() == r.spec.pool))
        .filter_map(|p| p.spec.topology.as_ref().and_then(|t| t.datacenter.clone()))
        .collect();
    assert_eq!(dcs.len(), 2, "copies span both datacenters");
    let mount = c.mount_path(NS, "alpha").await;
    assert!(mount.is_dir());
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&mount).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "owner on the root");
    // Ownership repair on the annotation: files of any owner go back to the project's.
    std::fs::create_dir(mount.join("sub")).unwrap();
    std::fs::write(mount.join("sub/root-owned"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", mount.join("link")).unwrap();
    c.patch_project(
        NS,
        "alpha",
        json!({"metadata": {"annotations": {"projstore.io/repair-ownership": "1"}}}),
    )
    .await;
    c.wait("ownership repaired", Duration::from_secs(30), || async {
        let f = std::fs::metadata(mount.join("sub/root-owned")).map_err(|e| e.to_string())?;
        if (f.uid(), f.gid()) == (1000, 1000) {
            Ok(())
        } else {
            Err(format!("{}:{}", f.uid(), f.gid()))
        }
    })
    .await;
    let host = std::fs::metadata("/etc/hostname").unwrap();
    assert_eq!(
        host.uid(),
        0,
        "a symlink's target outside the project is left alone"
    );
    if let Some(out) = c.kubectl(&["get", "proj,sr,sp", "-n", NS]) {
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for col in [
            "PHASE", "PRIMARY", "REPLICAS", "ROLE", "EPOCH", "APPLIED", "POOL",
        ] {
            assert!(text.contains(col), "kubectl get shows {col}: {text}");
        }
        assert!(text.contains("alpha") && text.contains("Ready"), "{text}");
    }
}

/// Scenario 2: writes beyond `quota` fail; raising the quota with `kubectl apply` works.
#[tokio::test]
async fn s02_writes_past_the_quota_fail_until_the_quota_is_raised() {
    let Some(c) = Cluster::up("s02-quota").await else {
        return;
    };
    c.create_project(NS, "q", sized("8Mi", 1)).await;
    let mount = c.mount_path_when_ready(NS, "q").await;
    let big = random_bytes(12 << 20, 7);
    let err = std::fs::write(mount.join("big"), &big).expect_err("a write past the quota fails");
    println!("[s02] write of 12 MiB into an 8 MiB quota: {err}");
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT: {err}");
    let manifest = format!(
        "apiVersion: projstore.io/v1alpha1\nkind: Project\nmetadata:\n  name: q\n  namespace: {NS}\nspec:\n  quota: 64Mi\n  owner:\n    uid: 1000\n    gid: 1000\n  copies: 1\n"
    );
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    match applied {
        Some(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        None => {
            c.patch_project(NS, "q", json!({"spec": {"quota": "64Mi"}}))
                .await
        }
    }
    c.wait("the new quota applied", Duration::from_secs(60), || async {
        let st = c.primary(NS, "q").await.status.unwrap_or_default();
        match st.quota_bytes {
            Some(b) if b == 64 << 20 => Ok(()),
            other => Err(format!("quotaBytes {other:?}")),
        }
    })
    .await;
    std::fs::write(mount.join("big"), &big).expect("fits under the raised quota");
}

/// Scenario 12: experimental pools receive no automatic placement; a pinned project lands there.
#[tokio::test]
async fn s12_experimental_pools_receive_only_pinned_projects() {
    let Some(c) = Cluster::up("s12-experimental").await else {
        return;
    };
    let exp = "host-c-storage";
    c.pools()
        .patch(
            exp,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"experimental": true}})),
        )
        .await
        .unwrap();
    for i in 0..4 {
        c.create_project(
            NS,
            &format!("auto{i}"),
            json!({"quota": "10Mi", "owner": {"uid": 1000, "gid": 1000}}),
        )
        .await;
    }
    c.create_project(
        NS,
        "pinned",
        json!({"quota": "10Mi", "owner": {"uid": 1000, "gid": 1000}, "copies": 1,
        "placement": {"pool": exp}}),
    )
    .await;
    c.wait(
        "pinned project placed on the experimental pool",
        Duration::from_secs(60),
        || async {
            let pools: Vec<String> = c
                .replicas(NS, "pinned")
                .await
                .iter()
                .filter(|r| r.spec.role == ReplicaRole::Primary)
                .map(|r| r.spec.pool.clone())
                .collect();
            if pools == [exp] {
                Ok(())
            } else {
                Err(format!("{pools:?}"))
            }
        },
    )
    .await;
    for i in 0..4 {
        c.wait(
            &format!("auto{i} placed"),
            Duration::from_secs(60),
            || async {
                let n = c.replicas(NS, &format!("auto{i}")).await.len();
                if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{n} copies"))
                }
            },
        )
        .await;
        let pools: Vec<String> = c
            .replicas(NS, &format!("auto{i}"))
            .await
            .iter()
            .map(|r| r.spec.pool.clone())
            .collect();
        assert!(
            !pools.iter().any(|p| p == exp),
            "auto{i} placed on the experimental pool: {pools:?}"
        );
    }
}

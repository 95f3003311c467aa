//! The storage engine on real ZFS (zfs-fuse here, OpenZFS on production hosts): two pools on
//! image files stand for two hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod support;

use std::time::Duration;

use projstore_agent::layout::{NewProject, PoolLayout, create_project, ensure_layout};
use projstore_agent::streams::{ProjectKey, StoreError, StreamId, StreamStore};
use projstore_agent::transfer::{
    Storage, TransferError, apply_stream, staging_dataset, write_stream,
};
use projstore_agent::zfs::{
    Created, DatasetName, Destroyed, HoldTag, Implementation, Progress, PropertyName, SnapshotName,
    Vdev, Zfs, ZfsError,
};
use support::*;

const MIB: u64 = 1 << 20;

struct Host {
    pool: TestPool,
    layout: PoolLayout,
    store: StreamStore,
    node: String,
}

impl Host {
    async fn new(zfs: &Zfs, node: &str) -> Self {
        let pool = TestPool::new(zfs, 512 * MIB).await;
        let layout = PoolLayout::new(pool.name.clone());
        let streams_mp = pool.path("streams");
        ensure_layout(zfs, &layout, &streams_mp).await.unwrap();
        Self {
            store: StreamStore::new(streams_mp),
            layout,
            pool,
            node: node.into(),
        }
    }
    /// The project `key()` (64 MiB, owner 2001:2002) mounted at the pool's `mnt`.
    async fn project(&self, zfs: &Zfs) -> (DatasetName, std::path::PathBuf) {
        let mp = self.pool.path("mnt");
        let new = NewProject {
            key: &key(),
            mountpoint: &mp,
            quota_bytes: 64 * MIB,
            uid: 2001,
            gid: 2002,
            epoch: 1,
        };
        (create_project(zfs, &self.layout, &new).await.unwrap(), mp)
    }
    fn storage<'a>(&'a self, zfs: &'a Zfs) -> Storage<'a> {
        Storage {
            zfs,
            store: &self.store,
            pool: &self.pool.name,
            node: &self.node,
        }
    }
}

fn key() -> ProjectKey {
    ProjectKey::new("alice", "thesis").unwrap()
}

/// Mounts a received (secondary) dataset read-only at `dir` to look at it, then unmounts.
async fn look_at(
    zfs: &Zfs,
    ds: &DatasetName,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, String> {
    let p = |n: &str| PropertyName::parse(n).unwrap();
    zfs.set(ds, &p("readonly"), "on").await.unwrap();
    zfs.set(ds, &p("mountpoint"), dir.to_str().unwrap())
        .await
        .unwrap();
    zfs.mount(ds).await.unwrap();
    let fp = fingerprint(dir);
    zfs.unmount(ds).await.unwrap();
    fp
}

#[tokio::test]
async fn capabilities_are_detected_on_this_host() {
    let Some(zfs) = zfs_or_skip("capabilities_are_detected_on_this_host").await else {
        return;
    };
    let caps = zfs.capabilities();
    match caps.implementation {
        Implementation::ZfsFuse => assert!(!caps.parsable_list && caps.holds),
        Implementation::OpenZfs => {
            assert!(caps.parsable_list && caps.compression.contains(&"lz4".to_owned()))
        }
    }
}

#[tokio::test]
async fn pools_are_created_imported_grown_and_measured() {
    let Some(zfs) = zfs_or_skip("pools_are_created_imported_grown_and_measured").await else {
        return;
    };
    let pool = TestPool::new(&zfs, 256 * MIB).await;
    let before = zfs.capacity(&pool.name).await.unwrap();
    assert_eq!(before.health, "ONLINE");
    assert!(
        before.available > 100 * MIB && before.available < 256 * MIB,
        "{before:?}"
    );

    // Grow with a second image file, created sparse by the driver.
    let img = pool.path("vdev1.img");
    let vdev = Vdev::new(img.to_str().unwrap(), Some(256 * MIB)).unwrap();
    zfs.pool_add(&pool.name, &vdev).await.unwrap();
    zfs.pool_add(&pool.name, &vdev).await.unwrap(); // already there: no-op
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 * MIB);
    let after = zfs.capacity(&pool.name).await.unwrap();
    assert!(
        after.available > before.available + 200 * MIB,
        "{before:?} -> {after:?}"
    );
    assert_eq!(zfs.pool_vdevs(&pool.name).await.unwrap().len(), 2);

    // Export, then import from the image directory.
    zfs.pool_export(&pool.name).await.unwrap();
    assert!(matches!(
        zfs.capacity(&pool.name).await,
        Err(ZfsError::PoolUnavailable { .. })
    ));
    let imported = zfs
        .pool_import(&pool.name, &[pool.dir.path().to_owned()], false)
        .await
        .unwrap();
    assert_eq!(imported, projstore_agent::zfs::Imported::Now);
    assert_eq!(
        zfs.pool_import(&pool.name, &[pool.dir.path().to_owned()], false)
            .await
            .unwrap(),
        projstore_agent::zfs::Imported::Already
    );
}

#[tokio::test]
async fn compression_falls_back_to_what_the_host_supports() {
    let Some(zfs) = zfs_or_skip("compression_falls_back_to_what_the_host_supports").await else {
        return;
    };
    let pool = TestPool::new(&zfs, 128 * MIB).await;
    let (value, fell_back) = zfs.capabilities().compression_for("lz4");
    let comp = PropertyName::parse("compression").unwrap();
    zfs.set(&pool.name.root(), &comp, &value).await.unwrap();
    assert_eq!(zfs.property(&pool.name.root(), &comp).await.unwrap(), value);
    if fell_back {
        // Asking for lz4 where it does not exist is refused by ZFS, and classified.
        assert!(matches!(
            zfs.set(&pool.name.root(), &comp, "lz4").await,
            Err(ZfsError::Unsupported { .. })
        ));
    }
}

#[tokio::test]
async fn datasets_are_idempotent_and_a_missing_pool_is_an_error() {
    let Some(zfs) = zfs_or_skip("datasets_are_idempotent_and_a_missing_pool_is_an_error").await
    else {
        return;
    };
    let pool = TestPool::new(&zfs, 128 * MIB).await;
    let ds = pool.name.dataset("a").unwrap();
    assert_eq!(zfs.create(&ds, &[]).await.unwrap(), Created::Now);
    assert_eq!(zfs.create(&ds, &[]).await.unwrap(), Created::Already);
    let renamed = pool.name.dataset("b").unwrap();
    zfs.rename(&ds, &renamed).await.unwrap();
    assert!(!zfs.exists(&ds).await.unwrap());
    assert_eq!(zfs.destroy(&renamed, false).await.unwrap(), Destroyed::Now);
    assert_eq!(
        zfs.destroy(&renamed, false).await.unwrap(),
        Destroyed::AlreadyGone
    );
    // One listing of everything below, with a user property (unset reads "-").
    let top = pool.name.dataset("t").unwrap();
    let (x, y) = (
        top.child("x").unwrap(),
        top.child("x").unwrap().child("y").unwrap(),
    );
    for d in [&top, &x, &y] {
        zfs.create(d, &[]).await.unwrap();
    }
    let prop = PropertyName::parse("projstore.io:purge-after").unwrap();
    zfs.set(&y, &prop, "2026-01-01T00:00:00Z").await.unwrap();
    zfs.snapshot(&y.snapshot("s").unwrap(), &[]).await.unwrap(); // never listed
    let ty = PropertyName::parse("type").unwrap();
    let at = |v: &str| vec![v.to_owned(), "filesystem".to_owned()];
    assert_eq!(
        zfs.descendants_with(&top, &[&prop, &ty], None)
            .await
            .unwrap(),
        [
            (x.clone(), at("-")),
            (y.clone(), at("2026-01-01T00:00:00Z"))
        ]
    );
    // Sizes in bytes on every implementation (zfs-fuse's `zfs list` has no `-p`).
    let referenced = PropertyName::parse("referenced").unwrap();
    let sizes = zfs
        .descendants_with(&top, &[&referenced], Some(1))
        .await
        .unwrap();
    assert_eq!(sizes.len(), 1, "one level down: {sizes:?}");
    assert!(
        sizes.iter().all(|(_, v)| v[0].parse::<u64>().is_ok()),
        "{sizes:?}"
    );
    assert_eq!(zfs.children(&top).await.unwrap(), std::slice::from_ref(&x));
    assert!(
        zfs.descendants_with(&renamed, &[&prop], None)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let nowhere = DatasetName::parse("nosuchpool9/a").unwrap();
    assert!(matches!(
        zfs.destroy(&nowhere, false).await,
        Err(ZfsError::PoolUnavailable { .. })
    ));
    assert!(matches!(
        zfs.exists(&nowhere).await,
        Err(ZfsError::PoolUnavailable { .. })
    ));
}

#[tokio::test]
async fn snapshots_are_listed_held_released_and_destroyed() {
    let Some(zfs) = zfs_or_skip("snapshots_are_listed_held_released_and_destroyed").await else {
        return;
    };
    let host = Host::new(&zfs, "host-a").await;
    let (ds, mp) = host.project(&zfs).await;
    let managed = PropertyName::parse("projstore.io:managed").unwrap();
    let s1 = ds.snapshot("s1").unwrap();
    let i1 = zfs
        .snapshot(&s1, &[(managed.clone(), "true".into())])
        .await
        .unwrap();
    std::fs::write(mp.join("x"), b"x").unwrap();
    let i2 = zfs
        .snapshot(&ds.snapshot("s2").unwrap(), &[])
        .await
        .unwrap();
    assert!(i2.createtxg > i1.createtxg && i1.guid != i2.guid);
    let list = zfs.snapshots(&ds, &[&managed]).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert_eq!(
        list[0]
            .properties
            .get("projstore.io:managed")
            .map(String::as_str),
        Some("true")
    );

    let tag = HoldTag::parse("projstore-test").unwrap();
    zfs.hold(&s1, &tag).await.unwrap();
    zfs.hold(&s1, &tag).await.unwrap();
    assert!(
        matches!(zfs.destroy_snapshot(&s1).await, Err(ZfsError::Busy { .. })),
        "held snapshots stay"
    );
    zfs.release(&s1, &tag).await.unwrap();
    zfs.release(&s1, &tag).await.unwrap();
    assert_eq!(zfs.destroy_snapshot(&s1).await.unwrap(), Destroyed::Now);
    assert_eq!(
        zfs.destroy_snapshot(&s1).await.unwrap(),
        Destroyed::AlreadyGone
    );

    // Rollback to the newest snapshot discards later writes.
    std::fs::write(mp.join("y"), b"y").unwrap();
    zfs.rollback(&ds.snapshot("s2").unwrap()).await.unwrap();
    assert!(!mp.join("y").exists() && mp.join("x").exists());
}

#[tokio::test]
async fn project_dataset_has_quota_owner_identity_and_enforces_the_quota() {
    let Some(zfs) =
        zfs_or_skip("project_dataset_has_quota_owner_identity_and_enforces_the_quota").await
    else {
        return;
    };
    let host = Host::new(&zfs, "host-a").await;
    let mp = host.pool.path("mnt");
    let new = NewProject {
        key: &key(),
        mountpoint: &mp,
        quota_bytes: 8 * MIB,
        uid: 2001,
        gid: 2002,
        epoch: 3,
    };
    let ds = create_project(&zfs, &host.layout, &new).await.unwrap();
    assert_eq!(
        ds.as_str(),
        format!("{}/projects/alice/thesis", host.pool.name)
    );
    let get = |p: &str| {
        let zfs = zfs.clone();
        let ds = ds.clone();
        let p = PropertyName::parse(p).unwrap();
        async move { zfs.property(&ds, &p).await.unwrap() }
    };
    assert_eq!(get("refquota").await, (8 * MIB).to_string());
    assert_eq!(get("projstore.io:project").await, "alice/thesis");
    assert_eq!(get("projstore.io:epoch").await, "3");
    assert_eq!(get("mounted").await, "yes");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&mp).unwrap();
    assert_eq!((m.uid(), m.gid()), (2001, 2002));

    // Writing past the quota fails with the quota error (EDQUOT), not silently.
    let chunk = vec![7u8; MIB as usize];
    let mut f = std::fs::File::create(mp.join("fill")).unwrap();
    let mut err = None;
    for _ in 0..32 {
        use std::io::Write;
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writing 32 MiB into an 8 MiB quota must fail");
    assert_eq!(err.raw_os_error(), Some(libc_edquot()), "{err}");
}

fn libc_edquot() -> i32 {
    122 // EDQUOT on Linux
}

#[tokio::test]
async fn full_and_incremental_streams_replicate_trees_byte_for_byte() {
    let Some(zfs) = zfs_or_skip("full_and_incremental_streams_replicate_trees_byte_for_byte").await
    else {
        return;
    };
    let (a, b) = (
        Host::new(&zfs, "host-a").await,
        Host::new(&zfs, "host-b").await,
    );
    let mp = a.pool.path("mnt");
    let new = NewProject {
        key: &key(),
        mountpoint: &mp,
        quota_bytes: 256 * MIB,
        uid: 2001,
        gid: 2001,
        epoch: 1,
    };
    let ds = create_project(&zfs, &a.layout, &new).await.unwrap();
    let target = b.layout.project(&key()).unwrap();
    let mut prev: Option<SnapshotName> = None;
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        write_tree(&mp, i as u64, 300_000 * (i + 1));
        if i == 2 {
            std::fs::remove_file(mp.join("src/deep/er/f3.dat")).unwrap();
        }
        let want = fingerprint(&mp);
        let snap = ds.snapshot(name).unwrap();
        zfs.snapshot(&snap, &[]).await.unwrap();
        let progress = Progress::new();
        let stored = write_stream(&a.storage(&zfs), &key(), &snap, prev.as_ref(), 1, &progress)
            .await
            .unwrap();
        assert_eq!(progress.bytes(), stored.manifest.bytes);
        assert_eq!(stored.manifest.from.is_none(), i == 0);
        // Ship the stream file and manifest to host b's store, as a secondary would.
        let (src, dst) = (a.store.dir(&key()), b.store.dir(&key()));
        std::fs::create_dir_all(&dst).unwrap();
        for f in [stored.id.file_name(), stored.id.manifest_name()] {
            std::fs::copy(src.join(&f), dst.join(&f)).unwrap();
        }
        let held = apply_stream(
            &b.storage(&zfs),
            &key(),
            &stored.id,
            &target,
            &Progress::new(),
        )
        .await
        .unwrap();
        assert_eq!(held.name, *name);
        assert_eq!(
            held.guid,
            zfs.snapshot_info(&snap).await.unwrap().guid,
            "same snapshot identity on both hosts"
        );
        assert_eq!(
            look_at(&zfs, &target, &b.pool.path("look")).await,
            want,
            "tree at {name}"
        );
        prev = Some(snap);
    }
    // The store lists all three, complete and verified.
    let listed = a.store.list(&key()).await.unwrap();
    assert_eq!(listed.len(), 3);
    for s in &listed {
        a.store.verify(&key(), &s.id).await.unwrap();
    }
    // An incremental that does not start at the target's newest snapshot is refused.
    let first = listed.iter().find(|s| s.manifest.from.is_none()).unwrap();
    let err = apply_stream(
        &b.storage(&zfs),
        &key(),
        &first.id,
        &target,
        &Progress::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::DoesNotApply { .. }), "{err}");
}

#[tokio::test]
async fn corrupt_or_truncated_streams_are_refused_before_zfs_sees_them() {
    let Some(zfs) =
        zfs_or_skip("corrupt_or_truncated_streams_are_refused_before_zfs_sees_them").await
    else {
        return;
    };
    let (a, b) = (
        Host::new(&zfs, "host-a").await,
        Host::new(&zfs, "host-b").await,
    );
    let (ds, mp) = a.project(&zfs).await;
    write_tree(&mp, 1, 200_000);
    let snap = ds.snapshot("s1").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();
    let stored = write_stream(&a.storage(&zfs), &key(), &snap, None, 1, &Progress::new())
        .await
        .unwrap();
    let (src, dst) = (a.store.dir(&key()), b.store.dir(&key()));
    std::fs::create_dir_all(&dst).unwrap();
    let target = b.layout.project(&key()).unwrap();
    let staging = staging_dataset(&b.pool.name, &key()).unwrap();
    let file = dst.join(stored.id.file_name());
    let original = std::fs::read(src.join(stored.id.file_name())).unwrap();
    std::fs::copy(
        src.join(stored.id.manifest_name()),
        dst.join(stored.id.manifest_name()),
    )
    .unwrap();

    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let truncated = original[..original.len() - 1000].to_vec();
    for (what, bytes) in [("one flipped byte", flipped), ("truncated", truncated)] {
        std::fs::write(&file, &bytes).unwrap();
        let err = apply_stream(
            &b.storage(&zfs),
            &key(),
            &stored.id,
            &target,
            &Progress::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, TransferError::Store(StoreError::Corrupt { .. })),
            "{what}: {err}"
        );
        assert!(
            !zfs.exists(&target).await.unwrap(),
            "{what}: nothing received"
        );
        assert!(
            !zfs.exists(&staging).await.unwrap(),
            "{what}: zfs recv never ran"
        );
    }
    // The intact stream applies.
    std::fs::write(&file, &original).unwrap();
    apply_stream(
        &b.storage(&zfs),
        &key(),
        &stored.id,
        &target,
        &Progress::new(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_receive_cut_off_half_way_leaves_nothing_visible_and_the_next_one_succeeds() {
    let Some(zfs) =
        zfs_or_skip("a_receive_cut_off_half_way_leaves_nothing_visible_and_the_next_one_succeeds")
            .await
    else {
        return;
    };
    let (a, b) = (
        Host::new(&zfs, "host-a").await,
        Host::new(&zfs, "host-b").await,
    );
    let mp = a.pool.path("mnt");
    let new = NewProject {
        key: &key(),
        mountpoint: &mp,
        quota_bytes: 256 * MIB,
        uid: 2001,
        gid: 2001,
        epoch: 1,
    };
    let ds = create_project(&zfs, &a.layout, &new).await.unwrap();
    // Incompressible data, so the stream is large enough to cut off mid-way.
    let noise: Vec<u8> = (0..48 * MIB)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    std::fs::write(mp.join("noise"), &noise).unwrap();
    let want = fingerprint(&mp);
    let snap = ds.snapshot("s1").unwrap();
    zfs.snapshot(&snap, &[]).await.unwrap();
    let stored = write_stream(&a.storage(&zfs), &key(), &snap, None, 1, &Progress::new())
        .await
        .unwrap();
    let dst = b.store.dir(&key());
    std::fs::create_dir_all(&dst).unwrap();
    for f in [stored.id.file_name(), stored.id.manifest_name()] {
        std::fs::copy(a.store.dir(&key()).join(&f), dst.join(&f)).unwrap();
    }
    let target = b.layout.project(&key()).unwrap();

    let progress = Progress::new();
    let storage = b.storage(&zfs);
    // Cut the receive off (drop it) as soon as it has taken some bytes but not all.
    let under_way = async {
        while progress.bytes() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let k = key();
    tokio::select! {
        done = apply_stream(&storage, &k, &stored.id, &target, &progress) => {
            panic!("the receive finished ({done:?}) before it was seen under way; the test needs a larger stream")
        }
        () = under_way => {}
    }
    let at_cut = progress.bytes();
    assert!(
        at_cut > 0 && at_cut < stored.manifest.bytes,
        "cut off part way: {at_cut} of {} bytes",
        stored.manifest.bytes
    );
    assert!(
        !zfs.exists(&target).await.unwrap(),
        "no visible partial project dataset"
    );

    let held = apply_stream(&storage, &key(), &stored.id, &target, &Progress::new())
        .await
        .unwrap();
    assert_eq!(held.name, "s1");
    assert_eq!(look_at(&zfs, &target, &b.pool.path("look")).await, want);
}

#[tokio::test]
async fn hostile_names_are_refused_without_running_anything() {
    // No ZFS needed: refusals happen while parsing, before any command exists.
    for bad in [
        "tank/a;rm -rf /",
        "tank/$(reboot)",
        "-tank/a",
        "tank/-o",
        "tank/../x",
        "tank/a b",
        "tank/a|b",
    ] {
        assert!(DatasetName::parse(bad).is_err(), "{bad}");
    }
    for bad in ["tank/a@-x", "tank/a@..", "tank/a@x;y"] {
        assert!(SnapshotName::parse(bad).is_err(), "{bad}");
    }
    for bad in [
        "../x",
        "/etc/passwd",
        "-rf",
        "a;b",
        "full--x/../../y",
        ".hidden--x",
        "no-separator",
    ] {
        assert!(StreamId::parse(bad).is_err(), "{bad}");
    }
    for (ns, name) in [("-x", "a"), ("a", "b;c"), ("..", "a"), ("A", "b")] {
        assert!(ProjectKey::new(ns, name).is_err(), "{ns}/{name}");
    }
    assert!(Vdev::new("/var/../etc/shadow", Some(1)).is_err());
    assert!(Vdev::new("relative.img", Some(1)).is_err());
}

#[tokio::test]
async fn hostile_values_never_reach_zfs() {
    let Some(zfs) = zfs_or_skip("hostile_values_never_reach_zfs").await else {
        return;
    };
    let pool = TestPool::new(&zfs, 128 * MIB).await;
    let ds = pool.name.dataset("a").unwrap();
    let comment = PropertyName::parse("projstore.io:comment").unwrap();
    for bad in ["-o", "a\nb", "x\u{0}y"] {
        let err = zfs
            .create(&ds, &[(comment.clone(), bad.into())])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ZfsError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(!zfs.exists(&ds).await.unwrap(), "nothing was created");
    // Shell metacharacters are only data to ZFS: stored and read back verbatim.
    zfs.create(&ds, &[]).await.unwrap();
    zfs.set(&ds, &comment, "$(touch /tmp/pwned); `id` | & > <")
        .await
        .unwrap();
    assert_eq!(
        zfs.property(&ds, &comment).await.unwrap(),
        "$(touch /tmp/pwned); `id` | & > <"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[tokio::test]
async fn unsaved_writes_are_found_and_kept_in_a_snapshot_and_nothing_else_is() {
    let Some(zfs) = zfs_or_skip("unsaved_writes_are_found").await else {
        return;
    };
    let host = Host::new(&zfs, "host-a").await;
    let (ds, mp) = host.project(&zfs).await;
    zfs.set(&ds, &PropertyName::parse("atime").unwrap(), "off")
        .await
        .unwrap();
    // No snapshot yet: whatever the dataset holds is unsaved.
    let first = zfs
        .snapshot_unsaved(&ds, &ds.snapshot("first").unwrap())
        .await
        .unwrap();
    assert!(first.is_some());
    // Nothing written since: no snapshot is left behind.
    let quiet = ds.snapshot("quiet").unwrap();
    assert!(zfs.snapshot_unsaved(&ds, &quiet).await.unwrap().is_none());
    assert!(zfs.snapshot_info(&quiet).await.unwrap_err().is_not_found());
    // A write, a chmod, a delete: each is found.
    let change = |i: u32| {
        let mp = mp.clone();
        move || match i {
            0 => std::fs::write(mp.join("a"), b"late write").unwrap(),
            1 => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(mp.join("a"), std::fs::Permissions::from_mode(0o600))
                    .unwrap()
            }
            _ => std::fs::remove_file(mp.join("a")).unwrap(),
        }
    };
    for i in 0..3 {
        change(i)();
        let s = ds.snapshot(&format!("after-{i}")).unwrap();
        let kept = zfs.snapshot_unsaved(&ds, &s).await.unwrap();
        assert_eq!(
            kept.map(|k| k.name),
            Some(format!("after-{i}")),
            "change {i}"
        );
    }
}

/// zfs-fuse corrupts its own mount hand-off when two mounts run at once and then serves no
/// FUSE request again (see `zfs::MOUNT_LOCK`); many concurrent creates through the driver
/// must leave every new filesystem usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_mounts_at_once_leave_zfs_serving() {
    let Some(zfs) = zfs_or_skip("many_mounts_at_once_leave_zfs_serving").await else {
        return;
    };
    let pool = TestPool::new(&zfs, 256 * MIB).await;
    let mountpoint = PropertyName::parse("mountpoint").unwrap();
    // Three waves of 32: the race needs two hand-offs to meet, so give it many chances.
    let creates = (0..96).map(|i| {
        let (zfs, mountpoint) = (zfs.clone(), mountpoint.clone());
        let ds = pool.name.dataset(&format!("m{i}")).unwrap();
        let mp = pool.path(&format!("m{i}"));
        tokio::spawn(async move {
            zfs.create(&ds, &[(mountpoint, mp.display().to_string())])
                .await
                .unwrap();
            mp
        })
    });
    let mounts: Vec<_> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // A wedged zfs-fuse blocks file access forever: look in a thread, with a deadline.
    let look = std::thread::spawn(move || {
        for mp in &mounts {
            std::fs::write(mp.join("f"), b"x").unwrap();
            assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"x");
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !look.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "zfs-fuse stopped answering file access after concurrent mounts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    look.join().unwrap();
}

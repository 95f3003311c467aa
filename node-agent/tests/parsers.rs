//! Every parser against recorded output: zfs-fuse 0.7 (Debian 12, recorded here) and OpenZFS
//! 2.2 (Ubuntu 24.04 format) in `tests/fixtures/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::Path;

use projstore_agent::zfs::ZfsError;
use projstore_agent::zfs::caps::{Capabilities, Implementation};
use projstore_agent::zfs::parse::{self, PoolFormat};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn zfs_fuse_capabilities() {
    let caps = Capabilities::from_outputs(
        None,
        &fixture("zfs-fuse/zpool-upgrade-v.txt"),
        &fixture("zfs-fuse/zfs-get-usage.stderr.txt"),
    )
    .unwrap();
    assert_eq!(caps.implementation, Implementation::ZfsFuse);
    assert_eq!(caps.version.as_deref(), Some("pool-v23"));
    assert!(caps.compression.contains(&"gzip-9".to_owned()));
    assert!(caps.compression.contains(&"lzjb".to_owned()));
    assert!(!caps.compression.contains(&"lz4".to_owned()));
    assert!(caps.holds && !caps.list_holds);
    assert!(
        !caps.resumable_send
            && !caps.bookmarks
            && !caps.raw_send
            && !caps.parsable_list
            && !caps.written_property
    );
    assert_eq!(caps.send_flags().letters(), "");
    assert_eq!(caps.compression_for("lz4"), ("on".to_owned(), true));
    assert_eq!(caps.compression_for("gzip"), ("gzip".to_owned(), false));
    assert_eq!(caps.feature_names(), ["holds"]);
}

#[test]
fn openzfs_capabilities() {
    let caps = Capabilities::from_outputs(
        Some(&fixture("openzfs/zfs-version.txt")),
        &fixture("openzfs/zpool-upgrade-v.txt"),
        &fixture("openzfs/zfs-get-usage.stderr.txt"),
    )
    .unwrap();
    assert_eq!(caps.implementation, Implementation::OpenZfs);
    assert_eq!(caps.version.as_deref(), Some("2.2.2"));
    for c in ["lz4", "zstd", "zstd-19", "gzip-1", "zle"] {
        assert!(caps.compression.contains(&c.to_owned()), "{c}");
    }
    assert!(
        caps.resumable_send
            && caps.bookmarks
            && caps.raw_send
            && caps.compressed_send
            && caps.parsable_list
    );
    // Live sends ask for -c -L -e here.
    assert_eq!(caps.send_flags().letters(), "cLe");
    assert_eq!(caps.compression_for("lz4"), ("lz4".to_owned(), false));
    assert_eq!(caps.compression_for("zstd-7"), ("zstd-7".to_owned(), false));
    assert!(caps.feature_names().contains(&"resumable-send".to_owned()));
}

#[test]
fn upgrade_v_formats() {
    match parse::parse_upgrade_v(&fixture("openzfs/zpool-upgrade-v.txt")).unwrap() {
        PoolFormat::Features(f) => {
            assert!(f.contains(&"lz4_compress".to_owned()));
            assert!(f.contains(&"zstd_compress".to_owned()));
            assert!(f.contains(&"vdev_zaps_v2".to_owned()));
            assert!(
                !f.iter()
                    .any(|x| x.starts_with("LZ4") || x == "1" || x == "For"),
                "{f:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        parse::parse_upgrade_v(&fixture("zfs-fuse/zpool-upgrade-v.txt")),
        Some(PoolFormat::Legacy(23))
    );
    assert_eq!(parse::parse_upgrade_v("garbage"), None);
}

#[test]
fn zpool_list_exact_and_human() {
    let rows = parse::parse_zpool_list(&fixture("openzfs/zpool-list-p.txt")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].name, "tank");
    assert_eq!(rows[0].size, 1_992_864_825_344);
    assert_eq!(rows[1].health, "DEGRADED");
    let rows = parse::parse_zpool_list(&fixture("zfs-fuse/zpool-list.txt")).unwrap();
    assert_eq!(rows[0].name, "zta");
    assert_eq!(rows[0].size, 250 << 20);
    assert_eq!(rows[0].health, "ONLINE");
    assert!(parse::parse_zpool_list("tank\t1\t2\n").is_err());
}

#[test]
fn snapshots_are_ordered_by_createtxg_and_children_ignored() {
    let rows = parse::parse_get(&fixture("openzfs/zfs-get-snapshots.txt")).unwrap();
    let snaps = parse::snapshots_of("tank/projects/alice/thesis", &parse::group(rows)).unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "before-upgrade",
            "ps-20261121T130000Z",
            "ps-20261121T131500Z"
        ]
    );
    assert_eq!(snaps[1].guid, 16_045_690_984_833_335_022);
    assert_eq!(snaps[1].used, 2_215_936);

    let rows = parse::parse_get(&fixture("zfs-fuse/zfs-get-snapshots.txt")).unwrap();
    let snaps = parse::snapshots_of("zta/projects/p1", &parse::group(rows)).unwrap();
    assert_eq!(
        snaps.iter().map(|s| s.createtxg).collect::<Vec<_>>(),
        [24, 29, 284]
    );
    assert_eq!(snaps[0].guid, 7_367_492_710_443_794_780);
    assert_eq!(snaps[2].creation, 1_795_269_613);
}

#[test]
fn a_garbled_snapshot_listing_is_an_error_not_a_guess() {
    let rows = parse::parse_get(
        "t/a@s\tguid\tnot-a-number\nt/a@s\tcreatetxg\t1\nt/a@s\tcreation\t1\nt/a@s\tused\t0\n",
    )
    .unwrap();
    assert!(parse::snapshots_of("t/a", &parse::group(rows)).is_err());
    let rows = parse::parse_get("t/a@s\tguid\t1\n").unwrap();
    assert!(parse::snapshots_of("t/a", &parse::group(rows)).is_err());
}

#[test]
fn capacity_rows() {
    let rows = parse::parse_get(&fixture("zfs-fuse/zfs-get-capacity.txt")).unwrap();
    assert_eq!(
        (rows[0].name.as_str(), rows[0].property.as_str()),
        ("zta", "used")
    );
    assert_eq!(rows[1].property, "available");
    assert!(rows[1].value.parse::<u64>().unwrap() > 0);
}

#[test]
fn status_vdevs_from_the_recorded_zfs_fuse_status() {
    let vdevs =
        projstore_agent::zfs::parse_status_vdevs(&fixture("zfs-fuse/zpool-status.txt"), "zta");
    assert_eq!(vdevs, ["/tmp/zt/a.img"]);
}

#[test]
fn recorded_zfs_fuse_refusals_classify_as_unsupported() {
    for f in [
        "zfs-send-n.stderr.txt",
        "zfs-send-resume.stderr.txt",
        "zfs-set-lz4.stderr.txt",
        "zfs-version.txt",
    ] {
        let e = ZfsError::classify("op", &fixture(&format!("zfs-fuse/{f}")));
        assert!(matches!(e, ZfsError::Unsupported { .. }), "{f}: {e:?}");
    }
}

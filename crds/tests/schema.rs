//! Every rule of the CRD schemas, as a table: invalid manifests are refused with an error that
//! names the offending field; valid ones pass.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod support;

use serde_json::{Value, json};
use support::*;

struct Case {
    why: &'static str,
    object: Value,
    field: &'static str,
}

fn case(why: &'static str, object: Value, field: &'static str) -> Case {
    Case { why, object, field }
}

fn invalid_cases() -> Vec<Case> {
    let p = project;
    let sp = storage_pool;
    let sr = stream_replica;
    let mount = |project: &str, path: &str, mount_path: &str| json!([{"project": project, "path": path, "mountPath": mount_path}]);
    vec![
        // Project
        case(
            "quota not a quantity",
            set(p(), "spec.quota", json!("ten gigs")),
            "spec.quota",
        ),
        case(
            "quota below 1Mi",
            set(p(), "spec.quota", json!("512Ki")),
            "spec.quota",
        ),
        case(
            "quota above 1Pi",
            set(p(), "spec.quota", json!("2Pi")),
            "spec.quota",
        ),
        case(
            "quota with a unit typo",
            set(p(), "spec.quota", json!("10GiB")),
            "spec.quota",
        ),
        case("owner missing", remove(p(), "spec.owner"), "spec.owner"),
        case("quota missing", remove(p(), "spec.quota"), "spec.quota"),
        case(
            "uid 0 (root)",
            set(p(), "spec.owner.uid", json!(0)),
            "spec.owner.uid",
        ),
        case(
            "gid 0 (root)",
            set(p(), "spec.owner.gid", json!(0)),
            "spec.owner.gid",
        ),
        case(
            "gid above 2^32-2",
            set(p(), "spec.owner.gid", json!(4294967295u64)),
            "spec.owner.gid",
        ),
        case(
            "uid negative",
            set(p(), "spec.owner.uid", json!(-5)),
            "spec.owner.uid",
        ),
        case("copies 0", set(p(), "spec.copies", json!(0)), "spec.copies"),
        case("copies 6", set(p(), "spec.copies", json!(6)), "spec.copies"),
        case(
            "copies as a string",
            set(p(), "spec.copies", json!("3")),
            "spec.copies",
        ),
        case(
            "pinned pool not a k8s name",
            set(p(), "spec.placement.pool", json!("Pool_A")),
            "spec.placement.pool",
        ),
        case(
            "unknown spread",
            set(p(), "spec.placement.spread", json!("Rack")),
            "spec.placement.spread",
        ),
        case(
            "interval 0",
            set(p(), "spec.snapshots.intervalMinutes", json!(0)),
            "spec.snapshots.intervalMinutes",
        ),
        case(
            "interval over a week",
            set(p(), "spec.snapshots.intervalMinutes", json!(10081)),
            "spec.snapshots.intervalMinutes",
        ),
        case(
            "keep hourly too many",
            set(p(), "spec.snapshots.keep.hourly", json!(10001)),
            "spec.snapshots.keep.hourly",
        ),
        case(
            "keep daily negative",
            set(p(), "spec.snapshots.keep.daily", json!(-1)),
            "spec.snapshots.keep.daily",
        ),
        case(
            "space ratio 0",
            set(p(), "spec.snapshots.maxSpaceRatio", json!(0)),
            "spec.snapshots.maxSpaceRatio",
        ),
        case(
            "unknown state",
            set(p(), "spec.state", json!("Archived")),
            "spec.state",
        ),
        case(
            "unknown failover",
            set(p(), "spec.failover", json!("Sometimes")),
            "spec.failover",
        ),
        case(
            "retainDays over 10 years",
            set(p(), "spec.deletion.retainDays", json!(4000)),
            "spec.deletion.retainDays",
        ),
        case(
            "mountPath absolute",
            set(p(), "spec.mounts", mount("src", "a", "/abs")),
            "spec.mounts[0].mountPath",
        ),
        case(
            "mountPath climbs out",
            set(p(), "spec.mounts", mount("src", "a", "a/../../etc")),
            "spec.mounts[0].mountPath",
        ),
        case(
            "mount path ..",
            set(p(), "spec.mounts", mount("src", "../other", "b")),
            "spec.mounts[0].path",
        ),
        case(
            "mount path with shell metacharacters",
            set(p(), "spec.mounts", mount("src", "a;rm -rf", "b")),
            "spec.mounts[0].path",
        ),
        case(
            "mount path empty",
            set(p(), "spec.mounts", mount("src", "", "b")),
            "spec.mounts[0].path",
        ),
        case(
            "mount project not a label",
            set(p(), "spec.mounts", mount("Other_Project", "a", "b")),
            "spec.mounts[0].project",
        ),
        case(
            "two mounts on one mountPath",
            set(
                p(),
                "spec.mounts",
                json!([
                {"project": "a", "path": "x", "mountPath": "m"},
                {"project": "b", "path": "y", "mountPath": "m"}]),
            ),
            "spec.mounts",
        ),
        case(
            "a project mounting itself",
            set(p(), "spec.mounts", mount("thesis", "a", "b")),
            "spec.mounts",
        ),
        case(
            "name longer than 63",
            set(p(), "metadata.name", json!("a".repeat(64))),
            "metadata.name",
        ),
        case(
            "name with a dot (not a label)",
            set(p(), "metadata.name", json!("my.project")),
            "metadata.name",
        ),
        case(
            "unknown spec field",
            set(p(), "spec.copys", json!(3)),
            "spec.copys",
        ),
        // StoragePool
        case(
            "poolName starting with -",
            set(sp(), "spec.poolName", json!("-tank")),
            "spec.poolName",
        ),
        case(
            "poolName with a slash",
            set(sp(), "spec.poolName", json!("tank/a")),
            "spec.poolName",
        ),
        case(
            "poolName with @",
            set(sp(), "spec.poolName", json!("tank@x")),
            "spec.poolName",
        ),
        case(
            "poolName with #",
            set(sp(), "spec.poolName", json!("tank#x")),
            "spec.poolName",
        ),
        case(
            "poolName with whitespace",
            set(sp(), "spec.poolName", json!("ta nk")),
            "spec.poolName",
        ),
        case(
            "poolName with a control character",
            set(sp(), "spec.poolName", json!("tank\u{7}")),
            "spec.poolName",
        ),
        case(
            "poolName reserved: mirror",
            set(sp(), "spec.poolName", json!("mirror")),
            "spec.poolName",
        ),
        case(
            "poolName reserved: raidz2",
            set(sp(), "spec.poolName", json!("raidz2")),
            "spec.poolName",
        ),
        case(
            "poolName reserved: spare",
            set(sp(), "spec.poolName", json!("spare")),
            "spec.poolName",
        ),
        case(
            "poolName reserved: log",
            set(sp(), "spec.poolName", json!("log")),
            "spec.poolName",
        ),
        case(
            "nodeName not a k8s name",
            set(sp(), "spec.nodeName", json!("Node_1")),
            "spec.nodeName",
        ),
        case("no vdevs", set(sp(), "spec.vdevs", json!([])), "spec.vdevs"),
        case(
            "vdev path relative",
            set(sp(), "spec.vdevs[0].path", json!("pool.img")),
            "spec.vdevs[0].path",
        ),
        case(
            "vdev path with ..",
            set(sp(), "spec.vdevs[0].path", json!("/var/../etc/x")),
            "spec.vdevs[0].path",
        ),
        case(
            "vdev path not normalised",
            set(sp(), "spec.vdevs[0].path", json!("/var//x.img")),
            "spec.vdevs[0].path",
        ),
        case(
            "vdev image too small",
            set(sp(), "spec.vdevs[0].sizeBytes", json!(1024)),
            "spec.vdevs[0].sizeBytes",
        ),
        case(
            "the same vdev twice",
            set(
                sp(),
                "spec.vdevs",
                json!([{"path": "/dev/sdb"}, {"path": "/dev/sdb"}]),
            ),
            "spec.vdevs",
        ),
        case(
            "unknown compression",
            set(sp(), "spec.properties.compression", json!("brotli")),
            "spec.properties.compression",
        ),
        case(
            "recordsize not a power of two",
            set(sp(), "spec.properties.recordsize", json!("100K")),
            "spec.properties.recordsize",
        ),
        case(
            "unknown logbias",
            set(sp(), "spec.properties.logbias", json!("fast")),
            "spec.properties.logbias",
        ),
        case(
            "atime as a word",
            set(sp(), "spec.properties.atime", json!("off")),
            "spec.properties.atime",
        ),
        case(
            "reservedPercent 95",
            set(sp(), "spec.reservedPercent", json!(95)),
            "spec.reservedPercent",
        ),
        case(
            "datacenter with a space",
            set(sp(), "spec.topology.datacenter", json!("dc 1")),
            "spec.topology.datacenter",
        ),
        // StreamReplica
        case(
            "unknown role",
            set(sr(), "spec.role", json!("Leader")),
            "spec.role",
        ),
        case(
            "negative epoch",
            set(sr(), "spec.epoch", json!(-1)),
            "spec.epoch",
        ),
        case(
            "project not a label",
            set(sr(), "spec.project", json!("Bad_Name")),
            "spec.project",
        ),
        case(
            "endpoint not http",
            set(sr(), "spec.source.streamEndpoint", json!("ftp://x")),
            "spec.source.streamEndpoint",
        ),
        case(
            "unknown state",
            set(sr(), "spec.state", json!("Gone")),
            "spec.state",
        ),
        case("node missing", remove(sr(), "spec.node"), "spec.node"),
    ]
}

fn valid_objects() -> Vec<(&'static str, Value)> {
    vec![
        ("minimal project", project()),
        (
            "project at the lower quota bound",
            set(project(), "spec.quota", json!("1Mi")),
        ),
        (
            "project at the upper quota bound",
            set(project(), "spec.quota", json!("1Pi")),
        ),
        (
            "project pinned to a pool",
            set(
                project(),
                "spec.placement",
                json!({"pool": "host-a-storage", "spread": "Zone"}),
            ),
        ),
        (
            "project with a selector and experimental pools tolerated",
            set(
                project(),
                "spec.placement",
                json!({
                "poolSelector": {"matchLabels": {"tier": "ssd"}}, "tolerateExperimental": true, "spread": "None"}),
            ),
        ),
        (
            "project mounting two folders",
            set(
                project(),
                "spec.mounts",
                json!([
                {"project": "course", "path": "handin/alice", "mountPath": "handin", "readOnly": false},
                {"project": "course", "path": "materials", "mountPath": ".course/materials", "readOnly": true}]),
            ),
        ),
        ("closed project, one copy, manual failover", {
            let p = set(project(), "spec.state", json!("Closed"));
            let p = set(p, "spec.copies", json!(1));
            set(p, "spec.failover", json!("Manual"))
        }),
        (
            "project with every snapshot knob",
            set(
                project(),
                "spec.snapshots",
                json!({
                "intervalMinutes": 10080, "maxSpaceRatio": 100,
                "keep": {"frequent": 0, "hourly": 10000, "daily": 1, "weekly": 0, "monthly": 12}}),
            ),
        ),
        (
            "project with a 63-character name",
            set(project(), "metadata.name", json!("a".repeat(63))),
        ),
        ("minimal storage pool", storage_pool()),
        ("pool on two devices with tuned properties, experimental", {
            let p = set(
                storage_pool(),
                "spec.vdevs",
                json!([{"path": "/dev/sdb"}, {"path": "/dev/disk/by-id/nvme-1"}]),
            );
            let p = set(
                p,
                "spec.properties",
                json!({"compression": "gzip-9", "atime": true, "recordsize": "1M", "logbias": "throughput"}),
            );
            set(p, "spec.experimental", json!(true))
        }),
        (
            "pool with a dotted, coloned name",
            set(storage_pool(), "spec.poolName", json!("tank.v2:a_b-c")),
        ),
        (
            "pool with no topology",
            remove(storage_pool(), "spec.topology"),
        ),
        ("secondary stream replica", stream_replica()),
        (
            "primary stream replica",
            remove(
                set(stream_replica(), "spec.role", json!("Primary")),
                "spec.source",
            ),
        ),
        (
            "trashed replica",
            set(stream_replica(), "spec.state", json!("Trashed")),
        ),
    ]
}

#[test]
fn the_table_covers_every_rule() {
    assert!(invalid_cases().len() >= 30);
    assert!(valid_objects().len() >= 10);
}

#[test]
fn invalid_manifests_are_refused_naming_the_field() {
    let mut failures = Vec::new();
    for c in invalid_cases() {
        let errors = validate(&c.object, None);
        if !names_field(&errors, c.field) {
            failures.push(format!(
                "{}: expected an error on {}, got {:?}",
                c.why, c.field, errors
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_manifests_pass() {
    for (why, obj) in valid_objects() {
        let errors = validate(&obj, None);
        assert!(errors.is_empty(), "{why}: unexpected errors {errors:?}");
    }
}

#[test]
fn defaults_are_filled_in_as_documented() {
    let v = validator("Project");
    let p = v.with_defaults(&project());
    assert_eq!(p["spec"]["copies"], json!(3));
    assert_eq!(p["spec"]["state"], json!("Open"));
    assert_eq!(p["spec"]["failover"], json!("Automatic"));
    assert_eq!(p["spec"]["placement"]["spread"], json!("Datacenter"));
    assert_eq!(p["spec"]["placement"]["tolerateExperimental"], json!(false));
    assert_eq!(p["spec"]["snapshots"]["intervalMinutes"], json!(15));
    assert_eq!(p["spec"]["snapshots"]["maxSpaceRatio"], json!(3));
    assert_eq!(
        p["spec"]["snapshots"]["keep"],
        json!({"frequent": 8, "hourly": 24, "daily": 14, "weekly": 7, "monthly": 4})
    );
    assert_eq!(p["spec"]["deletion"]["retainDays"], json!(7));

    let sp = validator("StoragePool").with_defaults(&storage_pool());
    assert_eq!(sp["spec"]["schedulable"], json!(true));
    assert_eq!(sp["spec"]["experimental"], json!(false));
    assert_eq!(sp["spec"]["reservedPercent"], json!(10));
    assert_eq!(sp["spec"]["forceImport"], json!(false));
    assert_eq!(
        sp["spec"]["properties"],
        json!({"compression": "lz4", "atime": false})
    );

    let sr = validator("StreamReplica").with_defaults(&stream_replica());
    assert_eq!(sr["spec"]["state"], json!("Live"));
}

#[test]
fn defaulted_objects_deserialize_into_the_types() {
    let p: projstore_api::Project =
        serde_json::from_value(validator("Project").with_defaults(&project())).unwrap();
    assert_eq!(p.spec.copies, 3);
    assert_eq!(p.spec.snapshots.keep.weekly, 7);
    let sp: projstore_api::StoragePool =
        serde_json::from_value(validator("StoragePool").with_defaults(&storage_pool())).unwrap();
    assert_eq!(sp.spec.reserved_percent, 10);
}

use super::*;

#[test]
fn an_orphaned_sshd_is_recognised_by_its_config_also_after_it_renamed_itself() {
    let config = Path::new("/run/projstore/sshd_config");
    // Debian 12's sshd as a listener (its title rewritten), and as first started.
    let titled = b"sshd: /usr/sbin/sshd -D -e -f /run/projstore/sshd_config [listener] 0 of 10-100 startups\0";
    let plain = b"/usr/sbin/sshd\0-D\0-e\0-f\0/run/projstore/sshd_config\0";
    assert!(started_with(titled, config));
    assert!(started_with(plain, config));
    let other = b"sshd: /usr/sbin/sshd -D -f /run/projstore/sshd_config.old [listener]\0";
    assert!(!started_with(other, config));
    assert!(!started_with(b"", config));
}
#[test]
fn sftp_endpoints_are_host_and_port_only() {
    for ok in ["127.0.0.2:7422", "host-a.example:22", "[fe80::1]:7422"] {
        assert!(check_endpoint(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "host",
        "host:",
        "host:99999",
        "host:22,ssh_command=sh",
        "-oProxyCommand=x:22",
        "a b:22",
        ":22",
    ] {
        assert!(check_endpoint(bad).is_err(), "{bad}");
    }
}
#[test]
fn a_chroot_below_a_world_writable_directory_is_refused_with_the_reason() {
    let e = check_chroot(Path::new("/tmp")).unwrap_err();
    assert!(e.contains("/tmp") && e.contains("not writable"), "{e}");
}

fn pool(node: &str, endpoint: Option<&str>, key: Option<&str>) -> projstore_api::StoragePool {
    let mut p = projstore_api::StoragePool::new(
        &format!("pool-{node}"),
        serde_json::from_value(serde_json::json!({
            "nodeName": node, "poolName": "tank", "vdevs": [{"path": "/dev/x"}]
        }))
        .unwrap(),
    );
    p.status = Some(
        serde_json::from_value(serde_json::json!({
            "agent": {"sftpEndpoint": endpoint, "sftpClientKey": key}
        }))
        .unwrap(),
    );
    p
}

fn primary(ns: &str, name: &str, node: &str, sources: &str) -> projstore_api::StreamReplica {
    let mut sr = projstore_api::StreamReplica::new(
        name,
        serde_json::from_value(serde_json::json!({
            "project": name, "pool": format!("pool-{node}"), "node": node,
            "role": "Primary", "epoch": 1, "state": "Live"
        }))
        .unwrap(),
    );
    sr.metadata.namespace = Some(ns.into());
    sr.metadata.annotations = Some(
        [(
            projstore_api::MOUNT_SOURCES_ANNOTATION.to_owned(),
            sources.to_owned(),
        )]
        .into(),
    );
    sr
}

const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb projstore-sftp-client";

#[test]
fn a_peer_is_let_in_to_exactly_the_projects_it_mounts_from_here() {
    let src = |node: &str| {
        format!(
            r#"{{"pool":"pool-{node}","node":"{node}","epoch":1,"sftp":null,"hostKey":null,"readOnly":false}}"#
        )
    };
    let ro = |node: &str| format!(r#"{{"pool":"pool-{node}","node":"{node}","readOnly":true}}"#);
    let replicas = [
        // host-b's project mounts two projects of host-a and one of host-c.
        primary(
            "ns",
            "consumer",
            "host-b",
            &format!(
                r#"{{"data":{},"tools":{},"far":{}}}"#,
                src("host-a"),
                ro("host-a"),
                src("host-c")
            ),
        ),
        // Another project on host-b mounts ns/data read-only: still writable for host-b
        // (the first one writes).
        primary(
            "ns",
            "reader",
            "host-b",
            &format!(r#"{{"data":{}}}"#, ro("host-a")),
        ),
        // A project on host-a itself mounting from host-a: same host, no sftp.
        primary(
            "ns",
            "local",
            "host-a",
            &format!(r#"{{"data":{}}}"#, src("host-a")),
        ),
        // host-d has published no key yet; host-e's endpoint is a name, not an address.
        primary(
            "ns",
            "early",
            "host-d",
            &format!(r#"{{"data":{}}}"#, src("host-a")),
        ),
        primary(
            "other",
            "named",
            "host-e",
            &format!(r#"{{"x":{}}}"#, src("host-a")),
        ),
        // Unreadable annotation: nothing.
        primary("ns", "broken", "host-f", "not json"),
        // A trashed project's primary mounts nothing.
        {
            let mut t = primary(
                "ns",
                "gone",
                "host-g",
                &format!(r#"{{"data":{}}}"#, src("host-a")),
            );
            t.spec.state = projstore_api::ReplicaState::Trashed;
            t
        },
    ];
    let pools = [
        pool("host-b", Some("10.0.0.2:7422"), Some(KEY_B)),
        pool("host-d", Some("10.0.0.4:7422"), None),
        pool("host-e", Some("storage-e.example:7422"), Some(KEY_B)),
        pool("host-g", Some("10.0.0.7:7422"), Some(KEY_B)),
    ];
    let (grants, problems) = grants(&replicas, &pools, "host-a");
    assert_eq!(
        grants,
        vec![Grant {
            node: "host-b".into(),
            address: "10.0.0.2".parse().unwrap(),
            client_key: KEY_B.into(),
            projects: [
                (PathBuf::from("ns/data"), false),
                (PathBuf::from("ns/tools"), true)
            ]
            .into(),
        }]
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("host-d") && problems[1].contains("host-e"),
        "{problems:?}"
    );

    let dirs = MountDirs::new(Path::new("/run/p"));
    let keys = SshKeys {
        dir: "/run/p/ssh".into(),
    };
    let config = sshd_config("0.0.0.0:7422".parse().unwrap(), &keys, &dirs, &grants);
    assert!(
        config.contains("ChrootDirectory /run/p/sftp/none\n"),
        "{config}"
    );
    // An annotation without readOnly (an older controller's) lets nothing write.
    let old: projstore_api::MountSource =
        serde_json::from_str(r#"{"pool":"p","node":"n"}"#).unwrap();
    assert!(old.read_only);
    // An IPv4-mapped address is the IPv4 address (as sshd sees the client).
    assert_eq!(
        address_of("[::ffff:10.0.0.2]:7422"),
        Some("10.0.0.2".parse().unwrap())
    );

    // No key is accepted outside a peer's block; the block takes that peer's key alone.
    assert!(config.contains("AuthorizedKeysFile none\n"), "{config}");
    assert!(
        config.ends_with(&format!(
            "Match Address 10.0.0.2\n    AuthorizedKeysFile {}\n    ChrootDirectory {}\n",
            keys.peer_keys("host-b").display(),
            dirs.peer_root("host-b").display()
        )),
        "{config}"
    );
    assert_eq!(
        authorized_key(&grants[0]),
        format!("from=\"10.0.0.2\",restrict {KEY_B}\n")
    );

    // host-h publishes host-b's address (its own pool status, which it may write): the
    // address no longer says which node it is, so neither is let in.
    let mut pools = pools.to_vec();
    pools.push(pool("host-h", Some("10.0.0.2:7422"), Some(KEY_B)));
    let mut replicas = replicas.to_vec();
    replicas.push(primary(
        "ns",
        "impostor",
        "host-h",
        &format!(r#"{{"tools":{}}}"#, src("host-a")),
    ));
    let (grants, problems) = super::grants(&replicas, &pools, "host-a");
    assert!(grants.is_empty(), "{grants:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("host-b, host-h") && p.contains("10.0.0.2")),
        "{problems:?}"
    );
}

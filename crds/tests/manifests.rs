//! The committed CRD manifests are exactly what the types generate (`make crds` rewrites them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::Path;

#[test]
fn committed_manifests_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut stale = Vec::new();
    for (file, crd) in projstore_api::crd::all() {
        let want = projstore_api::crd::to_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if have != want {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/manifests out of date ({stale:?}): run `make crds` and commit"
    );
}

#[test]
fn every_kind_has_status_columns_short_names_and_the_category() {
    for (file, crd) in projstore_api::crd::all() {
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["projstore".to_owned()][..]),
            "{file}"
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{file}"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let want: &[&str] = match names.kind.as_str() {
            "Project" => &[
                "PRIMARY", "REPLICAS", "USED", "QUOTA", "PHASE", "AGE", "BACKUP",
            ],
            "BackupTarget" => &["ENDPOINT", "BUCKET", "PHASE", "AGE"],
            "StoragePool" => &["NODE", "POOL", "DC", "FREE", "SIZE", "PHASE"],
            "StreamReplica" => &[
                "PROJECT", "POOL", "ROLE", "EPOCH", "APPLIED", "LAG", "PHASE",
            ],
            other => panic!("unexpected kind {other}"),
        };
        for column in want {
            assert!(
                columns.contains(column),
                "{file} lacks column {column}: {columns:?}"
            );
        }
    }
}

#[test]
fn scopes_match_the_design() {
    let scope = |kind: &str| {
        projstore_api::crd::all()
            .into_iter()
            .find(|(_, c)| c.spec.names.kind == kind)
            .map(|(_, c)| c.spec.scope)
            .unwrap()
    };
    assert_eq!(scope("Project"), "Namespaced");
    assert_eq!(scope("StreamReplica"), "Namespaced");
    assert_eq!(scope("StoragePool"), "Cluster");
    assert_eq!(scope("BackupTarget"), "Cluster");
}

#[test]
fn manifests_have_no_yaml_1_1_boolean_words_unquoted() {
    // kubectl reads YAML 1.1, where a bare on/off/yes/no is a boolean, not a string.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for (file, _) in projstore_api::crd::all() {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let value = line
                .trim()
                .trim_start_matches("- ")
                .rsplit(": ")
                .next()
                .unwrap_or("")
                .trim();
            let bare = ["on", "off", "yes", "no", "y", "n", "On", "Off", "Yes", "No"];
            assert!(
                !bare.contains(&value),
                "{file}:{}: bare YAML 1.1 boolean word: {line}",
                n + 1
            );
        }
    }
}

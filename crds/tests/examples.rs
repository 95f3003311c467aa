//! Every manifest in `examples/` validates against the CRD schemas, and the examples cover what
//! a user starts from.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod support;

use serde::Deserialize;
use serde_json::Value;
use support::*;

fn example_objects() -> Vec<(String, Value)> {
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                objects.push((
                    file.file_name().unwrap().to_string_lossy().into_owned(),
                    value,
                ));
            }
        }
    }
    objects
}

#[test]
fn examples_validate_against_the_crds() {
    let objects = example_objects();
    assert!(!objects.is_empty());
    for (file, obj) in &objects {
        if obj["apiVersion"] == "projstore.io/v1alpha1" {
            let errors = validate(obj, None);
            assert!(
                errors.is_empty(),
                "{file}: {} {errors:?}",
                obj["metadata"]["name"]
            );
        }
    }
}

#[test]
fn examples_cover_what_a_user_starts_from() {
    let objects: Vec<Value> = example_objects().into_iter().map(|(_, o)| o).collect();
    let pools: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "StoragePool")
        .collect();
    let projects: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Project").collect();

    assert_eq!(pools.len(), 3, "three StoragePools");
    let mut nodes: Vec<&str> = pools
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "on three hosts");
    let mut dcs: Vec<&str> = pools
        .iter()
        .map(|p| p["spec"]["topology"]["datacenter"].as_str().unwrap())
        .collect();
    dcs.sort();
    dcs.dedup();
    assert_eq!(dcs.len(), 2, "in two datacenters");

    assert!(
        projects.iter().any(|p| p["spec"].get("placement").is_none()
            && p["spec"].get("mounts").is_none()
            && p["spec"].get("state").is_none()),
        "a plain project"
    );
    let pool_names: Vec<&Value> = pools.iter().map(|p| &p["metadata"]["name"]).collect();
    assert!(
        projects
            .iter()
            .any(|p| pool_names.contains(&&p["spec"]["placement"]["pool"])),
        "a pinned project"
    );
    let names: Vec<&Value> = projects.iter().map(|p| &p["metadata"]["name"]).collect();
    assert!(
        projects.iter().any(|p| p["spec"]["mounts"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| names.contains(&&m["project"])))),
        "a project mounting a folder of another"
    );
    assert!(
        projects.iter().any(|p| p["spec"]["state"] == "Closed"),
        "a closed project"
    );
}

#[test]
fn examples_deserialize_into_the_types() {
    for (file, obj) in example_objects() {
        let defaulted = match obj["kind"].as_str() {
            Some(kind @ ("Project" | "StoragePool")) => validator(kind).with_defaults(&obj),
            _ => continue,
        };
        match obj["kind"].as_str() {
            Some("Project") => {
                serde_json::from_value::<projstore_api::Project>(defaulted)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            }
            _ => {
                serde_json::from_value::<projstore_api::StoragePool>(defaulted)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}

//! The RBAC rules of the chart that no scenario used (issue #8): run after the scenarios
//! (`make test` does), it lists every unused rule and fails when there is one, so the roles
//! stay least-privilege. Ignored in a plain `cargo test`, where the scenarios may not have
//! run yet.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

mod common;

use std::path::Path;

use projstore_e2e::rbac::{load_rules, read_log, rules_file};

#[test]
#[ignore = "reads what the scenarios recorded; make test runs it after them"]
fn every_chart_rbac_rule_is_used_by_some_scenario() {
    let dir = common::rbac_usage_dir();
    let logs: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        !logs.is_empty(),
        "no RBAC usage recorded in {}: run the scenarios first",
        dir.display()
    );
    let used: Vec<_> = logs.iter().flat_map(|p| read_log(p)).collect();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/projstore");
    let mut unused = Vec::new();
    for component in ["controller", "agent", "backup-secrets"] {
        let rules = load_rules(&rules_file(&chart, component)).unwrap();
        for (i, rule) in rules.iter().enumerate() {
            for verb in &rule.verbs {
                let hit = used
                    .iter()
                    .any(|u| u.role == component && u.rule == Some(i) && &u.verb == verb);
                if !hit {
                    unused.push(format!(
                        "{component} rule {i}: {verb} {:?} in {:?}",
                        rule.resources, rule.api_groups
                    ));
                }
            }
        }
    }
    println!("RBAC usage from {} scenario(s)", logs.len());
    for u in &unused {
        println!("unused: {u}");
    }
    assert!(
        unused.is_empty(),
        "rules no scenario used:\n{}",
        unused.join("\n")
    );
}

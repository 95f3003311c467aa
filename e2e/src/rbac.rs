//! RBAC for the test API server: the record of which rule each request of the controller
//! and the agents used, and each denial ([`UsageLog`], written by both authorizers), so the
//! e2e suite proves the roles are enough and reports rules no scenario needs; and
//! [`RbacAuthorizer`], which enforces the chart's rule files
//! (`charts/projstore/files/*-rules.yaml`, the very text the chart renders) where no Helm
//! install created the roles.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::apiserver::{Authorizer, Identity};

/// One PolicyRule (no wildcards: the chart's tests refuse them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rule {
    #[serde(rename = "apiGroups")]
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

/// A ClusterRole bound to one user (a ServiceAccount's identity).
#[derive(Debug, Clone)]
pub struct Role {
    /// `controller` or `agent`.
    pub name: String,
    pub user: String,
    pub rules: Vec<Rule>,
}

/// The identity Kubernetes gives a ServiceAccount's token.
pub fn service_account_user(namespace: &str, sa: &str) -> String {
    format!("system:serviceaccount:{namespace}:{sa}")
}

/// The chart's rules file of `component` (`controller` or `agent`).
pub fn rules_file(chart_dir: &Path, component: &str) -> PathBuf {
    chart_dir
        .join("files")
        .join(format!("{component}-rules.yaml"))
}

pub fn load_rules(path: &Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A record of one rule use or one denial (JSON lines in the log files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Use {
    pub role: String,
    /// Index of the rule in its file; None for a denial.
    pub rule: Option<usize>,
    pub verb: String,
    pub group: String,
    pub resource: String,
    /// The request's namespace (empty: cluster-scoped, or not told).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Where the rule uses and denials of the roles' users go: `<dir>/rbac-used.jsonl` and
/// `<dir>/rbac-denied.jsonl`, each distinct record once.
pub struct UsageLog {
    used_log: PathBuf,
    denied_log: PathBuf,
    /// Records already written (as their JSON line).
    seen: Mutex<std::collections::BTreeSet<String>>,
}

impl UsageLog {
    pub fn new(dir: &Path) -> Self {
        Self {
            used_log: dir.join("rbac-used.jsonl"),
            denied_log: dir.join("rbac-denied.jsonl"),
            seen: Mutex::default(),
        }
    }

    pub fn record(&self, u: Use) {
        if u.rule.is_none() {
            tracing::warn!(role = %u.role, verb = %u.verb, group = %u.group, resource = %u.resource, "RBAC denied");
        }
        let line = serde_json::to_string(&u).unwrap_or_default();
        if let Ok(mut seen) = self.seen.lock()
            && !seen.insert(line.clone())
        {
            return;
        }
        let path = if u.rule.is_some() {
            &self.used_log
        } else {
            &self.denied_log
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Enforces the roles; users without a role (the admin) are not restricted.
pub struct RbacAuthorizer {
    roles: Vec<Role>,
    log: UsageLog,
}

impl RbacAuthorizer {
    /// Logs go to `<dir>/rbac-used.jsonl` and `<dir>/rbac-denied.jsonl`.
    pub fn new(roles: Vec<Role>, dir: &Path) -> Self {
        Self {
            roles,
            log: UsageLog::new(dir),
        }
    }
}

impl Authorizer for RbacAuthorizer {
    fn allowed(
        &self,
        _state: &crate::apiserver::store::State,
        who: &Identity,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        _name: &str,
    ) -> bool {
        let Some(role) = self.roles.iter().find(|r| r.user == who.user) else {
            return true;
        };
        let hit = role.rules.iter().position(|r| {
            r.api_groups.iter().any(|g| g == group)
                && r.resources.iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        });
        self.log.record(Use {
            role: role.name.clone(),
            rule: hit,
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
        });
        hit.is_some()
    }
}

/// Reads a JSON-lines log written by [`RbacAuthorizer`] (missing file: nothing recorded).
pub fn read_log(path: &Path) -> Vec<Use> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_listed_verbs_groups_and_resources_pass_and_every_decision_is_recorded() {
        let dir = std::env::temp_dir().join(format!("rbac-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = RbacAuthorizer::new(
            vec![Role {
                name: "agent".into(),
                user: "sa".into(),
                rules: vec![Rule {
                    api_groups: vec!["projstore.io".into()],
                    resources: vec!["projects".into()],
                    verbs: vec!["get".into()],
                }],
            }],
            &dir,
        );
        let sa = Identity {
            user: "sa".into(),
            groups: vec![],
        };
        let admin = Identity {
            user: "admin".into(),
            groups: vec![],
        };
        let st = crate::apiserver::store::State::new(10);
        assert!(a.allowed(&st, &sa, "get", "projstore.io", "projects", "ns", "p"));
        assert!(!a.allowed(&st, &sa, "patch", "projstore.io", "projects", "ns", "p"));
        assert!(!a.allowed(
            &st,
            &sa,
            "get",
            "projstore.io",
            "projects/status",
            "ns",
            "p"
        ));
        assert!(a.allowed(&st, &admin, "delete", "", "namespaces", "", "x"));
        assert_eq!(read_log(&dir.join("rbac-used.jsonl")).len(), 1);
        assert_eq!(read_log(&dir.join("rbac-denied.jsonl")).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! RBAC as a real API server evaluates it: from the Roles, ClusterRoles and their bindings
//! stored in the server, so what a Helm install of the chart created is what is enforced.

use serde_json::Value;

use super::http::{Authorizer, Identity};
use super::store::State;
use crate::rbac::{UsageLog, Use};

/// Allows what the stored RBAC objects grant (and everything to `system:masters`).
#[derive(Default)]
pub struct StoredRbac {
    /// The users whose decisions are recorded, each with the name its records carry
    /// (`controller`, `agent`), and where they go. A use names the rule's index in the
    /// role that granted it, which for the chart's ClusterRoles is the index in the
    /// chart's rules file.
    recorded: Option<(Vec<(String, String)>, UsageLog)>,
}

const RBAC: &str = "rbac.authorization.k8s.io";

fn strings<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    v[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether a binding names `who` among its subjects.
fn binds(binding: &Value, who: &Identity) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            match s["kind"].as_str().unwrap_or_default() {
                "User" => who.user == name,
                "Group" => who.groups.iter().any(|g| g == name),
                "ServiceAccount" => {
                    who.user
                        == format!(
                            "system:serviceaccount:{}:{name}",
                            s["namespace"].as_str().unwrap_or_default()
                        )
                }
                _ => false,
            }
        })
}

/// Whether one PolicyRule allows the request.
fn rule_allows(rule: &Value, verb: &str, group: &str, resource: &str, name: &str) -> bool {
    let has = |key: &str, want: &str| strings(rule, key).any(|x| x == want || x == "*");
    has("verbs", verb)
        && has("apiGroups", group)
        && has("resources", resource)
        && (strings(rule, "resourceNames").next().is_none() || has("resourceNames", name))
}

impl StoredRbac {
    /// Records every decision about `users` (user, name in the records) in `dir`, as
    /// [`crate::rbac::RbacAuthorizer`] does for the chart's rule files.
    pub fn recording(users: Vec<(String, String)>, dir: &std::path::Path) -> Self {
        Self {
            recorded: Some((users, UsageLog::new(dir))),
        }
    }

    /// The rules of the role a binding refers to (a Role in `ns`, or a ClusterRole).
    fn rules<'a>(state: &'a State, binding: &Value, ns: &str) -> Vec<&'a Value> {
        let kind = binding.pointer("/roleRef/kind").and_then(Value::as_str);
        let name = binding
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (plural, role_ns) = match kind {
            Some("ClusterRole") => ("clusterroles", ""),
            Some("Role") => ("roles", ns),
            _ => return Vec::new(),
        };
        state
            .registry
            .get(RBAC, "v1", plural)
            .and_then(|t| state.get(t, role_ns, name))
            .map(|role| role["rules"].as_array().into_iter().flatten().collect())
            .unwrap_or_default()
    }
}

impl Authorizer for StoredRbac {
    fn allowed(
        &self,
        state: &State,
        who: &Identity,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        if who.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        // A ServiceAccount's token grants nothing while the ServiceAccount does not exist: the
        // one Helm created, not one assumed. (A real server no longer authenticates it: 401,
        // where this one answers 403, recorded as a denial.)
        let account_missing = who
            .user
            .strip_prefix("system:serviceaccount:")
            .and_then(|s| s.split_once(':'))
            .is_some_and(|(sa_ns, sa)| {
                state
                    .registry
                    .get("", "v1", "serviceaccounts")
                    .is_none_or(|t| state.get(t, sa_ns, sa).is_none())
            });
        let bindings = |plural: &str, ns: &str| -> Vec<Value> {
            if account_missing {
                return Vec::new();
            }
            state
                .registry
                .get(RBAC, "v1", plural)
                .map(|t| {
                    state
                        .list(t, ns, None)
                        .filter(|b| binds(b, who))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut granted = bindings("clusterrolebindings", "")
            .into_iter()
            .map(|b| (b, String::new()))
            .collect::<Vec<_>>();
        if !namespace.is_empty() {
            granted.extend(
                bindings("rolebindings", namespace)
                    .into_iter()
                    .map(|b| (b, namespace.to_owned())),
            );
        }
        let hit = granted.iter().find_map(|(b, ns)| {
            Self::rules(state, b, ns)
                .into_iter()
                .position(|r| rule_allows(r, verb, group, resource, name))
                .map(|i| (i, b))
        });
        if let Some((users, log)) = &self.recorded
            && let Some((_, user_role)) = users.iter().find(|(u, _)| *u == who.user)
        {
            // A use is recorded under the chart's name of the role that granted it (the
            // rules file it comes from); a denial under the user's.
            let role = hit
                .and_then(|(_, b)| chart_role(b))
                .unwrap_or_else(|| user_role.clone());
            log.record(Use {
                role,
                rule: hit.map(|(i, _)| i),
                verb: verb.into(),
                group: group.into(),
                resource: resource.into(),
                namespace: namespace.into(),
            });
        }
        hit.is_some()
    }
}

/// The chart's name of the role a binding refers to: `<release>-projstore-<name>` gives
/// `<name>` (`controller`, `agent`, `backup-secrets`: its rules file is `<name>-rules.yaml`).
fn chart_role(binding: &Value) -> Option<String> {
    let name = binding.pointer("/roleRef/name")?.as_str()?;
    let (_, role) = name.rsplit_once("-projstore-")?;
    Some(role.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rule_allows_its_verbs_groups_resources_and_names_only() {
        let rule = json!({"apiGroups": ["projstore.io"], "resources": ["projects"], "verbs": ["list", "watch"]});
        assert!(rule_allows(&rule, "list", "projstore.io", "projects", ""));
        assert!(!rule_allows(
            &rule,
            "delete",
            "projstore.io",
            "projects",
            "p"
        ));
        assert!(!rule_allows(&rule, "list", "", "projects", ""));
        assert!(!rule_allows(
            &rule,
            "list",
            "projstore.io",
            "projects/status",
            ""
        ));
        let named = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"], "resourceNames": ["ca"]});
        assert!(rule_allows(&named, "get", "", "secrets", "ca"));
        assert!(!rule_allows(&named, "get", "", "secrets", "other"));
    }

    #[test]
    fn a_use_is_recorded_under_the_charts_name_of_its_role() {
        let b = |name: &str| json!({"roleRef": {"kind": "Role", "name": name}});
        assert_eq!(
            chart_role(&b("ps-projstore-backup-secrets")).as_deref(),
            Some("backup-secrets")
        );
        assert_eq!(
            chart_role(&b("ps-projstore-agent")).as_deref(),
            Some("agent")
        );
        assert_eq!(
            chart_role(&b("my-projstore-test-projstore-agent")).as_deref(),
            Some("agent"),
            "a release named with -projstore- in it"
        );
        assert_eq!(chart_role(&b("edit")), None);
    }

    #[test]
    fn a_binding_names_users_groups_and_service_accounts() {
        let b = json!({"subjects": [
            {"kind": "ServiceAccount", "name": "ctl", "namespace": "sys"},
            {"kind": "Group", "name": "ops"},
        ]});
        let who = |user: &str, groups: &[&str]| Identity {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        assert!(binds(&b, &who("system:serviceaccount:sys:ctl", &[])));
        assert!(!binds(&b, &who("system:serviceaccount:other:ctl", &[])));
        assert!(binds(&b, &who("alice", &["ops"])));
        assert!(!binds(&b, &who("ctl", &[])));
    }
}

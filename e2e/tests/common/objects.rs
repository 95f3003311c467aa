//! The scenarios' view of the API objects: projects, their replicas and pools, and waits on
//! them (in sync, Ready, a condition, a new snapshot).

use std::path::PathBuf;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use projstore_api::{Project, ProjectStatus, ReplicaRole, StoragePool, StreamReplica};
use serde_json::{Value, json};

use super::Cluster;

impl Cluster {
    /// A Project's status (empty when it has none yet), for [`Cluster::wait`] closures.
    pub async fn project_status(&self, ns: &str, name: &str) -> Result<ProjectStatus, String> {
        let p = self
            .projects(ns)
            .get(name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(p.status.unwrap_or_default())
    }

    pub fn projects(&self, ns: &str) -> Api<Project> {
        Api::namespaced(self.client.clone(), ns)
    }
    pub fn replicas_api(&self, ns: &str) -> Api<StreamReplica> {
        Api::namespaced(self.client.clone(), ns)
    }
    pub fn pools(&self) -> Api<StoragePool> {
        Api::all(self.client.clone())
    }

    pub async fn create_project(&self, ns: &str, name: &str, spec: Value) -> Project {
        let p: Project = serde_json::from_value(json!({
            "apiVersion": "projstore.io/v1alpha1", "kind": "Project",
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .unwrap();
        self.projects(ns)
            .create(&PostParams::default(), &p)
            .await
            .unwrap()
    }

    pub async fn patch_project(&self, ns: &str, name: &str, patch: Value) {
        self.projects(ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// Asks the primary for a snapshot now (a fresh annotation value each time).
    pub async fn snapshot_now(&self, ns: &str, name: &str) {
        let v = format!("{}", chrono::Utc::now().timestamp_micros());
        self.patch_project(
            ns,
            name,
            json!({"metadata": {"annotations": {"projstore.io/snapshot-now": v}}}),
        )
        .await;
    }

    pub async fn replicas(&self, ns: &str, project: &str) -> Vec<StreamReplica> {
        self.replicas_api(ns)
            .list(&ListParams::default().labels(&format!("projstore.io/project={project}")))
            .await
            .unwrap()
            .items
    }

    /// Waits until the project is Ready with `copies` copies that all hold the same newest
    /// snapshot (other than `not`); returns that snapshot's GUID.
    pub async fn in_sync(
        &self,
        ns: &str,
        name: &str,
        copies: usize,
        not: Option<&str>,
        limit: Duration,
    ) -> String {
        self.wait(
            &format!("{name}: {copies} copies in sync"),
            limit,
            || async {
                let p = self
                    .projects(ns)
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?;
                let st = p.status.clone().unwrap_or_default();
                if st.phase != Some(projstore_api::ProjectPhase::Ready) {
                    return Err(format!("phase {:?}", st.phase));
                }
                let srs = self.replicas(ns, name).await;
                let live: Vec<&StreamReplica> = srs
                    .iter()
                    .filter(|r| r.owner_references().iter().any(|o| o.name == name))
                    .collect();
                let guids: Vec<Option<String>> = live
                    .iter()
                    .map(|r| {
                        r.status
                            .as_ref()
                            .and_then(|s| s.applied_snapshot.as_ref())
                            .map(|a| a.guid.clone())
                    })
                    .collect();
                let first = guids.first().cloned().flatten();
                if guids.len() == copies
                    && first.is_some()
                    && guids.iter().all(|g| *g == first)
                    && first.as_deref() != not
                {
                    Ok(first.unwrap_or_default())
                } else {
                    Err(format!("applied snapshots {guids:?}"))
                }
            },
        )
        .await
    }

    /// The primary's replica of a project.
    pub async fn primary(&self, ns: &str, name: &str) -> StreamReplica {
        self.replicas(ns, name)
            .await
            .into_iter()
            .find(|r| r.spec.role == ReplicaRole::Primary)
            .expect("a primary")
    }

    /// A secondary replica of a project.
    pub async fn secondary(&self, ns: &str, name: &str) -> StreamReplica {
        self.replicas(ns, name)
            .await
            .into_iter()
            .find(|r| r.spec.role == ReplicaRole::Secondary)
            .expect("a secondary")
    }

    /// The GUID of the newest snapshot the project's primary applied, if any.
    pub async fn primary_snapshot(&self, ns: &str, name: &str) -> Option<String> {
        self.primary(ns, name)
            .await
            .status
            .and_then(|s| s.applied_snapshot)
            .map(|a| a.guid)
    }

    /// Waits until the newest snapshot of project `(ns, name)`'s primary is another than
    /// `other` (None: it has none); returns it.
    pub async fn wait_primary_snapshot_other_than(
        &self,
        what: &str,
        (ns, name): (&str, &str),
        other: Option<&str>,
        limit: Duration,
    ) -> Option<String> {
        self.wait(what, limit, || async {
            let now = self.primary_snapshot(ns, name).await;
            if now.as_deref() != other {
                Ok(now)
            } else {
                Err(format!("still {now:?}"))
            }
        })
        .await
    }

    /// Waits until project `(ns, name)` has the condition `type_` True; returns its message.
    pub async fn wait_condition(
        &self,
        what: &str,
        (ns, name): (&str, &str),
        type_: &str,
        limit: Duration,
    ) -> String {
        self.wait(what, limit, || async {
            let st = self.project_status(ns, name).await?;
            st.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .map(|c| c.message.clone())
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        st.conditions
                            .iter()
                            .map(|c| (&c.type_, &c.status))
                            .collect::<Vec<_>>()
                    )
                })
        })
        .await
    }

    /// Where the project is mounted on its primary (from the Project's status).
    pub async fn mount_path(&self, ns: &str, name: &str) -> PathBuf {
        let st = self.projects(ns).get(name).await.unwrap().status.unwrap();
        PathBuf::from(st.primary.unwrap().mount_path.unwrap())
    }

    /// Waits for the project to be Ready and returns its mount path.
    pub async fn mount_path_when_ready(&self, ns: &str, name: &str) -> PathBuf {
        self.wait(
            &format!("{name} Ready"),
            Duration::from_secs(60),
            || async {
                let st = self
                    .projects(ns)
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .unwrap_or_default();
                match (st.phase, st.primary.and_then(|p| p.mount_path)) {
                    (Some(projstore_api::ProjectPhase::Ready), Some(m)) => Ok(PathBuf::from(m)),
                    (phase, _) => Err(format!("phase {phase:?}")),
                }
            },
        )
        .await
    }

    /// Waits for an Event with `reason` about object `about` in `ns`; returns its note.
    pub async fn wait_event(&self, ns: &str, reason: &str, about: &str) -> String {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), ns);
        self.wait(
            &format!("a {reason} Event about {about}"),
            Duration::from_secs(60),
            || async {
                let list = events
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .iter()
                    .find(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(about)
                    })
                    .map(|e| e.note.clone().unwrap_or_default())
                    .ok_or_else(|| "none yet".into())
            },
        )
        .await
    }
}

//! A stock `kubectl` against the test API server: the commands a user runs, with the output
//! they expect (printer columns, 422s naming the field).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::{Path, PathBuf};

use projstore_e2e::apiserver::{ApiServer, Config};

struct Kubectl {
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(server: &ApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            kubeconfig,
            _dir: dir,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo());
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("kubectl must be installed (make test installs it)");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).await.unwrap();
        }
        drop(pipe);
        let out = child.wait_with_output().await.unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None).await;
        assert!(o.ok, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
        o.stdout
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn header(out: &str) -> Vec<&str> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

#[tokio::test]
async fn the_commands_a_user_runs() {
    let server = ApiServer::start(Config::default()).await.unwrap();
    let k = Kubectl::new(&server);

    let out = k.ok(&["apply", "-f", "crds/manifests"]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/projects.projstore.io created"),
        "{out}"
    );
    let out = k.ok(&["apply", "-f", "examples/"]).await;
    assert!(
        out.contains("project.projstore.io/thesis created")
            && out.contains("storagepool.projstore.io/host-a-storage created"),
        "{out}"
    );
    let again = k.ok(&["apply", "-f", "examples/"]).await;
    assert!(
        again.contains("project.projstore.io/thesis unchanged"),
        "{again}"
    );

    // Printer columns, short names and the category.
    let projects = k.ok(&["get", "proj", "-n", "demo"]).await;
    assert_eq!(
        header(&projects),
        [
            "NAME", "PRIMARY", "REPLICAS", "USED", "QUOTA", "PHASE", "AGE"
        ]
    );
    assert!(
        projects
            .lines()
            .any(|l| l.starts_with("thesis ") && l.contains("1Gi")),
        "{projects}"
    );
    let pools = k.ok(&["get", "sp"]).await;
    assert_eq!(
        header(&pools),
        ["NAME", "NODE", "POOL", "DC", "FREE", "SIZE", "PHASE", "AGE"]
    );
    assert!(
        pools
            .lines()
            .any(|l| l.starts_with("host-c-storage") && l.contains("host-c") && l.contains("dc2")),
        "{pools}"
    );
    let replicas = k.run(&["get", "sr", "-A"], None).await;
    assert!(
        replicas.ok && replicas.stderr.contains("No resources found"),
        "{}",
        replicas.stderr
    );
    let all = k.ok(&["get", "projstore", "-A"]).await;
    assert!(
        all.contains("project.projstore.io/thesis")
            && all.contains("storagepool.projstore.io/host-a-storage"),
        "{all}"
    );
    let combined = k.ok(&["get", "proj,sp,sr", "-A"]).await;
    assert!(
        combined.contains("PRIMARY") && combined.contains("NODE"),
        "{combined}"
    );

    // describe, explain, patch, server-side apply.
    let d = k.ok(&["describe", "proj", "thesis", "-n", "demo"]).await;
    assert!(
        d.contains("Quota:") && d.contains("1Gi") && d.contains("Kind:         Project"),
        "{d}"
    );
    let e = k.ok(&["explain", "proj.spec.quota"]).await;
    assert!(e.contains("refquota"), "{e}");
    k.ok(&[
        "patch",
        "proj",
        "thesis",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"quota":"2Gi"}}"#,
    ])
    .await;
    assert_eq!(
        k.ok(&[
            "get",
            "proj",
            "thesis",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.quota}"
        ])
        .await,
        "2Gi"
    );
    let ssa = k
        .run(
            &["apply", "--server-side", "--field-manager", "gitops", "-f", "-"],
            Some("apiVersion: projstore.io/v1alpha1\nkind: Project\nmetadata: {name: ssa, namespace: demo}\nspec: {quota: 5Gi, owner: {uid: 5, gid: 5}}\n"),
        )
        .await;
    assert!(
        ssa.ok && ssa.stdout.contains("serverside-applied"),
        "{}{}",
        ssa.stdout,
        ssa.stderr
    );

    // wait --for=condition, satisfied by a status patch a moment later.
    let waiter = {
        let kubeconfig = k.kubeconfig.clone();
        tokio::spawn(async move {
            tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args([
                    "wait",
                    "--for=condition=Ready",
                    "proj/thesis",
                    "-n",
                    "demo",
                    "--timeout=20s",
                ])
                .output()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Placed","message":"3/3 copies","lastTransitionTime":"2026-11-21T00:00:00Z"}]}}"#;
    k.ok(&[
        "patch",
        "proj",
        "thesis",
        "-n",
        "demo",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        status,
    ])
    .await;
    let waited = waiter.await.unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));

    // delete.
    let del = k
        .ok(&["delete", "proj", "old-course-2019", "-n", "demo"])
        .await;
    assert!(del.contains("deleted"), "{del}");
    let gone = k
        .run(&["get", "proj", "old-course-2019", "-n", "demo"], None)
        .await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_422_naming_the_field() {
    let server = ApiServer::start(Config::default()).await.unwrap();
    server
        .register_crds(&projstore_e2e::dev::crds_dir().unwrap())
        .unwrap();
    let k = Kubectl::new(&server);
    k.ok(&["apply", "-f", "examples/00-namespace.yaml"]).await;
    let project = |spec: &str| {
        format!(
            "apiVersion: projstore.io/v1alpha1\nkind: Project\nmetadata: {{name: bad, namespace: demo}}\nspec: {spec}\n"
        )
    };
    let pool = |spec: &str| {
        format!(
            "apiVersion: projstore.io/v1alpha1\nkind: StoragePool\nmetadata: {{name: bad}}\nspec: {spec}\n"
        )
    };
    let cases = [
        (
            project("{quota: 10Gi, owner: {uid: 1, gid: 1}, copies: 6}"),
            "spec.copies",
        ),
        (
            project("{quota: 512Ki, owner: {uid: 1, gid: 1}}"),
            "spec.quota",
        ),
        (
            project("{quota: 1Gi, owner: {uid: 0, gid: 1}}"),
            "spec.owner.uid",
        ),
        (
            project(
                "{quota: 1Gi, owner: {uid: 1, gid: 1}, mounts: [{project: src, path: ../x, mountPath: m}]}",
            ),
            "spec.mounts[0].path",
        ),
        (
            project("{quota: 1Gi, owner: {uid: 1, gid: 1}, copys: 2}"),
            "copys",
        ),
        (
            pool("{nodeName: host-a, poolName: -tank, vdevs: [{path: /dev/sdb}]}"),
            "spec.poolName",
        ),
        (
            pool("{nodeName: host-a, poolName: mirror, vdevs: [{path: /dev/sdb}]}"),
            "spec.poolName",
        ),
        (
            pool("{nodeName: host-a, poolName: tank, vdevs: [{path: /var/../etc/x}]}"),
            "spec.vdevs[0].path",
        ),
    ];
    for (manifest, field) in cases {
        let out = k.run(&["apply", "-f", "-"], Some(&manifest)).await;
        assert!(!out.ok, "accepted: {manifest}");
        assert!(
            out.stderr.contains("is invalid") || out.stderr.contains("unknown field"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(field),
            "{field} not named in: {}",
            out.stderr
        );
    }
    let none = k.ok(&["get", "proj", "-n", "demo"]).await + &k.ok(&["get", "sp"]).await;
    assert!(!none.contains("bad"), "nothing invalid was stored: {none}");
}

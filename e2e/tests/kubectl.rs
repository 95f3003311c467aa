//! A stock `kubectl` against the test API server: the commands a user runs, with the output
//! they expect (printer columns, 422s naming the field).

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::path::{Path, PathBuf};

use projstore_e2e::apiserver::{ApiServer, Config};

struct Kubectl {
    bin: PathBuf,
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
        Self::with_binary(server, PathBuf::from("kubectl"))
    }

    fn with_binary(server: &ApiServer, bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            bin,
            kubeconfig,
            _dir: dir,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo());
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{} must be installed (make test installs it): {e}",
                self.bin.display()
            )
        });
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

/// Debian's kubectl 1.20 (`kubernetes-client`, unpacked by `scripts/install-deps.sh`), or None
/// when it is missing and not required.
fn kubectl_120() -> Option<PathBuf> {
    let bin = std::env::var_os("PROJSTORE_KUBECTL_120").map_or_else(
        || PathBuf::from("/var/cache/projstore/kubernetes-client/usr/bin/kubectl"),
        PathBuf::from,
    );
    if bin.is_file() {
        return Some(bin);
    }
    assert!(
        std::env::var("PROJSTORE_REQUIRE_ZFS").as_deref() != Ok("1"),
        "kubectl 1.20 is missing at {}: run scripts/install-deps.sh as root (it unpacks Debian's kubernetes-client there)",
        bin.display()
    );
    eprintln!(
        "NOT RUN: kubectl 1.20 is missing at {} (scripts/install-deps.sh unpacks it)",
        bin.display()
    );
    None
}

#[tokio::test]
async fn a_user_session_with_the_machines_kubectl() {
    let server = ApiServer::start(Config::default()).await.unwrap();
    let k = Kubectl::new(&server);
    user_session(&k, &server).await;
    // Its typed clients speak protobuf both ways, as with a real server: the request body, and
    // the answer it asked for first.
    let out = k
        .run(
            &[
                "create",
                "configmap",
                "wire",
                "-n",
                "demo",
                "--from-literal=a=1",
                "-v=8",
            ],
            None,
        )
        .await;
    assert!(
        out.ok && out.stdout.contains("configmap/wire created"),
        "{}",
        out.stderr
    );
    let (request, response) = out
        .stderr
        .split_once("\"Response\" status=\"201 Created\"")
        .unwrap_or_else(|| panic!("no response logged: {}", out.stderr));
    assert!(
        request.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{request}"
    );
    let answer_type = response
        .lines()
        .find(|l| l.trim().starts_with("Content-Type:"));
    assert_eq!(
        answer_type.map(str::trim),
        Some("Content-Type: application/vnd.kubernetes.protobuf"),
        "{response}"
    );
}

#[tokio::test]
async fn a_user_session_with_debians_kubectl_1_20() {
    let Some(bin) = kubectl_120() else { return };
    let server = ApiServer::start(Config::default()).await.unwrap();
    user_session(&Kubectl::with_binary(&server, bin), &server).await;
}

/// What a user who knows Kubernetes types: typed `create` commands (protobuf bodies), `apply
/// -f examples/`, `get` with columns, `describe`, `explain`, `get events`, `delete`.
async fn user_session(k: &Kubectl, server: &ApiServer) {
    server
        .register_crds(&projstore_e2e::dev::crds_dir().unwrap())
        .unwrap();
    let typed: [(&[&str], &str); 8] = [
        (&["create", "namespace", "demo"], "namespace/demo created"),
        (
            &[
                "create",
                "secret",
                "generic",
                "db",
                "-n",
                "demo",
                "--from-literal=password=s3cret",
            ],
            "secret/db created",
        ),
        (
            &[
                "create",
                "configmap",
                "settings",
                "-n",
                "demo",
                "--from-literal=a=1",
            ],
            "configmap/settings created",
        ),
        (
            &["create", "serviceaccount", "builder", "-n", "demo"],
            "serviceaccount/builder created",
        ),
        (
            &[
                "create",
                "role",
                "reader",
                "-n",
                "demo",
                "--verb=get,list",
                "--resource=projects",
            ],
            "role.rbac.authorization.k8s.io/reader created",
        ),
        (
            &[
                "create",
                "rolebinding",
                "builder-reads",
                "-n",
                "demo",
                "--role=reader",
                "--serviceaccount=demo:builder",
            ],
            "rolebinding.rbac.authorization.k8s.io/builder-reads created",
        ),
        (
            &[
                "create",
                "clusterrole",
                "pool-reader",
                "--verb=get",
                "--resource=storagepools",
            ],
            "clusterrole.rbac.authorization.k8s.io/pool-reader created",
        ),
        (
            &["create", "namespace", "scratch"],
            "namespace/scratch created",
        ),
    ];
    for (args, says) in typed {
        let out = k.ok(args).await;
        assert!(out.contains(says), "kubectl {args:?}: {out}");
    }
    let secret = k
        .ok(&[
            "get",
            "secret",
            "db",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await;
    assert_eq!(secret, "czNjcmV0");
    let again = k.run(&["create", "namespace", "demo"], None).await;
    assert!(
        !again.ok && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );

    let applied = k.run(&["apply", "-f", "examples/"], None).await;
    let out = applied.stdout;
    assert!(
        applied.ok
            && out.contains("project.projstore.io/thesis created")
            && out.contains("storagepool.projstore.io/host-a-storage created"),
        "{out}{}",
        applied.stderr
    );
    // The namespace made by `create namespace` is patched with the real schema's help.
    assert!(
        !applied.stderr.contains("error calculating patch"),
        "{}",
        applied.stderr
    );

    // get: the columns kubectl prints.
    let cases: [(&[&str], &[&str], &str); 7] = [
        (
            &["get", "proj", "-n", "demo"],
            &[
                "NAME", "PRIMARY", "REPLICAS", "USED", "QUOTA", "PHASE", "AGE",
            ],
            "thesis ",
        ),
        (
            &["get", "secrets", "-n", "demo"],
            &["NAME", "TYPE", "DATA", "AGE"],
            "db ",
        ),
        (
            &["get", "configmaps", "-n", "demo"],
            &["NAME", "DATA", "AGE"],
            "settings ",
        ),
        (
            &["get", "serviceaccounts", "-n", "demo"],
            &["NAME", "SECRETS", "AGE"],
            "builder ",
        ),
        (&["get", "ns"], &["NAME", "STATUS", "AGE"], "demo "),
        (
            &["get", "leases", "-n", "demo"],
            &["NAME", "HOLDER", "AGE"],
            "lock ",
        ),
        (
            &["get", "sp"],
            &["NAME", "NODE", "POOL", "DC", "FREE", "SIZE", "PHASE", "AGE"],
            "host-a-storage ",
        ),
    ];
    let lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: lock, namespace: demo}\nspec: {holderIdentity: host-a, leaseDurationSeconds: 40}\n";
    let applied = k.run(&["apply", "-f", "-"], Some(lease)).await;
    assert!(applied.ok, "{}", applied.stderr);
    for (args, columns, row) in cases {
        let out = k.ok(args).await;
        assert_eq!(header(&out), columns, "kubectl {args:?}: {out}");
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "kubectl {args:?}: {out}"
        );
    }
    let secrets = k.ok(&["get", "secrets", "-n", "demo"]).await;
    assert!(
        secrets
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..3] == ["db", "Opaque", "1"]),
        "{secrets}"
    );

    // describe, explain.
    let d = k.ok(&["describe", "proj", "thesis", "-n", "demo"]).await;
    assert!(d.contains("Quota:") && d.contains("1Gi"), "{d}");
    let d = k.ok(&["describe", "secret", "db", "-n", "demo"]).await;
    assert!(d.contains("password:  6 bytes"), "{d}");
    let e = k.ok(&["explain", "proj.spec.quota"]).await;
    assert!(e.contains("refquota"), "{e}");
    let e = k.ok(&["explain", "secret.type"]).await;
    assert!(e.contains("KIND:") && e.contains("Secret"), "{e}");

    // get events: what happened, to which object.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: thesis.placed, namespace: demo}}\n\
         involvedObject: {{apiVersion: projstore.io/v1alpha1, kind: Project, name: thesis, namespace: demo}}\n\
         reason: Placed\nmessage: placed on host-a with 3 copies\ntype: Normal\ncount: 1\n\
         firstTimestamp: {now}\nlastTimestamp: {now}\nsource: {{component: projstore-controller}}\n"
    );
    let created = k.run(&["create", "-f", "-"], Some(&event)).await;
    assert!(created.ok, "{}", created.stderr);
    let events = k.ok(&["get", "events", "-n", "demo"]).await;
    assert_eq!(
        header(&events),
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{events}"
    );
    assert!(
        events.lines().any(|l| l.contains("Normal")
            && l.contains("Placed")
            && l.contains("project/thesis")
            && l.contains("placed on host-a with 3 copies")),
        "{events}"
    );

    // delete.
    for (args, says) in [
        (
            &["delete", "secret", "db", "-n", "demo"][..],
            "secret \"db\" deleted",
        ),
        (
            &["delete", "proj", "thesis", "-n", "demo"][..],
            "project.projstore.io \"thesis\" deleted",
        ),
        (
            &["delete", "namespace", "scratch"][..],
            "namespace \"scratch\" deleted",
        ),
    ] {
        let out = k.ok(args).await;
        assert!(out.contains(says), "kubectl {args:?}: {out}");
    }
    let gone = k.run(&["get", "secret", "db", "-n", "demo"], None).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}

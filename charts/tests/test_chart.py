#!/usr/bin/env python3
"""Tests of the Helm chart (issue #8), run by `make test`.

Renders charts/projstore with Helm's own library (helm-python-sdk) for the default values and
four more value sets, lints it, validates every rendered object with kubernetes-validate
--strict for the newest Kubernetes it knows, and asserts the security properties.
"""

import filecmp
import pathlib
import re
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "projstore"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}

VALUE_SETS = {
    "default": {},
    "host-userland-zfs-fuse": {
        "agent": {"hostZfsUserland": True, "zfsBackend": "zfs-fuse", "projectsRoot": "/srv/projects"}
    },
    "monitoring-and-policies": {
        "controller": {"replicas": 3},
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
        "networkPolicy": {"enabled": True},
    },
    "single-controller": {"controller": {"replicas": 1}, "podDisruptionBudget": {"enabled": False}},
    "agent-tls-nodes": {"agent": {"tls": {"nodes": ["storage-1", "storage-2.example"]}}},
    "agent-tls-existing": {"agent": {"tls": {"existingSecret": "my-agent-certs"}}},
    "agent-tls-cert-manager": {"agent": {"tls": {"nodes": ["storage-1", "storage-2"],
                                                 "certManager": {"enabled": True}}}},
    "agent-tls-cert-manager-issuer": {"agent": {"tls": {
        "nodes": ["storage-1"],
        "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}},
    "scheduling": {
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"controller": {"repository": "registry.example/pc", "tag": "1.2.3"}},
        "agent": {
            "nodeSelector": {"storage": "zfs"},
            "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
            "priorityClassName": "storage-critical",
        },
    },
}

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def render(values):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="ps", namespace="projstore-system", is_install=True)
    objs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.append(doc)
    return objs


def find(objs, kind, suffix=""):
    return [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]


def agent_daemonsets(objs):
    return [o for o in objs if o["kind"] == "DaemonSet"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"]


def test_crds_are_the_generated_manifests():
    generated = sorted(p.name for p in (ROOT / "crds" / "manifests").glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    check(generated == in_chart, f"chart crds/ {in_chart} differ from crds/manifests {generated}")
    for name in generated:
        check(filecmp.cmp(ROOT / "crds" / "manifests" / name, CHART / "crds" / name, shallow=False),
              f"charts/projstore/crds/{name} differs from crds/manifests/{name} (run make crds)")


def test_lint_is_clean():
    for label, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace="projstore-system")
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        check(not bad, f"helm lint ({label}): {bad}")


def test_values_schema_refuses_bad_values():
    chart = helm.Chart.load(str(CHART))
    for bad in [{"controller": {"replicas": 0}}, {"agent": {"zfsBackend": "btrfs"}},
                {"agent": {"projectsRoot": "relative/path"}}, {"unknownKey": 1},
                {"backupSecretNamespaces": ["Not_A_Namespace"]}]:
        try:
            chart.validate_schema(bad)
            failures.append(f"values.schema.json accepted {bad}")
        except helm.HelmError:
            pass


def test_every_object_validates_strictly():
    version = kubernetes_validate.latest_version()
    for label, values in VALUE_SETS.items():
        for o in render(values):
            if o["apiVersion"].startswith(("monitoring.coreos.com", "cert-manager.io")):
                continue  # CRDs kubernetes-validate does not know
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except Exception as e:  # noqa: BLE001 - report any validation failure
                failures.append(f"{label}: {o['kind']}/{o['metadata']['name']} invalid for {version}: {e}")


def test_controller_is_hardened():
    for label, values in VALUE_SETS.items():
        objs = render(values)
        [dep] = find(objs, "Deployment", "-controller")
        pod = dep["spec"]["template"]["spec"]
        check(pod["securityContext"].get("runAsNonRoot") is True, f"{label}: controller runs as root")
        check(pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
              f"{label}: controller seccomp")
        for c in pod["containers"]:
            sc = c["securityContext"]
            check(sc.get("readOnlyRootFilesystem") is True, f"{label}: controller root fs writable")
            check(sc.get("allowPrivilegeEscalation") is False, f"{label}: controller may escalate")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: controller keeps capabilities")
            check("resources" in c and c["resources"].get("requests"), f"{label}: controller resources")
            check("livenessProbe" in c and "readinessProbe" in c, f"{label}: controller probes")
            check(any(a.startswith("--metrics-addr") for a in c["args"]), f"{label}: metrics port")
        check(pod.get("serviceAccountName") == "projstore-controller", f"{label}: controller SA")
        want = values.get("controller", {}).get("replicas", 2)
        check(dep["spec"]["replicas"] == want, f"{label}: controller replicas")
        pdbs = find(objs, "PodDisruptionBudget")
        pdb_on = values.get("podDisruptionBudget", {}).get("enabled", True) and want > 1
        check(bool(pdbs) == pdb_on, f"{label}: PodDisruptionBudget present={bool(pdbs)}")


def test_agent_host_access_is_narrow():
    for label, values in VALUE_SETS.items():
        objs = render(values)
        daemonsets = agent_daemonsets(objs)
        check(len(daemonsets) == max(1, len(values.get("agent", {}).get("tls", {}).get("nodes", [])))
              or "existingSecret" in values.get("agent", {}).get("tls", {}),
              f"{label}: agent DaemonSets {[d['metadata']['name'] for d in daemonsets]}")
        for ds in daemonsets:
            check_agent_pod(label, values, ds["spec"]["template"]["spec"])


def check_agent_pod(label, values, pod):
    check(not pod.get("hostPID") and not pod.get("hostIPC"), f"{label}: agent shares host PID/IPC")
    agent = values.get("agent", {})
    allowed = {"/dev/fuse", agent.get("projectsRoot", "/projects"),
               agent.get("streamsRoot", "/var/lib/projstore/streams"),
               agent.get("poolImageDir", "/var/lib/projstore/pools")}
    if agent.get("zfsBackend", "kernel") == "kernel":
        allowed.add("/dev/zfs")
    else:
        allowed.add(agent.get("zfsFuseSocketDir", "/var/run/zfs"))
    if agent.get("hostZfsUserland"):
        allowed.add(agent.get("hostZfsBinDir", "/usr/sbin"))
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    check(host_paths == allowed, f"{label}: agent hostPaths {sorted(host_paths)} != {sorted(allowed)}")
    for p in host_paths:
        check(p not in ("/", "/dev", "/etc", "/var", "/usr"), f"{label}: broad hostPath {p}")
    [c] = pod["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    check(mounts[agent.get("projectsRoot", "/projects")].get("mountPropagation") == "Bidirectional",
          f"{label}: projects root propagation")
    check(mounts["/etc/projstore/tls"].get("readOnly") is True, f"{label}: TLS files mounted writable")
    check(c["securityContext"].get("readOnlyRootFilesystem") is True, f"{label}: agent root fs writable")
    env = {e["name"]: e for e in c["env"]}
    check(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName",
          f"{label}: node name from the downward API")
    check("--node-name=$(NODE_NAME)" in c["args"], f"{label}: --node-name")
    userland = any(a.startswith("--zfs=") for a in c["args"])
    check(userland == bool(agent.get("hostZfsUserland")), f"{label}: zfs userland choice")
    for key in ("tolerations", "affinity", "priorityClassName"):
        if key in agent and not agent.get("tls", {}).get("nodes"):
            check(pod.get(key) == agent[key], f"{label}: agent {key}")
    # Helm merges maps: the default storage-host label stays, the user's is added.
    for k, v in agent.get("nodeSelector", {}).items():
        check(pod.get("nodeSelector", {}).get(k) == v, f"{label}: agent nodeSelector {k}")
    check(pod.get("serviceAccountName") == "projstore-agent", f"{label}: agent SA")


def rules_of(objs, suffix):
    [role] = find(objs, "ClusterRole", suffix)
    return role["rules"]


def test_rbac_is_least_privilege_and_explained():
    objs = render({})
    for suffix in ("-controller", "-agent"):
        for r in rules_of(objs, suffix):
            for field in ("verbs", "resources", "apiGroups"):
                check("*" not in r[field], f"{suffix}: wildcard in {field}: {r}")
    for r in rules_of(objs, "-agent"):
        if "projstore.io" in r["apiGroups"]:
            for res in ("projects", "storagepools"):
                check(not (res in r["resources"] and WRITE_VERBS & set(r["verbs"])),
                      f"agent can write {res} specs: {r}")
    # The test API server enforces the files; the chart must render exactly them.
    for component in ("controller", "agent"):
        from_file = yaml.safe_load((CHART / "files" / f"{component}-rules.yaml").read_text())
        check(rules_of(objs, f"-{component}") == from_file,
              f"the rendered {component} ClusterRole differs from files/{component}-rules.yaml")
    # Secrets are readable only where BackupTargets' Secrets live: a Role per namespace of
    # backupSecretNamespaces (the release namespace by default), never a ClusterRole.
    for suffix in ("-controller", "-agent"):
        check(not any("secrets" in r["resources"] for r in rules_of(objs, suffix)),
              f"{suffix}: the ClusterRole lets it read Secrets cluster-wide")
    secret_rules = yaml.safe_load((CHART / "files" / "backup-secrets-rules.yaml").read_text())
    check(secret_rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
          f"backup-secrets-rules.yaml grants more than get on Secrets: {secret_rules}")
    for values, namespaces in (({}, ["projstore-backup-secrets"]),
                               ({"backupSecretNamespaces": ["backup-a", "backup-b"]},
                                ["backup-a", "backup-b"])):
        rendered = render(values)
        created = find(rendered, "Namespace")
        check(sorted(n["metadata"]["name"] for n in created) == namespaces,
              f"the backup Secrets' namespaces are created: {created}")
        check(all(n["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep" for n in created),
              "the backup Secrets' namespaces outlive the release")
        roles = find(rendered, "Role", "-backup-secrets")
        check(sorted(r["metadata"]["namespace"] for r in roles) == namespaces,
              f"backup-secrets Roles in {[r['metadata']['namespace'] for r in roles]}, not {namespaces}")
        check(all(r["rules"] == secret_rules for r in roles), "a Role differs from its rules file")
        bindings = find(rendered, "RoleBinding", "-backup-secrets")
        check(sorted(b["metadata"]["namespace"] for b in bindings) == namespaces,
              "one RoleBinding per Role")
        for b in bindings:
            check(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                   "name": "ps-projstore-backup-secrets"}, f"roleRef {b['roleRef']}")
            check(sorted((x["name"], x["namespace"]) for x in b["subjects"])
                  == [("projstore-agent", "projstore-system"), ("projstore-controller", "projstore-system")],
                  f"subjects {b['subjects']}")
    check(not find(render({"createBackupSecretNamespaces": False}), "Namespace"),
          "existing namespaces are not created")
    # The release namespace holds the CA key and the nodes' TLS keys: never granted.
    try:
        render({"backupSecretNamespaces": ["projstore-system"]})
        failures.append("a Role granting Secrets in the release namespace rendered")
    except helm.HelmError as e:
        check("CA key" in str(e), f"the refusal says why: {e}")
    for name in ("controller-rules.yaml", "agent-rules.yaml", "backup-secrets-rules.yaml"):
        lines = (CHART / "files" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("- "):
                check(i > 0 and lines[i - 1].startswith("# ") and len(lines[i - 1]) > 10,
                      f"{name}:{i + 1}: a rule without a one-line comment saying why")
    check(not find(objs, "Secret", "-keys"),
          "no shared ssh key (each host makes its own host and client keys)")
    check(re.search(r"lookup", (CHART / "templates" / "agent-tls.yaml").read_text()) is not None,
          "the agents' certificates reuse what the cluster holds on upgrade")


def test_agents_get_a_certificate_per_node_from_a_ca_no_pod_mounts():
    import base64, subprocess, tempfile
    objs = render(VALUE_SETS["agent-tls-nodes"])
    [ca_sec] = find(objs, "Secret", "-agent-ca")
    check("ca.key" in ca_sec["data"], "the CA keeps its key")
    check(ca_sec["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "CA kept on uninstall")
    nodes = ("storage-1", "storage-2.example")
    secrets = {n: find(objs, "Secret", f"-agent-tls-{n}") for n in nodes}
    daemonsets = {d["metadata"]["name"]: d for d in agent_daemonsets(objs)}
    check(sorted(daemonsets) == [f"ps-projstore-agent-{n}" for n in nodes], f"one DaemonSet per node: {sorted(daemonsets)}")
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in daemonsets.values()]
    check(len(set(selectors)) == len(selectors), "the DaemonSets' selectors do not overlap")
    with tempfile.TemporaryDirectory() as d:
        for node in nodes:
            [sec] = secrets[node] or [None]
            if sec is None:
                failures.append(f"{node}: no Secret of its own")
                continue
            check(sec["type"] == "kubernetes.io/tls" and set(sec["data"]) == {"ca.crt", "tls.crt", "tls.key"},
                  f"{node}: Secret keys {sorted(sec['data'])}")
            check(sec["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", f"{node}: kept")
            # Its certificate verifies against the CA and names its node.
            ca = f"{d}/ca.crt"
            open(ca, "wb").write(base64.b64decode(ca_sec["data"]["ca.crt"]))
            crt = f"{d}/{node}.crt"
            open(crt, "wb").write(base64.b64decode(sec["data"]["tls.crt"]))
            ok = subprocess.run(["openssl", "verify", "-CAfile", ca, "-verify_hostname", node, crt],
                                capture_output=True, text=True)
            check(ok.returncode == 0, f"{node}: {ok.stdout}{ok.stderr}")
            # Its agent runs on that node alone and mounts that Secret alone: no pod mounts
            # another node's key or the CA's.
            pod = daemonsets[f"ps-projstore-agent-{node}"]["spec"]["template"]["spec"]
            mounted = {v.get("secret", {}).get("secretName") for v in pod["volumes"]} - {None}
            check(mounted == {sec["metadata"]["name"]}, f"{node}: mounts {mounted}")
            terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            check(terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}],
                  f"{node}: pinned to its node: {terms}")
            args = pod["containers"][0]["args"]
            check("--tls-dir=/etc/projstore/tls" in args, "agent reads its TLS identity")
            check(any(a.startswith("--advertise=https://") for a in args), "agents advertise https")
            check(not any("token" in a for a in args), "no shared token")
            c0 = pod["containers"][0]
            ready = c0["readinessProbe"]["httpGet"]
            check(ready.get("port") == "health" and ready.get("scheme", "HTTP") == "HTTP",
                  "readiness on the plain health port (the stream port needs a node's certificate)")
            for probe in ("startupProbe", "livenessProbe"):
                command = c0[probe].get("exec", {}).get("command", [])
                check(command[:2] == ["/usr/local/bin/projstore-agent", "alive"],
                      f"{probe}: the main loop's own mark, not a port others can crowd: {command}")
            check("--health-listen=0.0.0.0:7421" in args, "the agent serves health")

    objs = render(VALUE_SETS["agent-tls-existing"])
    check(not [o for o in objs if o["kind"] == "Secret" and "-agent-" in o["metadata"]["name"]],
          "nothing generated with existingSecret")
    [ds] = agent_daemonsets(objs)
    mounted = {v.get("secret", {}).get("secretName") for v in ds["spec"]["template"]["spec"]["volumes"]}
    check("my-agent-certs" in mounted, "the existing secret is mounted")


def test_cert_manager_issues_and_renews_the_nodes_certificates():
    objs = render(VALUE_SETS["agent-tls-cert-manager"])
    check(not [o for o in objs if o["kind"] == "Secret" and "-agent-" in o["metadata"]["name"]],
          "no Secret generated by the chart with cert-manager")
    certs = {c["metadata"]["name"]: c["spec"] for c in find(objs, "Certificate")}
    issuers = {i["metadata"]["name"]: i["spec"] for i in find(objs, "Issuer")}
    check(certs.get("ps-projstore-agent-ca", {}).get("isCA") is True, "a CA of the release's own")
    check(issuers.get("ps-projstore-agent-ca") == {"ca": {"secretName": "ps-projstore-agent-ca-cm"}},
          f"a CA issuer: {issuers}")
    for node in ("storage-1", "storage-2"):
        spec = certs.get(f"ps-projstore-agent-{node}", {})
        check(spec.get("dnsNames") == [node] and {"server auth", "client auth"} <= set(spec.get("usages", [])),
              f"{node}: certificate {spec}")
        check(spec.get("secretName") == f"ps-projstore-agent-tls-{node}", f"{node}: its own Secret")
        check(spec.get("privateKey", {}).get("rotationPolicy") == "Always", f"{node}: a new key on renewal")
        check(spec.get("issuerRef", {}).get("name") == "ps-projstore-agent-ca", f"{node}: signed by the CA")
        [ds] = [d for d in agent_daemonsets(objs) if d["metadata"]["name"] == f"ps-projstore-agent-{node}"] or [None]
        mounted = ds and {v.get("secret", {}).get("secretName") for v in ds["spec"]["template"]["spec"]["volumes"]}
        check(bool(mounted) and f"ps-projstore-agent-tls-{node}" in mounted, f"{node}: its agent mounts its Secret")
    objs = render(VALUE_SETS["agent-tls-cert-manager-issuer"])
    check(not find(objs, "Issuer"), "the given issuer is used, none made")
    [cert] = find(objs, "Certificate")
    check(cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
          f"issuerRef: {cert['spec']['issuerRef']}")
    try:
        render({"agent": {"tls": {"certManager": {"enabled": True}}}})
        failures.append("cert-manager without nodes rendered")
    except Exception as e:  # noqa: BLE001 - the chart's fail message
        check("agent.tls.nodes" in str(e), f"cert-manager without nodes: {e}")


def admit(policy, request, obj):
    """Evaluates a ValidatingAdmissionPolicy's CEL as the API server does (match conditions,
    then variables in order, then validations): None when admitted, else the message."""
    import celpy
    env = celpy.Environment()

    def run(expr, variables):
        cel_vars = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
        act = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(obj),
               "variables": cel_vars}
        return env.program(env.compile(expr)).evaluate(act)

    spec = policy["spec"]
    if not all(run(c["expression"], {}) for c in spec.get("matchConditions", [])):
        return None
    variables = {}
    for v in spec.get("variables", []):
        variables[v["name"]] = run(v["expression"], variables)
    for v in spec["validations"]:
        if not run(v["expression"], variables):
            return str(run(v["messageExpression"], variables))
    return None


def test_an_agent_writes_the_status_of_its_own_nodes_objects_only():
    objs = render({})
    [policy] = [p for p in find(objs, "ValidatingAdmissionPolicy") if p["metadata"]["name"].endswith("-own-status")]
    [binding] = [b for b in find(objs, "ValidatingAdmissionPolicyBinding")
                 if b["metadata"]["name"].endswith("-own-status")]
    check(binding["spec"]["policyName"] == policy["metadata"]["name"]
          and binding["spec"]["validationActions"] == ["Deny"], "the policy is bound to deny")
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    check(rules[0]["resources"] == ["storagepools/status", "streamreplicas/status"]
          and rules[1]["resources"] == ["leases"], f"rules: {rules}")
    agent = "system:serviceaccount:projstore-system:projstore-agent"
    claim = "authentication.kubernetes.io/node-name"

    def req(user, node, resource):
        extra = {claim: [node]} if node else {}
        return {"userInfo": {"username": user, "extra": extra},
                "resource": {"group": "projstore.io", "version": "v1alpha1", "resource": resource}}

    pool = lambda node: {"metadata": {"name": f"{node}-storage"}, "spec": {"nodeName": node}}
    replica = lambda node: {"metadata": {"name": "thesis-1"}, "spec": {"node": node}}
    lease = lambda name, holder="x": {"metadata": {"name": name}, "spec": {"holderIdentity": holder}}
    backup = "projstore-backup.alice.thesis"
    cases = [
        ("own heartbeat", req(agent, "host-a", "leases"), lease("projstore-agent-host-a"), True),
        ("a backup lease held by itself", req(agent, "host-a", "leases"), lease(backup, "host-a"), True),
        ("a backup lease released", req(agent, "host-a", "leases"), {"metadata": {"name": backup}, "spec": {}}, True),
        ("a backup lease for another node", req(agent, "host-a", "leases"), lease(backup, "host-b"), False),
        ("another lease held by itself", req(agent, "host-a", "leases"), lease("projstore-controller", "host-a"), False),
        ("another node's heartbeat", req(agent, "host-a", "leases"), lease("projstore-agent-host-b"), False),
        ("the controller's leader lease", req(agent, "host-a", "leases"), lease("projstore-controller"), False),
        ("own pool", req(agent, "host-a", "storagepools"), pool("host-a"), True),
        ("another node's pool", req(agent, "host-a", "storagepools"), pool("host-b"), False),
        ("own replica", req(agent, "host-a", "streamreplicas"), replica("host-a"), True),
        ("another node's replica", req(agent, "host-a", "streamreplicas"), replica("host-b"), False),
        ("a token without the node claim (older cluster)", req(agent, None, "storagepools"), pool("host-b"), True),
        ("the controller", req("system:serviceaccount:projstore-system:projstore-controller", "host-a",
                               "storagepools"), pool("host-b"), True),
    ]
    for what, request, obj, allowed in cases:
        message = admit(policy, request, obj)
        check((message is None) == allowed, f"{what}: admitted={message is None}, message={message}")
        if message is not None:
            check("host-a" in message and obj["metadata"]["name"] in message,
                  f"{what}: the message names the node and the object: {message}")
    objs = render({"agent": {"ownStatusPolicy": False}})
    check(not [p for p in find(objs, "ValidatingAdmissionPolicy") if p["metadata"]["name"].endswith("-own-status")],
          "the policy can be turned off")


def test_a_project_restores_only_its_own_namespaces_backups():
    objs = render({})
    [policy] = [p for p in find(objs, "ValidatingAdmissionPolicy")
                if p["metadata"]["name"] == "ps-projstore-restore-own-namespace"]
    [binding] = [b for b in find(objs, "ValidatingAdmissionPolicyBinding")
                 if b["metadata"]["name"] == "ps-projstore-restore-own-namespace"]
    check(binding["spec"]["policyName"] == policy["metadata"]["name"]
          and binding["spec"]["validationActions"] == ["Deny"], "the policy is bound to deny")
    check(policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["projects"]
          and policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"],
          "it looks at Projects created (restoreFrom is immutable; older Projects still take finalizers)")
    req = {"namespace": "alice", "userInfo": {"username": "alice"},
           "resource": {"group": "projstore.io", "version": "v1alpha1", "resource": "projects"}}
    project = lambda spec: {"metadata": {"name": "thesis", "namespace": "alice"}, "spec": spec}
    restore = lambda ns: project({"quota": "1Gi", "restoreFrom": {"target": "offsite", "namespace": ns, "name": "t"}})
    cases = [
        ("no restore", project({"quota": "1Gi"}), True),
        ("its own namespace's backup", restore("alice"), True),
        ("another namespace's backup", restore("bob"), False),
    ]
    for what, obj, allowed in cases:
        message = admit(policy, req, obj)
        check((message is None) == allowed, f"{what}: admitted={message is None}, message={message}")
        if message is not None:
            check("alice" in message and "bob" in message, f"{what}: the message names both: {message}")
    objs = render({"restoreOwnNamespacePolicy": False})
    check(not [p for p in find(objs, "ValidatingAdmissionPolicy") if "restore" in p["metadata"]["name"]],
          "the policy can be turned off")


def test_optional_objects_follow_values():
    objs = render(VALUE_SETS["monitoring-and-policies"])
    check(len(find(objs, "ServiceMonitor")) == 1, "ServiceMonitor when enabled")
    check(len(find(objs, "NetworkPolicy")) >= 1, "NetworkPolicy when enabled")
    objs = render({})
    check(not find(objs, "ServiceMonitor") and not find(objs, "NetworkPolicy"), "off by default")
    check(len(find(objs, "Service")) == 2, "metrics Services for controller and agent")


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    for t in tests:
        before = len(failures)
        t()
        print(f"{'ok  ' if len(failures) == before else 'FAIL'} {t.__name__}")
    for f in failures:
        print("  -", f)
    print(f"chart tests: {len(tests)} run, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""One Helm action on the chart, done by Helm's own library (helm-python-sdk, no helm binary)
against the cluster of a kubeconfig; e2e/tests/helm_chart.rs drives it against the test API
server, and the dev cluster (`projstore-dev up`) installs the chart with it (`ensure`: install,
or upgrade a release that is already there).

    helm_release.py KUBECONFIG install|upgrade|ensure|uninstall|status [VALUES_JSON]

Prints the release (without its manifest) as JSON; on failure prints Helm's error on stderr
and exits 1.
"""

import json
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parent.parent / "projstore"
RELEASE, NAMESPACE = "ps", "projstore-system"


def main(argv):
    if len(argv) not in (3, 4) or argv[2] not in ("install", "upgrade", "ensure", "uninstall",
                                                "status"):
        print(__doc__, file=sys.stderr)
        return 2
    kubeconfig, action = argv[1], argv[2]
    values = json.loads(argv[3]) if len(argv) == 4 else {}
    cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)
    try:
        if action == "ensure":
            try:
                cfg.status(RELEASE)
                action = "upgrade"
            except helm.HelmError:
                action = "install"
        if action == "install":
            release = cfg.install(str(CHART), RELEASE, values, namespace=NAMESPACE,
                                  create_namespace=True, timeout=60)
        elif action == "upgrade":
            release = cfg.upgrade(str(CHART), RELEASE, values, namespace=NAMESPACE, timeout=60)
        elif action == "uninstall":
            release = cfg.uninstall(RELEASE, timeout=60)
        else:
            release = cfg.status(RELEASE)
    except helm.HelmError as e:
        print(f"helm {action} failed: {e}", file=sys.stderr)
        return 1
    for r in (release, release.get("release")):
        if isinstance(r, dict):
            r.pop("manifest", None)
    print(json.dumps(release))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

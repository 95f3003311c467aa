# projstore — the commands. `make demo` runs the main job on one machine; `make test` runs
# every test. See README.md.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

# Tests that need root, ZFS or FUSE fail instead of skipping when this is 1 (always in CI).
ifdef CI
export PROJSTORE_REQUIRE_ZFS := 1
# A CI build is built once: incremental state would only take disk.
export CARGO_INCREMENTAL := 0
endif

.PHONY: test deps zfs fmt-check clippy cargo-test manifests-check chart-test rbac-report crds bench bench-garage demo demo-down

## make test: install what is missing, start zfs-fuse if needed, then every check and test.
test: deps zfs fmt-check clippy cargo-test rbac-report manifests-check chart-test

deps:
	@bash scripts/install-deps.sh

zfs:
	@bash scripts/start-zfs.sh || { [ "$${PROJSTORE_REQUIRE_ZFS:-}" != 1 ] && echo "make: no ZFS: tests that need it will skip"; }

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --workspace

## The committed CRD manifests are valid apiextensions.k8s.io/v1 objects (and in sync: a cargo test).
manifests-check:
	kubernetes-validate --strict --quiet crds/manifests/*.yaml examples/00-namespace.yaml

## After the scenarios: every RBAC rule of the chart was needed by some scenario.
rbac-report:
	$(CARGO) test -p projstore-e2e --test rbac_report -- --ignored --nocapture

## The Helm chart: rendered with Helm's library, linted, validated, security asserted.
chart-test:
	python3 charts/tests/test_chart.py

## make crds: regenerate crds/manifests from the types.
crds:
	$(CARGO) run -q -p projstore-api --bin crdgen -- crds/manifests
	cp crds/manifests/*.yaml charts/projstore/crds/

## make bench: the speed targets of the issues, each printed with how it was measured.
bench:
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench --workspace

## make bench-garage: the backup bench against Garage as well (builds it once; not in make bench).
bench-garage:
	bash scripts/bench-garage.sh

## make demo: build, start the dev cluster, apply examples/ and walk through it (it keeps running).
DEMO_DIR ?= /var/lib/projstore-demo
demo: deps zfs
	$(CARGO) build --workspace
	target/debug/projstore-demo --state-dir $(DEMO_DIR)

## make demo-down: stop the demo's dev cluster and remove its pools, mounts and files.
demo-down:
	$(CARGO) build -q -p projstore-e2e --bin projstore-dev
	target/debug/projstore-dev down --state-dir $(DEMO_DIR)

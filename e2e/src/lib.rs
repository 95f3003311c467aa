//! projstore end-to-end support: the Kubernetes test API server ([`apiserver`]) and the dev
//! cluster (`projstore-dev`), the demo tour ([`demo`]), and the cluster set-up every crate's
//! tests share ([`testkit`]).
//!
//! Where things live:
//! - `apiserver/`: `mod.rs` starts and persists the server; `http/` serves requests
//!   (`authz` who may do what, `discovery`, `rest` the verbs on objects, `watch`); `store/`
//!   holds the objects (`write`, `delete`); `registry` the kinds, `patch` merge, JSON and
//!   apply patches, `select` label and field selectors, `table` `kubectl get` columns,
//!   `openapi`, `status` errors as Kubernetes words them.
//! - `dev/`: the hosts' layout and the `projstore-dev` commands; `dev/supervisor.rs` the
//!   background process that runs the cluster.
//! - `demo/`: the tour's harness; `demo/tour.rs` its steps.
//! - `rbac`: rule uses and denials recorded (and the chart's rule files enforced); `pki` certificates; `limits`
//!   file descriptors.
//! - The scenarios are `tests/*.rs`, one file per behaviour, on the harness in
//!   `tests/common/`.

pub mod apiserver;
pub mod demo;
pub mod dev;
pub mod limits;
pub mod pki;
pub mod rbac;
pub mod s3;
pub mod testkit;

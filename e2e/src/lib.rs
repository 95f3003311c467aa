//! projstore end-to-end support: the Kubernetes test API server ([`apiserver`]) and the dev
//! cluster (`projstore-dev`), the demo tour ([`demo`]), and the cluster set-up every crate's
//! tests share ([`testkit`]).

pub mod apiserver;
pub mod demo;
pub mod dev;
pub mod limits;
pub mod pki;
pub mod rbac;
pub mod testkit;

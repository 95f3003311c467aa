//! projstore end-to-end support: the Kubernetes test API server ([`apiserver`]) and the dev
//! cluster (`projstore-dev`), and the demo tour ([`demo`]).

pub mod apiserver;
pub mod demo;
pub mod dev;
pub mod limits;
pub mod pki;
pub mod rbac;

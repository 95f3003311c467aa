//! projstore controller: placement, StreamReplicas, failover, moves, close/open, deletion.
//!
//! Decisions are pure ([`placement`], [`reconcile::decide`], [`reconcile::pool`]); the
//! runtime ([`run`]) watches, applies them ([`reconcile::apply`], sharing a [`context::Context`]),
//! elects a leader and serves metrics.

pub mod context;
pub mod metrics;
pub mod placement;
pub mod reconcile;
pub mod run;
pub mod view;

//! projstore controller: placement, StreamReplicas, failover, moves, close/open, deletion.

pub mod placement;

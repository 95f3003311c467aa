//! Streams: the store on disk, the chain planner and garbage collector, and compaction.

pub mod compaction;
pub mod manifest;
pub mod plan;
pub mod store;

pub use manifest::{Manifest, PlanOutput, ProjectKey, SnapshotJson, StreamId, parse_plan_input};
pub use plan::{Edge, Plan, PlanError, ReplicaPlan, Snap, plan, plan_for_replica};
pub use store::{StoreError, StoredStream, StreamMeta, StreamStore, StreamWriter};

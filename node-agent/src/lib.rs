//! projstore node agent: the storage engine of one host.
//!
//! - [`zfs`]: typed ZFS operations over the `zfs`/`zpool` tools, capability detection, names.
//! - [`streams`]: the stream store (DESIGN §4), the chain planner and GC (§5.3), compaction.
//! - [`retention`]: which snapshots to keep (§5.2) and the snapshot space guard.
//! - [`transfer`]: moving streams between ZFS and the store, verified before any receive.

pub mod backup;
pub mod beneath;
pub mod cli;
pub mod fetch;
pub mod layout;
pub mod live;
pub mod metrics;
pub mod mounts;
pub mod ownership;
pub mod retention;
pub mod runtime;
pub mod sanity;
pub mod server;
pub mod sftp;
pub mod streams;
pub mod tls;
pub mod transfer;
pub mod zfs;

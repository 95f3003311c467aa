//! projstore API types: the `Project`, `StoragePool`, `StreamReplica` and `BackupTarget` custom resources of
//! `projstore.io/v1alpha1`, the rules their schemas enforce, and the generated CRDs.

pub mod backup_target;
pub mod contract;
pub mod crd;
#[cfg(feature = "lease")]
pub mod lease;
pub mod names;
#[cfg(feature = "process")]
pub mod process;
pub mod project;
#[cfg(feature = "s3")]
pub mod s3;
mod schema;
pub mod storage_pool;
pub mod stream_replica;
pub mod units;
#[cfg(feature = "validate")]
pub mod validate;

pub use backup_target::*;
pub use contract::{
    BACKUP_NOW_ANNOTATION, CLEANUP_FINALIZER, MOUNT_SOURCES_ANNOTATION, MountSource, MountSources,
    NODE_LABEL, PROJECT_LABEL, REPAIR_OWNERSHIP_ANNOTATION, SNAPSHOT_NOW_ANNOTATION,
    VERIFY_BACKUP_NOW_ANNOTATION,
};
pub use project::*;
pub use storage_pool::*;
pub use stream_replica::*;

/// API group of every projstore kind.
pub const GROUP: &str = "projstore.io";
/// API version of every projstore kind.
pub const VERSION: &str = "v1alpha1";

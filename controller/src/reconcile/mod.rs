//! Reconcilers: pure decisions (`decide`, `pool`) and the code that applies them (`apply`).

pub mod apply;
pub mod decide;
pub mod pool;
pub mod target;

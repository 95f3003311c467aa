//! When the primary should write a fresh full or a larger incremental stream so that a long
//! or fragmented chain becomes superseded (DESIGN §5.3). Pure.

use super::plan::Edge;

/// Thresholds of the compaction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A chain longer than this is compacted.
    pub max_chain: usize,
    /// An incremental smaller than this is "tiny".
    pub tiny_bytes: u64,
    /// This many tiny increments at the end of the chain are merged into one.
    pub tiny_run: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            max_chain: 30,
            tiny_bytes: 64 * 1024,
            tiny_run: 8,
        }
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// The chain is fine.
    Nothing,
    /// A full stream of the target.
    Full { reason: String },
    /// One incremental stream from snapshot `from_guid` (still on the primary) to the target.
    Incremental { from_guid: u64, reason: String },
}

/// Decides for `chain` (oldest first, as planned), given which snapshots still exist on the
/// primary (`present(guid)`): an incremental can only start at a snapshot the primary has.
pub fn decide(
    chain: &[Edge],
    present: impl Fn(u64) -> bool,
    policy: &CompactionPolicy,
) -> Compaction {
    let n = chain.len();
    if n <= 1 {
        return Compaction::Nothing;
    }
    let tiny = chain
        .iter()
        .rev()
        .take_while(|e| e.from.is_some() && e.bytes < policy.tiny_bytes)
        .count();
    if tiny >= policy.tiny_run
        && let Some(base) = chain[n - tiny].from.as_ref().filter(|b| present(b.guid))
    {
        return Compaction::Incremental {
            from_guid: base.guid,
            reason: format!("{tiny} tiny increments at the end of the chain"),
        };
    }
    if n > policy.max_chain {
        let reason = format!("chain of {n} streams is longer than {}", policy.max_chain);
        // The earliest snapshot still present gives the shortest new chain.
        return match chain[..n - 1].iter().position(|e| present(e.to.guid)) {
            Some(i) if i + 2 < n => Compaction::Incremental {
                from_guid: chain[i].to.guid,
                reason,
            },
            _ => Compaction::Full { reason },
        };
    }
    Compaction::Nothing
}

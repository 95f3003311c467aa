//! Where a project's copies go (DESIGN §5.1): weighted rendezvous hashing of (project, pool)
//! with weight = usable free space, spread across datacenters then zones, never two copies on
//! one node. Pure: plain data in, a decision (or the reasons there is none) out.

use std::collections::BTreeSet;

/// What placement knows of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub datacenter: String,
    pub ready: bool,
    pub schedulable: bool,
    pub experimental: bool,
    /// Whether the project's `poolSelector` matches the pool's labels.
    pub selected: bool,
    pub free_bytes: u64,
    /// Free space kept out of placement (`reservedPercent` of the pool size).
    pub reserved_bytes: u64,
}

impl PoolInfo {
    pub fn usable(&self) -> u64 {
        self.free_bytes.saturating_sub(self.reserved_bytes)
    }
}

/// Spread preference (the Project's `placement.spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    Datacenter,
    Zone,
    None,
}

/// What placement needs of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `<namespace>/<name>`: the hash key.
    pub project: &'a str,
    pub copies: usize,
    pub quota_bytes: u64,
    pub pinned: Option<&'a str>,
    pub spread: Spread,
    pub tolerate_experimental: bool,
    /// Pools that hold a copy now and keep it (never moved by placement).
    pub existing: &'a [String],
}

/// The chosen pools, the primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub pools: Vec<String>,
    /// Why fewer than `copies` pools were found (empty when all were).
    pub shortfall: Vec<String>,
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser): the same on every build and
/// host, so every controller replica computes the same placement.
fn hash(project: &str, pool: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in project
        .bytes()
        .chain(std::iter::once(0))
        .chain(pool.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` in (0, 1) from the hash. Higher wins; a
/// pool's chance of winning is proportional to its weight.
pub fn score(project: &str, pool: &str, weight: u64) -> f64 {
    let u = ((hash(project, pool) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / u.ln()
}

/// Chooses pools for `req`. Existing copies stay; missing copies are chosen among eligible
/// pools, preferring new datacenters (then zones) as `spread` asks, by rendezvous score.
pub fn place(req: &Request<'_>, pools: &[PoolInfo]) -> Placement {
    let mut chosen: Vec<&PoolInfo> = Vec::new();
    for name in req.existing {
        if let Some(p) = pools.iter().find(|p| &p.name == name)
            && !chosen.iter().any(|c| c.node == p.node)
        {
            chosen.push(p);
        }
    }
    let mut reasons = Vec::new();
    // The pinned pool is the primary; it must be eligible unless it already holds a copy.
    if let Some(pin) = req.pinned
        && !chosen.iter().any(|c| c.name == pin)
    {
        match pools.iter().find(|p| p.name == pin) {
            None => reasons.push(format!("pinned pool {pin} does not exist")),
            Some(p) => match ineligible(p, req, true) {
                Some(why) => reasons.push(format!("pinned pool {pin}: {why}")),
                None if chosen.iter().any(|c| c.node == p.node) => reasons.push(format!(
                    "pinned pool {pin} is on node {} which already holds a copy",
                    p.node
                )),
                None => chosen.insert(0, p),
            },
        }
    }
    let mut excluded: Vec<(String, String)> = Vec::new();
    let eligible: Vec<&PoolInfo> = pools
        .iter()
        .filter(|p| match ineligible(p, req, false) {
            Some(why) => {
                excluded.push((p.name.clone(), why));
                false
            }
            None => true,
        })
        .collect();
    while chosen.len() < req.copies {
        let nodes: BTreeSet<&str> = chosen.iter().map(|c| c.node.as_str()).collect();
        let dcs: BTreeSet<&str> = chosen.iter().map(|c| c.datacenter.as_str()).collect();
        let zones: BTreeSet<&str> = chosen.iter().map(|c| c.zone.as_str()).collect();
        let open: Vec<&&PoolInfo> = eligible
            .iter()
            .filter(|p| !nodes.contains(p.node.as_str()))
            .collect();
        // Tier 0: what `spread` asks for; tier 1: at least a new zone; tier 2: any new node.
        let in_tier = |tier: usize, p: &PoolInfo| match (tier, req.spread) {
            (0, Spread::Datacenter) => !dcs.contains(p.datacenter.as_str()),
            (0, Spread::Zone) | (1, Spread::Datacenter | Spread::Zone) => {
                !zones.contains(p.zone.as_str())
            }
            _ => true,
        };
        let pick = (0..3).find_map(|tier| {
            open.iter()
                .filter(|p| in_tier(tier, p))
                .max_by(|a, b| {
                    score(req.project, &a.name, a.usable())
                        .total_cmp(&score(req.project, &b.name, b.usable()))
                        .then_with(|| b.name.cmp(&a.name))
                })
                .copied()
        });
        match pick {
            Some(p) => chosen.push(p),
            None => break,
        }
    }
    let mut shortfall = Vec::new();
    if chosen.len() < req.copies {
        shortfall.push(format!(
            "only {} of {} copies can be placed",
            chosen.len(),
            req.copies
        ));
        shortfall.extend(reasons);
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for (_, why) in &excluded {
            *counts.entry(why.as_str()).or_default() += 1;
        }
        for (why, n) in counts {
            shortfall.push(format!("{n} pool(s) {why}"));
        }
        let used_nodes = eligible
            .iter()
            .filter(|p| chosen.iter().any(|c| c.node == p.node && c.name != p.name))
            .count();
        if used_nodes > 0 {
            shortfall.push(format!(
                "{used_nodes} pool(s) on a node that already holds a copy"
            ));
        }
    } else {
        shortfall.extend(reasons);
    }
    Placement {
        pools: chosen.iter().map(|p| p.name.clone()).collect(),
        shortfall,
    }
}

fn ineligible(p: &PoolInfo, req: &Request<'_>, pinned: bool) -> Option<String> {
    if !p.ready {
        return Some("not Ready".into());
    }
    if !p.schedulable {
        return Some("not schedulable".into());
    }
    if p.experimental && !req.tolerate_experimental && !pinned {
        return Some("experimental (not tolerated)".into());
    }
    if !p.selected && !pinned {
        return Some("not matching poolSelector".into());
    }
    if p.usable() < req.quota_bytes {
        return Some(format!(
            "lacking free space for the quota ({} bytes usable, {} needed)",
            p.usable(),
            req.quota_bytes
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        // Pinned values: a change here moves every project in every cluster.
        assert_eq!(
            hash("alice/thesis", "host-a-storage"),
            hash("alice/thesis", "host-a-storage")
        );
        assert_ne!(
            hash("alice/thesis", "host-a-storage"),
            hash("alice/thesis", "host-b-storage")
        );
        assert_ne!(
            hash("a/bc", "d"),
            hash("a/b", "cd"),
            "the separator matters"
        );
    }
}

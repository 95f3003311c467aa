//! Where a project's copies go (DESIGN §5.1): weighted rendezvous hashing of (project, pool)
//! with weight = usable free space, spread across datacenters then zones, never two copies on
//! one node. Pure: plain data in, a decision (or the reasons there is none) out.

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

/// FNV-1a: a stable string hash, the same on every build and host.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: spreads the bits of a combined key.
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The rendezvous hash of (project, pool) from the two string hashes.
fn pair(project: u64, pool: u64) -> u64 {
    mix(project ^ pool.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// ln(u) for u in (0, 1]: u = m·2^e with m in [1, 2), ln m = 2·atanh((m-1)/(m+1)) by its
/// series to t^7 (error below 2e-5). Several times cheaper than the libm call on the hot path,
/// and exact enough to rank pools.
fn ln_unit(u: f64) -> f64 {
    let bits = u.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    e as f64 * std::f64::consts::LN_2
        + 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 / 7.0)))
}

fn weighted(h: u64, weight: u64) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(1) as f64) / ln_unit(u)
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` in (0, 1) from the hash. Higher wins; a
/// pool's chance of winning is proportional to its weight.
pub fn score(project: &str, pool: &str, weight: u64) -> f64 {
    weighted(pair(fnv(project), fnv(pool)), weight)
}

/// Why a pool cannot take a new copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unfit {
    NotReady,
    NotSchedulable,
    Experimental,
    NotSelected,
    NoSpace,
}

impl Unfit {
    fn describe(self, req: &Request<'_>) -> String {
        match self {
            Self::NotReady => "not Ready".into(),
            Self::NotSchedulable => "not schedulable".into(),
            Self::Experimental => "experimental (not tolerated)".into(),
            Self::NotSelected => "not matching poolSelector".into(),
            Self::NoSpace => format!(
                "lacking free space for the quota ({} bytes needed)",
                req.quota_bytes
            ),
        }
    }
}

fn unfit(p: &PoolInfo, req: &Request<'_>, pinned: bool) -> Option<Unfit> {
    if !p.ready {
        Some(Unfit::NotReady)
    } else if !p.schedulable {
        Some(Unfit::NotSchedulable)
    } else if p.experimental && !req.tolerate_experimental && !pinned {
        Some(Unfit::Experimental)
    } else if !p.selected && !pinned {
        Some(Unfit::NotSelected)
    } else if p.usable() < req.quota_bytes {
        Some(Unfit::NoSpace)
    } else {
        None
    }
}

/// Pools prepared for many placements: names hashed once, nodes, zones and datacenters
/// numbered so the spread checks compare integers.
pub struct Fleet<'a> {
    pools: &'a [PoolInfo],
    hashes: Vec<u64>,
    /// (node, zone, datacenter) ids per pool.
    domains: Vec<(u32, u32, u32)>,
}

fn intern<'s>(ids: &mut std::collections::HashMap<&'s str, u32>, s: &'s str) -> u32 {
    let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    *ids.entry(s).or_insert(next)
}

impl<'a> Fleet<'a> {
    pub fn new(pools: &'a [PoolInfo]) -> Self {
        let (mut nodes, mut zones, mut dcs) = Default::default();
        let domains = pools
            .iter()
            .map(|p| {
                (
                    intern(&mut nodes, &p.node),
                    intern(&mut zones, &p.zone),
                    intern(&mut dcs, &p.datacenter),
                )
            })
            .collect();
        Self {
            pools,
            hashes: pools.iter().map(|p| fnv(&p.name)).collect(),
            domains,
        }
    }

    /// Chooses pools for `req`. Existing copies stay; missing copies are chosen among eligible
    /// pools, preferring new datacenters (then zones) as `spread` asks, by rendezvous score.
    pub fn place(&self, req: &Request<'_>) -> Placement {
        let pools = self.pools;
        let mut chosen: Vec<usize> = Vec::with_capacity(req.copies);
        for name in req.existing {
            if let Some(i) = pools.iter().position(|p| &p.name == name)
                && !chosen.iter().any(|&c| pools[c].node == pools[i].node)
            {
                chosen.push(i);
            }
        }
        let mut reasons = Vec::new();
        // The pinned pool is the primary; it must be eligible unless it already holds a copy.
        if let Some(pin) = req.pinned
            && !chosen.iter().any(|&c| pools[c].name == pin)
        {
            match pools.iter().position(|p| p.name == pin) {
                None => reasons.push(format!("pinned pool {pin} does not exist")),
                Some(i) => match unfit(&pools[i], req, true) {
                    Some(why) => reasons.push(format!("pinned pool {pin}: {}", why.describe(req))),
                    None if chosen.iter().any(|&c| pools[c].node == pools[i].node) => {
                        reasons.push(format!(
                            "pinned pool {pin} is on node {} which already holds a copy",
                            pools[i].node
                        ))
                    }
                    None => chosen.insert(0, i),
                },
            }
        }
        let project = fnv(req.project);
        let mut unfit_counts = [0usize; 5];
        // (score, index) of every eligible pool, computed once.
        let mut eligible: Vec<(f64, usize)> = Vec::with_capacity(pools.len());
        for (i, p) in pools.iter().enumerate() {
            match unfit(p, req, false) {
                Some(why) => unfit_counts[why as usize] += 1,
                None => eligible.push((weighted(pair(project, self.hashes[i]), p.usable()), i)),
            }
        }
        // Picks look at the best-scored pools first: a shortlist found in linear time; the
        // full list is the fallback when spread or node constraints exclude all of those.
        const SHORTLIST: usize = 48;
        let mut shortlist = eligible.clone();
        if shortlist.len() > SHORTLIST {
            shortlist.select_nth_unstable_by(SHORTLIST, |a, b| b.0.total_cmp(&a.0));
            shortlist.truncate(SHORTLIST);
        }
        let d = &self.domains;
        while chosen.len() < req.copies {
            let taken = |i: usize| chosen.iter().any(|&c| d[c].0 == d[i].0);
            let new_dc = |i: usize| chosen.iter().all(|&c| d[c].2 != d[i].2);
            let new_zone = |i: usize| chosen.iter().all(|&c| d[c].1 != d[i].1);
            // Tier 0: what `spread` asks for; tier 1: at least a new zone; tier 2: any new node.
            let in_tier = |tier: usize, i: usize| match (tier, req.spread) {
                (0, Spread::Datacenter) => new_dc(i),
                (0, Spread::Zone) | (1, Spread::Datacenter | Spread::Zone) => new_zone(i),
                _ => true,
            };
            let best = |list: &[(f64, usize)], tier: usize| {
                list.iter()
                    .filter(|(_, i)| !taken(*i) && in_tier(tier, *i))
                    .max_by(|a, b| {
                        a.0.total_cmp(&b.0)
                            .then_with(|| pools[b.1].name.cmp(&pools[a.1].name))
                    })
                    .map(|(_, i)| *i)
            };
            // A tier's best pool is in the shortlist if any shortlisted pool is in that tier.
            let pick =
                (0..3).find_map(|tier| best(&shortlist, tier).or_else(|| best(&eligible, tier)));
            match pick {
                Some(i) => chosen.push(i),
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
            for why in [
                Unfit::NotReady,
                Unfit::NotSchedulable,
                Unfit::Experimental,
                Unfit::NotSelected,
                Unfit::NoSpace,
            ] {
                let n = unfit_counts[why as usize];
                if n > 0 {
                    shortfall.push(format!("{n} pool(s) {}", why.describe(req)));
                }
            }
            let same_node = eligible
                .iter()
                .filter(|(_, i)| {
                    !chosen.contains(i) && chosen.iter().any(|&c| pools[c].node == pools[*i].node)
                })
                .count();
            if same_node > 0 {
                shortfall.push(format!(
                    "{same_node} pool(s) on a node that already holds a copy"
                ));
            }
        } else {
            shortfall.extend(reasons);
        }
        Placement {
            pools: chosen.iter().map(|&i| pools[i].name.clone()).collect(),
            shortfall,
        }
    }
}

/// [`Fleet::place`] for a single placement.
pub fn place(req: &Request<'_>, pools: &[PoolInfo]) -> Placement {
    Fleet::new(pools).place(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        // A change here would move every project in every cluster: the values are pinned.
        assert_eq!(fnv(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
        let (p, a, b) = (
            fnv("alice/thesis"),
            fnv("host-a-storage"),
            fnv("host-b-storage"),
        );
        assert_eq!(pair(p, a), pair(p, a));
        assert_ne!(pair(p, a), pair(p, b));
    }

    #[test]
    fn the_fast_logarithm_is_close_to_libm() {
        let mut u = 1e-12_f64;
        while u < 1.0 {
            let (fast, exact) = (ln_unit(u), u.ln());
            assert!(
                (fast - exact).abs() <= 2e-5 * exact.abs().max(1e-3),
                "u={u}: {fast} vs {exact}"
            );
            u *= 1.37;
        }
    }
}

//! Placement (DESIGN §5.1) as a specification.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::{BTreeMap, BTreeSet};

use projstore_controller::placement::{PoolInfo, Request, Spread, place};
use proptest::prelude::*;

const GI: u64 = 1 << 30;

fn pool(name: &str, node: &str, dc: &str, zone: &str, free_gi: u64) -> PoolInfo {
    PoolInfo {
        name: name.into(),
        node: node.into(),
        zone: zone.into(),
        datacenter: dc.into(),
        ready: true,
        schedulable: true,
        experimental: false,
        selected: true,
        free_bytes: free_gi * GI,
        reserved_bytes: 0,
    }
}

fn fleet() -> Vec<PoolInfo> {
    vec![
        pool("a1", "na1", "dc1", "z1", 100),
        pool("a2", "na2", "dc1", "z1", 100),
        pool("a3", "na3", "dc1", "z2", 100),
        pool("b1", "nb1", "dc2", "z3", 100),
        pool("b2", "nb2", "dc2", "z4", 100),
        pool("c1", "nc1", "dc3", "z5", 100),
    ]
}

fn req<'a>(project: &'a str, copies: usize, existing: &'a [String]) -> Request<'a> {
    Request {
        project,
        copies,
        quota_bytes: GI,
        pinned: None,
        spread: Spread::Datacenter,
        tolerate_experimental: false,
        existing,
    }
}

fn dc_of<'a>(pools: &'a [PoolInfo], name: &str) -> &'a str {
    &pools.iter().find(|p| p.name == name).unwrap().datacenter
}

#[test]
fn copies_spread_across_datacenters_first() {
    let pools = fleet();
    for i in 0..50 {
        let name = format!("ns/p{i}");
        let p = place(&req(&name, 3, &[]), &pools);
        assert_eq!(p.pools.len(), 3);
        let dcs: BTreeSet<&str> = p.pools.iter().map(|n| dc_of(&pools, n)).collect();
        assert_eq!(dcs.len(), 3, "{name}: {:?}", p.pools);
        assert!(p.shortfall.is_empty());
    }
}

#[test]
fn then_zones_when_datacenters_run_out() {
    let pools: Vec<PoolInfo> = fleet()
        .into_iter()
        .filter(|p| p.datacenter == "dc1")
        .collect();
    for i in 0..30 {
        let name = format!("ns/p{i}");
        let p = place(&req(&name, 2, &[]), &pools);
        let zones: BTreeSet<&str> = p
            .pools
            .iter()
            .map(|n| pools.iter().find(|x| &x.name == n).unwrap().zone.as_str())
            .collect();
        assert_eq!(zones.len(), 2, "{:?}", p.pools);
    }
}

#[test]
fn spread_zone_prefers_distinct_zones_over_datacenters() {
    let pools = fleet();
    let mut r = req("ns/z", 3, &[]);
    r.spread = Spread::Zone;
    let p = place(&r, &pools);
    let zones: BTreeSet<&str> = p
        .pools
        .iter()
        .map(|n| pools.iter().find(|x| &x.name == n).unwrap().zone.as_str())
        .collect();
    assert_eq!(zones.len(), 3);
}

#[test]
fn capacity_and_reserve_are_respected() {
    let mut pools = fleet();
    pools[3].free_bytes = 5 * GI; // b1: too small for 10Gi
    pools[4].free_bytes = 20 * GI;
    pools[4].reserved_bytes = 15 * GI; // b2: 5Gi usable
    let mut r = req("ns/big", 3, &[]);
    r.quota_bytes = 10 * GI;
    let p = place(&r, &pools);
    assert!(
        !p.pools.contains(&"b1".to_owned()) && !p.pools.contains(&"b2".to_owned()),
        "{:?}",
        p.pools
    );
    assert_eq!(p.pools.len(), 3);
}

#[test]
fn experimental_pools_only_when_tolerated_or_pinned() {
    let mut pools = fleet();
    for p in pools.iter_mut().filter(|p| p.datacenter != "dc3") {
        p.experimental = true;
    }
    let p = place(&req("ns/x", 3, &[]), &pools);
    assert_eq!(p.pools, ["c1"], "only the non-experimental pool");
    assert!(
        p.shortfall.iter().any(|s| s.contains("experimental")),
        "{:?}",
        p.shortfall
    );
    let mut tolerant = req("ns/x", 3, &[]);
    tolerant.tolerate_experimental = true;
    assert_eq!(place(&tolerant, &pools).pools.len(), 3);
    let mut pinned = req("ns/x", 1, &[]);
    pinned.pinned = Some("a2");
    assert_eq!(place(&pinned, &pools).pools, ["a2"]);
}

#[test]
fn selectors_limit_the_candidates() {
    let mut pools = fleet();
    for p in pools.iter_mut() {
        p.selected = p.name.starts_with('a');
    }
    let p = place(&req("ns/s", 3, &[]), &pools);
    assert!(p.pools.iter().all(|n| n.starts_with('a')), "{:?}", p.pools);
}

#[test]
fn the_pinned_pool_is_the_primary() {
    let pools = fleet();
    let mut r = req("ns/pin", 3, &[]);
    r.pinned = Some("b2");
    let p = place(&r, &pools);
    assert_eq!(p.pools[0], "b2");
    assert_eq!(p.pools.len(), 3);
    let mut gone = req("ns/pin", 3, &[]);
    gone.pinned = Some("nope");
    assert!(
        place(&gone, &pools)
            .shortfall
            .iter()
            .any(|s| s.contains("pinned pool nope does not exist"))
    );
}

#[test]
fn never_two_copies_on_one_node() {
    let pools = vec![
        pool("x1", "n1", "dc1", "z1", 100),
        pool("x2", "n1", "dc2", "z2", 100),
        pool("y", "n2", "dc1", "z1", 100),
    ];
    let p = place(&req("ns/n", 3, &[]), &pools);
    assert_eq!(p.pools.len(), 2);
    let nodes: BTreeSet<&str> = p
        .pools
        .iter()
        .map(|n| pools.iter().find(|x| &x.name == n).unwrap().node.as_str())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert!(
        p.shortfall
            .iter()
            .any(|s| s.contains("already holds a copy")),
        "{:?}",
        p.shortfall
    );
}

#[test]
fn impossible_placements_say_which_constraint_failed() {
    let mut pools = fleet();
    pools[0].ready = false;
    pools[1].schedulable = false;
    pools[2].experimental = true;
    pools[3].selected = false;
    pools[4].free_bytes = 0;
    pools[5].free_bytes = 0;
    let p = place(&req("ns/none", 3, &[]), &pools);
    assert!(p.pools.is_empty());
    let text = p.shortfall.join("; ");
    for want in [
        "only 0 of 3",
        "not Ready",
        "not schedulable",
        "experimental",
        "poolSelector",
        "free space",
    ] {
        assert!(text.contains(want), "{want} missing from: {text}");
    }
}

#[test]
fn existing_copies_stay_even_when_the_fleet_changes() {
    let mut pools = fleet();
    let first = place(&req("ns/keep", 3, &[]), &pools).pools;
    // A bigger, emptier pool appears; the existing placement does not move.
    pools.push(pool("d1", "nd1", "dc4", "z9", 10_000));
    assert_eq!(place(&req("ns/keep", 3, &first), &pools).pools, first);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn placement_is_deterministic_and_losing_a_pool_moves_only_its_copies(
        n_pools in 4usize..40,
        seeds in proptest::collection::vec(any::<u16>(), 40),
        lost in any::<prop::sample::Index>(),
    ) {
        let pools: Vec<PoolInfo> = (0..n_pools)
            .map(|i| pool(&format!("p{i}"), &format!("n{}", i % (n_pools - 1).max(1)), &format!("dc{}", i % 3), &format!("z{}", i % 5), 10 + u64::from(seeds[i % seeds.len()] % 500)))
            .collect();
        let projects: Vec<String> = (0..40).map(|i| format!("ns/p{i}")).collect();
        let before: BTreeMap<&String, Vec<String>> = projects.iter().map(|p| (p, place(&req(p, 3, &[]), &pools).pools)).collect();
        // Deterministic, and order of the pool list does not matter.
        let mut reversed = pools.clone();
        reversed.reverse();
        for p in &projects {
            prop_assert_eq!(&place(&req(p, 3, &[]), &reversed).pools, &before[p]);
        }
        // Lose one pool: each project keeps its other copies and only replaces the lost one.
        let gone = pools[lost.index(pools.len())].name.clone();
        let after_pools: Vec<PoolInfo> = pools.iter().filter(|p| p.name != gone).cloned().collect();
        for p in &projects {
            let kept: Vec<String> = before[p].iter().filter(|n| **n != gone).cloned().collect();
            let after = place(&req(p, 3, &kept), &after_pools).pools;
            prop_assert_eq!(&after[..kept.len()], &kept[..]);
            prop_assert!(!after.contains(&gone));
            let nodes: BTreeSet<&str> = after.iter().map(|n| after_pools.iter().find(|x| &x.name == n).unwrap().node.as_str()).collect();
            prop_assert_eq!(nodes.len(), after.len(), "two copies on one node");
        }
    }

    #[test]
    fn weights_follow_free_space(big in 2u64..20) {
        // One pool with `big` times the space of each other: it wins about big/(big+9) of the time.
        let mut pools: Vec<PoolInfo> = (0..10).map(|i| pool(&format!("p{i}"), &format!("n{i}"), "dc", "z", 100)).collect();
        pools[0].free_bytes = 100 * big * GI;
        let wins = (0..2000).filter(|i| place(&req(&format!("ns/{i}"), 1, &[]), &pools).pools[0] == "p0").count() as f64 / 2000.0;
        let expect = big as f64 / (big as f64 + 9.0);
        prop_assert!((wins - expect).abs() < 0.06, "won {wins}, expected about {expect}");
    }
}

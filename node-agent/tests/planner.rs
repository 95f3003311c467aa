//! The chain planner and GC of DESIGN §5.3: worked examples, the CLI contract, and property
//! tests against a naive restatement of the rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // integration tests

use std::collections::{BTreeSet, HashMap};

use projstore_agent::streams::{Edge, PlanError, ReplicaPlan, Snap, plan, plan_for_replica};
use proptest::prelude::*;

fn snap(name: &str, guid: u64, createtxg: u64, time: i64) -> Snap {
    Snap {
        name: name.into(),
        guid,
        createtxg,
        time,
    }
}

fn full(id: &str, to: &Snap, bytes: u64) -> Edge {
    Edge {
        id: id.into(),
        from: None,
        to: to.clone(),
        bytes,
    }
}

fn inc(id: &str, from: &Snap, to: &Snap, bytes: u64) -> Edge {
    Edge {
        id: id.into(),
        from: Some(from.clone()),
        to: to.clone(),
        bytes,
    }
}

#[test]
fn a_linear_chain_is_applied_whole() {
    let (a, b, c) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 200),
        snap("c", 3, 30, 300),
    );
    let edges = vec![
        full("full--a", &a, 100),
        inc("a--b", &a, &b, 5),
        inc("b--c", &b, &c, 5),
    ];
    let p = plan(&edges).unwrap();
    assert_eq!(p.chain, ["full--a", "a--b", "b--c"]);
    assert!(p.deletable.is_empty());
    assert_eq!(p.target.unwrap().guid, 3);
}

#[test]
fn a_newer_full_supersedes_the_old_chain() {
    let (a, b, c) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 200),
        snap("c", 3, 30, 300),
    );
    let edges = vec![
        full("full--a", &a, 100),
        inc("a--b", &a, &b, 5),
        inc("b--c", &b, &c, 5),
        full("full--c", &c, 120),
    ];
    let p = plan(&edges).unwrap();
    assert_eq!(p.chain, ["full--c"]);
    assert_eq!(p.deletable, ["a--b", "b--c", "full--a"]);
}

#[test]
fn forks_are_kept() {
    // a → b is the chain; a → x leads to data the chain does not contain.
    let (a, b, x) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 300),
        snap("x", 9, 15, 200),
    );
    let edges = vec![
        full("full--a", &a, 100),
        inc("a--b", &a, &b, 5),
        inc("a--x", &a, &x, 5),
    ];
    let p = plan(&edges).unwrap();
    assert_eq!(p.chain, ["full--a", "a--b"]);
    assert!(p.deletable.is_empty(), "{:?}", p.deletable);
}

#[test]
fn a_rooted_stream_leading_to_a_fork_is_kept_even_when_superseded() {
    let (a, b, x) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 300),
        snap("x", 9, 15, 200),
    );
    let edges = vec![
        full("full--a", &a, 100),
        inc("a--b", &a, &b, 5),
        inc("a--x", &a, &x, 5),
        full("full--b", &b, 110),
    ];
    let p = plan(&edges).unwrap();
    assert_eq!(p.chain, ["full--b"]);
    // full--a still leads to x (a fork); a--b only leads into the target's history.
    assert_eq!(p.deletable, ["a--b"]);
}

#[test]
fn unrooted_streams_wait_for_their_parent_unless_superseded() {
    let (a, b, c, d) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 200),
        snap("c", 3, 30, 300),
        snap("d", 4, 40, 400),
    );
    // c--d arrived before anything that roots c; a--b is unrooted but b is in the target's history.
    let edges = vec![
        inc("c--d", &c, &d, 5),
        inc("a--b", &a, &b, 5),
        full("full--b", &b, 100),
    ];
    let p = plan(&edges).unwrap();
    assert_eq!(p.chain, ["full--b"]);
    assert_eq!(p.deletable, ["a--b"]);
}

#[test]
fn ties_prefer_fewer_streams_then_bytes_then_ids() {
    let (a, b, c) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 200),
        snap("c", 3, 30, 300),
    );
    // Two 2-stream paths to c: via a (bytes 100+10) and via b (bytes 100+10); equal bytes:
    // the smaller id sequence wins.
    let edges = vec![
        full("f-a", &a, 100),
        full("f-b", &b, 100),
        inc("a--c", &a, &c, 10),
        inc("b--c", &b, &c, 10),
    ];
    assert_eq!(plan(&edges).unwrap().chain, ["f-a", "a--c"]);
    let edges = vec![
        full("f-a", &a, 100),
        full("f-b", &b, 99),
        inc("a--c", &a, &c, 10),
        inc("b--c", &b, &c, 10),
    ];
    assert_eq!(plan(&edges).unwrap().chain, ["f-b", "b--c"]);
    // One stream beats two however big it is.
    let edges = vec![
        full("f-a", &a, 1),
        inc("a--c", &a, &c, 1),
        full("f-c", &c, 1_000_000),
    ];
    assert_eq!(plan(&edges).unwrap().chain, ["f-c"]);
}

#[test]
fn the_target_is_the_newest_by_time_then_createtxg_then_guid() {
    let a = snap("a", 5, 10, 100);
    let b = snap("b", 6, 11, 100); // same second, later txg
    assert_eq!(
        plan(&[full("fa", &a, 1), full("fb", &b, 1)])
            .unwrap()
            .target
            .unwrap()
            .name,
        "b"
    );
    let c = snap("c", 7, 10, 100);
    let d = snap("d", 8, 10, 100); // same second and txg (two pools): larger guid
    assert_eq!(
        plan(&[full("fc", &c, 1), full("fd", &d, 1)])
            .unwrap()
            .target
            .unwrap()
            .name,
        "d"
    );
    // A newer snapshot that cannot be reached from ROOT is not the target.
    let e = snap("e", 9, 50, 500);
    let p = plan(&[full("fc", &c, 1), inc("x--e", &snap("x", 99, 1, 1), &e, 1)]).unwrap();
    assert_eq!(p.target.unwrap().name, "c");
}

#[test]
fn nothing_rooted_means_no_chain_and_nothing_deletable() {
    let (a, b) = (snap("a", 1, 10, 100), snap("b", 2, 20, 200));
    let p = plan(&[inc("a--b", &a, &b, 5)]).unwrap();
    assert!(p.chain.is_empty() && p.deletable.is_empty() && p.target.is_none());
    assert!(plan(&[]).unwrap().chain.is_empty());
}

#[test]
fn invalid_graphs_are_refused() {
    let (a, b) = (snap("a", 1, 10, 100), snap("b", 2, 20, 200));
    assert_eq!(
        plan(&[full("x", &a, 1), full("x", &b, 1)]),
        Err(PlanError::DuplicateId("x".into()))
    );
    assert_eq!(
        plan(&[inc("self", &a, &a, 1)]),
        Err(PlanError::SelfLoop("self".into()))
    );
    assert!(matches!(
        plan(&[
            full("f", &a, 1),
            inc("a--b", &a, &b, 1),
            inc("b--a", &b, &a, 1)
        ]),
        Err(PlanError::Cycle(_))
    ));
    // The same snapshot with another createtxg (a stream written after a receive, where txgs
    // differ) is the same node: identity is the GUID.
    let a_again = snap("a", 1, 11, 100);
    assert_eq!(
        plan(&[full("f", &a, 1), inc("g", &a_again, &b, 1)])
            .unwrap()
            .chain,
        ["f", "g"]
    );
}

#[test]
fn replicas_apply_only_what_they_lack() {
    let (a, b, c) = (
        snap("a", 1, 10, 100),
        snap("b", 2, 20, 200),
        snap("c", 3, 30, 300),
    );
    let x = snap("x", 9, 25, 250);
    let edges = vec![
        full("full--a", &a, 100),
        inc("a--b", &a, &b, 5),
        inc("b--c", &b, &c, 5),
        inc("b--x", &b, &x, 5),
    ];
    assert_eq!(
        plan_for_replica(&edges, None).unwrap(),
        ReplicaPlan::Apply(vec!["full--a".into(), "a--b".into(), "b--c".into()])
    );
    assert_eq!(
        plan_for_replica(&edges, Some(2)).unwrap(),
        ReplicaPlan::Apply(vec!["b--c".into()])
    );
    assert_eq!(
        plan_for_replica(&edges, Some(3)).unwrap(),
        ReplicaPlan::UpToDate
    );
    // Holding x (a fork the chain does not pass through) cannot lead to c: diverged.
    assert_eq!(
        plan_for_replica(&edges, Some(9)).unwrap(),
        ReplicaPlan::Diverged
    );
    assert_eq!(
        plan_for_replica(&edges, Some(12345)).unwrap(),
        ReplicaPlan::Diverged
    );
}

// ---- the CLI contract -------------------------------------------------------------------

fn run_cli(json: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streams.json");
    std::fs::write(&file, json).unwrap();
    let args = [
        "streams".to_owned(),
        "plan".to_owned(),
        "--json".to_owned(),
        file.display().to_string(),
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = projstore_agent::cli::main(&args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn cli_prints_chain_and_deletable() {
    let json = r#"[
      {"id":"full--a","from":null,"to":{"name":"a","guid":"18446744073709551615","createtxg":10,"time":100},"bytes":1000},
      {"id":"a--b","from":{"name":"a","guid":"18446744073709551615","createtxg":10,"time":100},
       "to":{"name":"b","guid":"2","createtxg":20,"time":200},"bytes":10},
      {"id":"full--b","from":null,"to":{"name":"b","guid":"2","createtxg":20,"time":200},"bytes":900}]"#;
    let (code, out, err) = run_cli(json);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        r#"{"chain":["full--b"],"deletable":["a--b","full--a"]}"#
    );
}

#[test]
fn cli_refuses_bad_input_with_exit_2_and_one_line() {
    let s = |name: &str, guid: &str| {
        format!(r#"{{"name":"{name}","guid":"{guid}","createtxg":1,"time":1}}"#)
    };
    let cases = [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"[{"id":"x"}]"#.to_owned(),
        format!(
            r#"[{{"id":"x","from":null,"to":{},"bytes":-1}}]"#,
            s("a", "1")
        ),
        format!(
            r#"[{{"id":"x","from":null,"to":{},"bytes":1}}]"#,
            s("a", "12a")
        ),
        format!(
            r#"[{{"id":"x","from":null,"to":{},"bytes":1}}]"#,
            s("a", "99999999999999999999")
        ),
        r#"[{"id":"x","from":null,"to":{"name":"a","guid":1,"createtxg":1,"time":1},"bytes":1}]"#
            .to_owned(),
        format!(
            r#"[{{"id":"x","from":null,"to":{},"bytes":1,"extra":true}}]"#,
            s("a", "1")
        ),
        format!(
            r#"[{{"id":"x","from":null,"to":{a},"bytes":1}},{{"id":"x","from":null,"to":{b},"bytes":1}}]"#,
            a = s("a", "1"),
            b = s("b", "2")
        ),
        format!(
            r#"[{{"id":"x","from":{a},"to":{a},"bytes":1}}]"#,
            a = s("a", "1")
        ),
        format!(
            r#"[{{"id":"ab","from":{a},"to":{b},"bytes":1}},{{"id":"ba","from":{b},"to":{a},"bytes":1}}]"#,
            a = s("a", "1"),
            b = s("b", "2")
        ),
    ];
    for json in cases {
        let (code, out, err) = run_cli(&json);
        assert_eq!(code, 2, "{json}: expected exit 2, out {out:?}");
        assert!(out.is_empty(), "{json}: printed {out:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{json}: stderr {err:?}");
    }
}

#[test]
fn cli_missing_file_and_unknown_commands_exit_2() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args: Vec<String> = ["streams", "plan", "--json", "/nonexistent/x.json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(projstore_agent::cli::main(&args, &mut out, &mut err), 2);
    assert_eq!(
        projstore_agent::cli::main(&["frobnicate".to_owned()], &mut out, &mut err),
        2
    );
}

// ---- properties ------------------------------------------------------------------------

/// A random DAG of streams over `n` snapshots ordered by createtxg; times may tie.
fn graphs() -> impl Strategy<Value = Vec<Edge>> {
    (2usize..14)
        .prop_flat_map(|n| {
            let snaps = proptest::collection::vec((0i64..4, 1u64..u64::MAX), n);
            let edges = proptest::collection::vec((0..=n, 0..n, 1u64..1000), 1..(3 * n));
            (snaps, edges)
        })
        .prop_map(|(snaps, raw)| {
            let mut time = 0;
            let mut used = BTreeSet::new();
            let snaps: Vec<Snap> = snaps
                .iter()
                .enumerate()
                .filter(|(_, (_, guid))| used.insert(*guid))
                .map(|(i, (dt, guid))| {
                    time += dt;
                    snap(&format!("s{i}"), *guid, i as u64 + 1, time)
                })
                .collect();
            let n = snaps.len();
            let mut edges = Vec::new();
            for (k, (from, to, bytes)) in raw.into_iter().enumerate() {
                let (from, to) = (from.min(n), to.min(n - 1));
                // from == n means ROOT; otherwise keep the DAG: from strictly before to.
                if from == n {
                    edges.push(full(&format!("e{k}"), &snaps[to], bytes));
                } else if from < to {
                    edges.push(inc(&format!("e{k}"), &snaps[from], &snaps[to], bytes));
                }
            }
            edges
        })
}

/// Naive restatement of the rules, for comparison.
struct Naive {
    rooted: BTreeSet<u64>,
    history: BTreeSet<u64>,
    target: Option<u64>,
}

fn naive(edges: &[Edge]) -> Naive {
    const ROOT: u64 = 0; // property graphs never use guid 0 for a snapshot
    let from = |e: &Edge| e.from.as_ref().map_or(ROOT, |f| f.guid);
    let mut rooted = BTreeSet::from([ROOT]);
    loop {
        let before = rooted.len();
        for e in edges {
            if rooted.contains(&from(e)) {
                rooted.insert(e.to.guid);
            }
        }
        if rooted.len() == before {
            break;
        }
    }
    let snaps: HashMap<u64, &Snap> = edges.iter().map(|e| (e.to.guid, &e.to)).collect();
    let target = rooted
        .iter()
        .filter(|g| **g != ROOT)
        .max_by_key(|g| snaps.get(g).map(|s| (s.time, s.createtxg, s.guid)))
        .copied();
    let mut history = BTreeSet::new();
    if let Some(t) = target {
        history.insert(t);
        loop {
            let before = history.len();
            for e in edges {
                if history.contains(&e.to.guid) {
                    history.insert(from(e));
                }
            }
            if history.len() == before {
                break;
            }
        }
    }
    rooted.remove(&ROOT);
    history.remove(&ROOT);
    Naive {
        rooted,
        history,
        target,
    }
}

fn descendants(edges: &[Edge], start: u64) -> BTreeSet<u64> {
    let mut seen = BTreeSet::from([start]);
    loop {
        let before = seen.len();
        for e in edges {
            if e.from.as_ref().is_some_and(|f| seen.contains(&f.guid)) {
                seen.insert(e.to.guid);
            }
        }
        if seen.len() == before {
            return seen;
        }
    }
}

/// Fewest streams from ROOT to `target`, by breadth-first search.
fn min_streams(edges: &[Edge], target: u64) -> Option<usize> {
    let mut frontier: BTreeSet<u64> = edges
        .iter()
        .filter(|e| e.from.is_none())
        .map(|e| e.to.guid)
        .collect();
    let mut seen = frontier.clone();
    for depth in 1..=edges.len() {
        if frontier.contains(&target) {
            return Some(depth);
        }
        let next: BTreeSet<u64> = edges
            .iter()
            .filter(|e| e.from.as_ref().is_some_and(|f| frontier.contains(&f.guid)))
            .map(|e| e.to.guid)
            .filter(|g| seen.insert(*g))
            .collect();
        frontier = next;
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_chain_is_a_shortest_valid_path_to_the_newest_reachable_snapshot(edges in graphs()) {
        let p = plan(&edges).unwrap();
        let n = naive(&edges);
        prop_assert_eq!(p.target.as_ref().map(|t| t.guid), n.target);
        let by_id: HashMap<&str, &Edge> = edges.iter().map(|e| (e.id.as_str(), e)).collect();
        let chain: Vec<&Edge> = p.chain.iter().map(|id| by_id[id.as_str()]).collect();
        match n.target {
            None => prop_assert!(chain.is_empty()),
            Some(t) => {
                prop_assert!(chain[0].from.is_none(), "chain starts with a full stream");
                for w in chain.windows(2) {
                    prop_assert_eq!(w[0].to.guid, w[1].from.as_ref().unwrap().guid);
                }
                prop_assert_eq!(chain.last().unwrap().to.guid, t);
                prop_assert_eq!(Some(chain.len()), min_streams(&edges, t));
            }
        }
    }

    #[test]
    fn gc_never_deletes_a_chain_stream_or_a_fork(edges in graphs()) {
        let p = plan(&edges).unwrap();
        let n = naive(&edges);
        let chain: BTreeSet<&String> = p.chain.iter().collect();
        for id in &p.deletable {
            prop_assert!(!chain.contains(id), "chain stream {} deletable", id);
            let e = edges.iter().find(|e| &e.id == id).unwrap();
            let rooted = e.from.as_ref().is_none_or(|f| n.rooted.contains(&f.guid));
            if rooted {
                for d in descendants(&edges, e.to.guid) {
                    prop_assert!(n.history.contains(&d), "{} leads to fork snapshot {}", id, d);
                }
            } else {
                prop_assert!(n.history.contains(&e.to.guid));
            }
        }
        // And everything superseded by that definition is reported.
        for e in &edges {
            if chain.contains(&e.id) { continue; }
            let rooted = e.from.as_ref().is_none_or(|f| n.rooted.contains(&f.guid));
            let superseded = if rooted {
                descendants(&edges, e.to.guid).iter().all(|d| n.history.contains(d))
            } else {
                n.history.contains(&e.to.guid)
            };
            prop_assert_eq!(superseded, p.deletable.contains(&e.id), "{}", e.id);
        }
    }

    #[test]
    fn planning_is_deterministic_and_gc_idempotent(edges in graphs(), seed in any::<u64>()) {
        let p = plan(&edges).unwrap();
        let mut shuffled = edges.clone();
        let len = shuffled.len();
        for i in 0..len {
            shuffled.swap(i, (seed.wrapping_mul(i as u64 + 7) % len as u64) as usize);
        }
        prop_assert_eq!(&plan(&shuffled).unwrap(), &p);
        let kept: Vec<Edge> = edges.iter().filter(|e| !p.deletable.contains(&e.id)).cloned().collect();
        let again = plan(&kept).unwrap();
        prop_assert_eq!(&again.chain, &p.chain);
        prop_assert!(again.deletable.is_empty(), "second GC found {:?}", again.deletable);
    }

    #[test]
    fn replica_plans_end_at_the_target(edges in graphs(), pick in any::<prop::sample::Index>()) {
        let p = plan(&edges).unwrap();
        let guids: Vec<u64> = edges.iter().map(|e| e.to.guid).collect();
        prop_assume!(!guids.is_empty());
        let held = guids[pick.index(guids.len())];
        if let ReplicaPlan::Apply(ids) = plan_for_replica(&edges, Some(held)).unwrap() {
            let by_id: HashMap<&str, &Edge> = edges.iter().map(|e| (e.id.as_str(), e)).collect();
            let mut at = held;
            for id in &ids {
                let e = by_id[id.as_str()];
                prop_assert_eq!(e.from.as_ref().map(|f| f.guid), Some(at));
                at = e.to.guid;
            }
            prop_assert_eq!(Some(at), p.target.map(|t| t.guid));
        }
    }

    #[test]
    fn random_edges_never_panic(raw in proptest::collection::vec((0u64..6, 0u64..6, 0u64..5, 0u64..3, any::<u64>()), 0..20)) {
        // Arbitrary graphs: cycles, self loops, duplicate ids, inconsistent snapshots.
        let edges: Vec<Edge> = raw
            .iter()
            .map(|&(f, t, id, txg, bytes)| Edge {
                id: format!("e{id}"),
                from: (f > 0).then(|| snap("f", f, txg, 0)),
                to: snap("t", t + 1, txg, 0),
                bytes,
            })
            .collect();
        let _ = plan(&edges);
        let _ = plan_for_replica(&edges, Some(1));
    }

    #[test]
    fn garbage_json_never_panics(text in "\\PC{0,200}") {
        let _ = projstore_agent::streams::parse_plan_input(&text);
    }
}

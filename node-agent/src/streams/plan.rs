//! The stream graph of a project (DESIGN §5.3): which streams rebuild its newest snapshot
//! (the chain), which are superseded (deletable), and what a replica still needs.
//!
//! Streams are edges `from.guid → to.guid`; a full stream starts at ROOT. Pure functions over
//! plain data: no clock, no files.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

/// A snapshot as the planner sees it: identity is the GUID, order is `createtxg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub time: i64,
}

/// One stream file: `from` is `None` for a full stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub id: String,
    pub from: Option<Snap>,
    pub to: Snap,
    pub bytes: u64,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stream ids to apply, oldest first, to rebuild the target from nothing.
    pub chain: Vec<String>,
    /// Superseded stream ids, sorted.
    pub deletable: Vec<String>,
    /// The newest snapshot reachable from ROOT, if any.
    pub target: Option<Snap>,
}

/// Input the planner refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("duplicate stream id {0:?}")]
    DuplicateId(String),
    #[error("stream {0:?} goes from a snapshot to itself")]
    SelfLoop(String),
    #[error("streams form a cycle (through {0:?})")]
    Cycle(String),
}

/// What a replica must do to reach the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaPlan {
    /// It already holds the target (or there is no target).
    UpToDate,
    /// Apply these stream ids in order.
    Apply(Vec<String>),
    /// Its newest snapshot leads nowhere near the target: its data diverged.
    Diverged,
}

const ROOT: usize = 0;

/// The graph over snapshot nodes (index 0 is ROOT) with stream edges.
struct Graph<'a> {
    edges: &'a [Edge],
    snaps: Vec<Option<&'a Snap>>,
    index: HashMap<u64, usize>,
    out: Vec<Vec<usize>>,
    into: Vec<Vec<usize>>,
    from_node: Vec<usize>,
    to_node: Vec<usize>,
    topo: Vec<usize>,
}

impl<'a> Graph<'a> {
    fn build(edges: &'a [Edge]) -> Result<Self, PlanError> {
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(edges.len());
        let mut g = Graph {
            edges,
            snaps: vec![None],
            index: HashMap::with_capacity(edges.len()),
            out: vec![Vec::new()],
            into: vec![Vec::new()],
            from_node: Vec::with_capacity(edges.len()),
            to_node: Vec::with_capacity(edges.len()),
            topo: Vec::new(),
        };
        for (i, e) in edges.iter().enumerate() {
            if ids.insert(e.id.as_str(), i).is_some() {
                return Err(PlanError::DuplicateId(e.id.clone()));
            }
            if e.from.as_ref().is_some_and(|f| f.guid == e.to.guid) {
                return Err(PlanError::SelfLoop(e.id.clone()));
            }
            let mut node = |s: &'a Snap| -> Result<usize, PlanError> {
                match g.index.get(&s.guid) {
                    // Identity is the GUID. The same snapshot may carry another createtxg in a
                    // stream written after a receive (txgs are per pool): the first description wins.
                    Some(&n) => Ok(n),
                    None => {
                        let n = g.snaps.len();
                        g.snaps.push(Some(s));
                        g.out.push(Vec::new());
                        g.into.push(Vec::new());
                        g.index.insert(s.guid, n);
                        Ok(n)
                    }
                }
            };
            let from = match &e.from {
                Some(f) => node(f)?,
                None => ROOT,
            };
            let to = node(&e.to)?;
            g.from_node.push(from);
            g.to_node.push(to);
            g.out[from].push(i);
            g.into[to].push(i);
        }
        g.topo = g.topological_order()?;
        Ok(g)
    }

    /// Kahn's algorithm; a leftover node means a cycle.
    fn topological_order(&self) -> Result<Vec<usize>, PlanError> {
        let n = self.snaps.len();
        let mut indegree: Vec<usize> = self.into.iter().map(Vec::len).collect();
        let mut queue: VecDeque<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(v) = queue.pop_front() {
            order.push(v);
            for &e in &self.out[v] {
                let t = self.to_node[e];
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    queue.push_back(t);
                }
            }
        }
        if order.len() != n {
            let stuck = (0..n)
                .find(|&v| indegree[v] > 0)
                .and_then(|v| self.into[v].first().copied());
            return Err(PlanError::Cycle(
                stuck.map(|e| self.edges[e].id.clone()).unwrap_or_default(),
            ));
        }
        Ok(order)
    }

    /// Nodes reachable from `start` along edges.
    fn forward_from(&self, start: usize) -> Vec<bool> {
        let mut seen = vec![false; self.snaps.len()];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(v) = stack.pop() {
            for &e in &self.out[v] {
                let t = self.to_node[e];
                if !seen[t] {
                    seen[t] = true;
                    stack.push(t);
                }
            }
        }
        seen
    }

    /// Nodes from which `target` can be reached (target included).
    fn backward_from(&self, target: usize) -> Vec<bool> {
        let mut seen = vec![false; self.snaps.len()];
        let mut stack = vec![target];
        seen[target] = true;
        while let Some(v) = stack.pop() {
            for &e in &self.into[v] {
                let f = self.from_node[e];
                if !seen[f] {
                    seen[f] = true;
                    stack.push(f);
                }
            }
        }
        seen
    }

    /// The newest snapshot among `candidates`: by time, then createtxg, then guid.
    fn newest(&self, candidates: &[bool]) -> Option<usize> {
        (1..self.snaps.len())
            .filter(|&v| candidates[v])
            .max_by_key(|&v| self.snaps[v].map(|s| (s.time, s.createtxg, s.guid)))
    }

    /// Best path from `start` to `target`: fewest streams, then fewest bytes, then the
    /// lexicographically smaller sequence of ids. Edge indices, oldest first.
    fn best_path(&self, start: usize, target: usize) -> Option<Vec<usize>> {
        let n = self.snaps.len();
        // (streams, bytes, incoming edge) of the best path found to each node.
        let mut best: Vec<Option<(usize, u64, Option<usize>)>> = vec![None; n];
        best[start] = Some((0, 0, None));
        for &v in &self.topo {
            let Some((count, bytes, _)) = best[v] else {
                continue;
            };
            for &e in &self.out[v] {
                let t = self.to_node[e];
                let cand = (count + 1, bytes.saturating_add(self.edges[e].bytes));
                let better = match best[t] {
                    None => true,
                    Some((c, b, cur)) => match cand.cmp(&(c, b)) {
                        Ordering::Less => true,
                        Ordering::Greater => false,
                        Ordering::Equal => self.compare_ids(&best, Some(e), cur) == Ordering::Less,
                    },
                };
                if better {
                    best[t] = Some((cand.0, cand.1, Some(e)));
                }
            }
        }
        best[target]?;
        Some(Self::path(
            &best,
            best[target].and_then(|b| b.2),
            &self.from_node,
        ))
    }

    fn path(
        best: &[Option<(usize, u64, Option<usize>)>],
        last: Option<usize>,
        from_node: &[usize],
    ) -> Vec<usize> {
        let mut path = Vec::new();
        let mut cur = last;
        while let Some(e) = cur {
            path.push(e);
            cur = best[from_node[e]].and_then(|b| b.2);
        }
        path.reverse();
        path
    }

    /// Compares the id sequences of the best paths ending in edges `a` and `b`.
    fn compare_ids(
        &self,
        best: &[Option<(usize, u64, Option<usize>)>],
        a: Option<usize>,
        b: Option<usize>,
    ) -> Ordering {
        let pa = Self::path(best, a, &self.from_node);
        let pb = Self::path(best, b, &self.from_node);
        pa.iter()
            .map(|&e| &self.edges[e].id)
            .cmp(pb.iter().map(|&e| &self.edges[e].id))
    }

    fn ids(&self, path: &[usize]) -> Vec<String> {
        path.iter().map(|&e| self.edges[e].id.clone()).collect()
    }
}

/// The chain that rebuilds the newest reachable snapshot, and the superseded streams.
pub fn plan(edges: &[Edge]) -> Result<Plan, PlanError> {
    let g = Graph::build(edges)?;
    let rooted = g.forward_from(ROOT);
    let Some(target) = g.newest(&rooted) else {
        return Ok(Plan::default());
    };
    let chain = g.best_path(ROOT, target).unwrap_or_default();
    let history = g.backward_from(target);

    // A node whose every descendant (itself included) is in the target's history.
    let mut all_in_history = vec![false; g.snaps.len()];
    for &v in g.topo.iter().rev() {
        all_in_history[v] = history[v] && g.out[v].iter().all(|&e| all_in_history[g.to_node[e]]);
    }
    let mut on_chain = vec![false; edges.len()];
    for &e in &chain {
        on_chain[e] = true;
    }
    let mut deletable: Vec<String> = (0..edges.len())
        .filter(|&e| !on_chain[e])
        .filter(|&e| {
            let (from, to) = (g.from_node[e], g.to_node[e]);
            if rooted[from] {
                all_in_history[to]
            } else {
                history[to]
            }
        })
        .map(|e| edges[e].id.clone())
        .collect();
    deletable.sort();
    Ok(Plan {
        chain: g.ids(&chain),
        deletable,
        target: g.snaps[target].cloned(),
    })
}

/// The chain (fewest streams, as [`plan`] chooses) from ROOT to the snapshot with `guid`;
/// None when no chain reaches it.
pub fn chain_to(edges: &[Edge], guid: u64) -> Result<Option<Vec<String>>, PlanError> {
    let g = Graph::build(edges)?;
    let Some(&target) = g.index.get(&guid) else {
        return Ok(None);
    };
    Ok(g.best_path(ROOT, target).map(|p| g.ids(&p)))
}

/// The GUIDs of the snapshots a chain from ROOT reaches.
pub fn rooted_guids(edges: &[Edge]) -> Result<std::collections::HashSet<u64>, PlanError> {
    let g = Graph::build(edges)?;
    let rooted = g.forward_from(ROOT);
    Ok((1..g.snaps.len())
        .filter(|&v| rooted[v])
        .filter_map(|v| g.snaps[v].map(|s| s.guid))
        .collect())
}

/// What a replica whose newest snapshot is `held` (by guid; `None` when it has no dataset)
/// must apply. A replica holding a snapshot on the chain applies only the suffix after it.
pub fn plan_for_replica(edges: &[Edge], held: Option<u64>) -> Result<ReplicaPlan, PlanError> {
    let full = plan(edges)?;
    let Some(target) = full.target.as_ref() else {
        return Ok(ReplicaPlan::UpToDate);
    };
    let Some(held) = held else {
        return Ok(ReplicaPlan::Apply(full.chain));
    };
    if held == target.guid {
        return Ok(ReplicaPlan::UpToDate);
    }
    let by_id: HashMap<&str, &Edge> = edges.iter().map(|e| (e.id.as_str(), e)).collect();
    if let Some(pos) = full
        .chain
        .iter()
        .position(|id| by_id.get(id.as_str()).is_some_and(|e| e.to.guid == held))
    {
        return Ok(ReplicaPlan::Apply(full.chain[pos + 1..].to_vec()));
    }
    let g = Graph::build(edges)?;
    let (Some(&start), Some(&goal)) = (g.index.get(&held), g.index.get(&target.guid)) else {
        return Ok(ReplicaPlan::Diverged);
    };
    Ok(match g.best_path(start, goal) {
        Some(path) => ReplicaPlan::Apply(g.ids(&path)),
        None => ReplicaPlan::Diverged,
    })
}

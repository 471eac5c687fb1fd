//! The dependency graph: cycle detection, ordering, and rendering as DOT,
//! Mermaid or text.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write;

use petgraph::graph::{DiGraph, NodeIndex};

use super::Dag;
use super::trigger_rule::TriggerRule;

/// Builds a graph of `n` nodes with `edges` (upstream, downstream).
fn build(n: usize, edges: &[(usize, usize)]) -> DiGraph<usize, ()> {
    let mut g = DiGraph::with_capacity(n, edges.len());
    for i in 0..n {
        g.add_node(i);
    }
    for &(a, b) in edges {
        g.update_edge(NodeIndex::new(a), NodeIndex::new(b), ());
    }
    g
}

/// Every dependency cycle, each as a path of nodes that returns to its
/// first node: `[a, b, c, a]` for `a -> b -> c -> a`. petgraph's `toposort`
/// names only one node of a cycle, so cycles come from `tarjan_scc`, and the
/// path inside each strongly connected component is found by a BFS.
pub fn cycles(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let g = build(n, edges);
    let mut out = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: BTreeSet<usize> = scc.iter().map(|x| x.index()).collect();
        let start = *members.iter().next().expect("non-empty");
        // BFS from start back to start, staying inside the component.
        let mut prev = vec![usize::MAX; n];
        let mut queue = VecDeque::from([start]);
        let mut end = None;
        'bfs: while let Some(u) = queue.pop_front() {
            let mut next: Vec<usize> = g.neighbors(NodeIndex::new(u)).map(|x| x.index()).collect();
            next.sort_unstable();
            for v in next {
                if !members.contains(&v) {
                    continue;
                }
                if v == start {
                    end = Some(u);
                    break 'bfs;
                }
                if prev[v] == usize::MAX {
                    prev[v] = u;
                    queue.push_back(v);
                }
            }
        }
        let mut path = vec![start];
        let mut cur = end.expect("a strongly connected component has a cycle through every member");
        while cur != start {
            path.push(cur);
            cur = prev[cur];
        }
        path.push(start);
        let last = path.len() - 1;
        path[1..last].reverse();
        out.push(path);
    }
    out.sort();
    out
}

/// A topological order of an acyclic graph, preferring lower indexes (file
/// order) among nodes that are ready at the same time.
pub fn topo_order(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let g = build(n, edges);
    let mut indeg: Vec<usize> = (0..n).map(|i| g.neighbors_directed(NodeIndex::new(i), petgraph::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(u)) = ready.pop() {
        out.push(u);
        for v in g.neighbors(NodeIndex::new(u)) {
            let v = v.index();
            indeg[v] -= 1;
            if indeg[v] == 0 {
                ready.push(Reverse(v));
            }
        }
    }
    out
}

/// Depth of each task: 1 for tasks without upstream, else 1 + the deepest upstream.
pub fn levels(dag: &Dag) -> Vec<usize> {
    let mut level = vec![1; dag.tasks.len()];
    for &i in &dag.topo {
        for &u in &dag.tasks[i].upstream {
            level[i] = level[i].max(level[u] + 1);
        }
    }
    level
}

fn label_extra(dag: &Dag, i: usize) -> String {
    let t = &dag.tasks[i];
    let mut parts = vec![t.kind.to_string()];
    if t.trigger_rule != TriggerRule::AllSuccess {
        parts.push(t.trigger_rule.as_str().to_string());
    }
    if t.retries > 0 {
        parts.push(format!("retries {}", t.retries));
    }
    parts.join(", ")
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The tasks by group, in topological order: the ungrouped first (None),
/// then each group in the order its first task comes.
fn groups(dag: &Dag) -> Vec<(Option<&str>, Vec<usize>)> {
    let mut out: Vec<(Option<&str>, Vec<usize>)> = vec![(None, Vec::new())];
    for &i in &dag.topo {
        let g = dag.tasks[i].group.as_deref();
        match out.iter_mut().find(|(k, _)| *k == g) {
            Some((_, m)) => m.push(i),
            None => out.push((g, vec![i])),
        }
    }
    out
}

/// Graphviz DOT. Renders with `dot -Tsvg`.
pub fn to_dot(dag: &Dag) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", dot_escape(&dag.dag_id));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(s, "  labelloc=t;");
    let _ = writeln!(s, "  label=\"{} ({})\";", dot_escape(&dag.dag_id), dot_escape(&dag.schedule_str()));
    let _ = writeln!(s, "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\"];");
    // Task groups are clusters; the others are drawn at the top level.
    for (group, members) in groups(dag) {
        let indent = if group.is_some() { "    " } else { "  " };
        if let Some(g) = group {
            let _ = writeln!(s, "  subgraph \"cluster_{}\" {{", dot_escape(g));
            let _ = writeln!(s, "    label=\"{}\"; style=\"rounded,dashed\"; color=\"#7a8aa6\";", dot_escape(g));
        }
        for i in members {
            let t = &dag.tasks[i];
            let _ = writeln!(
                s,
                "{indent}\"{}\" [label=\"{}\\n({})\"];",
                dot_escape(&t.id),
                dot_escape(&t.id),
                dot_escape(&label_extra(dag, i))
            );
        }
        if group.is_some() {
            s.push_str("  }\n");
        }
    }
    for &i in &dag.topo {
        for &d in &dag.tasks[i].downstream {
            let _ = writeln!(s, "  \"{}\" -> \"{}\";", dot_escape(&dag.tasks[i].id), dot_escape(&dag.tasks[d].id));
        }
    }
    s.push_str("}\n");
    s
}

/// A Mermaid flowchart.
pub fn to_mermaid(dag: &Dag) -> String {
    let mut s = String::from("flowchart LR\n");
    let esc = |x: &str| x.replace('"', "#quot;");
    for (group, members) in groups(dag) {
        if let Some(g) = group {
            let _ = writeln!(s, "  subgraph g_{}[\"{}\"]", g.replace(|c: char| !c.is_ascii_alphanumeric(), "_"), esc(g));
        }
        for i in members {
            let t = &dag.tasks[i];
            let _ = writeln!(s, "  t{i}[\"{}<br/><small>{}</small>\"]", esc(&t.id), esc(&label_extra(dag, i)));
        }
        if group.is_some() {
            s.push_str("  end\n");
        }
    }
    for &i in &dag.topo {
        for &d in &dag.tasks[i].downstream {
            let _ = writeln!(s, "  t{i} --> t{d}");
        }
    }
    s
}

/// A plain listing in topological order with each task's level and upstream tasks.
pub fn to_text(dag: &Dag) -> String {
    let level = levels(dag);
    let width = dag.tasks.iter().map(|t| t.id.len()).max().unwrap_or(4).max(4);
    let mut s = String::new();
    let _ = writeln!(s, "{}: schedule {} ({}), {} tasks", dag.dag_id, dag.schedule_str(), dag.timezone, dag.tasks.len());
    for &i in &dag.topo {
        let t = &dag.tasks[i];
        let ups: Vec<&str> = t.upstream.iter().map(|&u| dag.tasks[u].id.as_str()).collect();
        let deps = if ups.is_empty() { String::new() } else { format!("  <- {}", ups.join(", ")) };
        let _ = writeln!(s, "  [{}] {:width$}  {}{deps}", level[i], t.id, label_extra(dag, i));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_whole_cycle() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 3
        let c = cycles(4, &[(0, 1), (1, 2), (2, 0), (3, 3)]);
        assert_eq!(c, vec![vec![0, 1, 2, 0], vec![3, 3]]);
        assert!(cycles(3, &[(0, 1), (1, 2)]).is_empty());
    }

    #[test]
    fn topo_prefers_file_order() {
        assert_eq!(topo_order(4, &[(2, 0), (3, 1)]), vec![2, 0, 3, 1]);
    }
}

//! A DAG drawn as SVG with a layered layout done here: each task in the
//! column of its longest path from a root, ordered within the column by
//! the mean row of its upstream tasks (one barycentre pass, enough for ETL
//! graphs), edges as curves from right to left.

use std::collections::HashMap;
use std::fmt::Write;

use crate::dag::Dag;
use crate::state::TiState;

const NODE_W: f64 = 170.0;
const NODE_H: f64 = 34.0;
const COL_GAP: f64 = 70.0;
const ROW_GAP: f64 = 18.0;
const PAD: f64 = 12.0;

/// Where each task goes: (column, row) per task index.
pub fn layout(dag: &Dag) -> Vec<(usize, usize)> {
    let n = dag.tasks.len();
    let mut col = vec![0usize; n];
    for &i in &dag.topo {
        col[i] = dag.tasks[i].upstream.iter().map(|&u| col[u] + 1).max().unwrap_or(0);
    }
    let cols = col.iter().copied().max().map_or(0, |m| m + 1);
    let mut row = vec![0usize; n];
    for c in 0..cols {
        let mut members: Vec<(f64, usize)> = dag
            .topo
            .iter()
            .copied()
            .filter(|&i| col[i] == c)
            .enumerate()
            .map(|(k, i)| {
                let ups = &dag.tasks[i].upstream;
                let key = if ups.is_empty() { k as f64 } else { ups.iter().map(|&u| row[u] as f64).sum::<f64>() / ups.len() as f64 };
                (key, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (r, (_, i)) in members.into_iter().enumerate() {
            row[i] = r;
        }
    }
    col.into_iter().zip(row).collect()
}

/// The fill colour of a state, as Airflow's (None: no instance yet).
pub fn colour(state: Option<TiState>) -> &'static str {
    match state {
        Some(TiState::Success) => "#2e8b3a",
        Some(TiState::Failed) => "#d43f3a",
        Some(TiState::UpstreamFailed) => "#f0962e",
        Some(TiState::Skipped) => "#e87ab8",
        Some(TiState::Running) => "#7ec544",
        Some(TiState::Queued) => "#9e9e9e",
        Some(TiState::UpForRetry) => "#e6c229",
        Some(TiState::UpForReschedule) => "#6fe7db",
        Some(TiState::Removed) => "#d6d6d6",
        Some(TiState::Pending) | None => "#ffffff",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG of a DAG, nodes coloured by `states` and linked to `href(task)`.
pub fn svg(dag: &Dag, states: &HashMap<String, TiState>, href: impl Fn(&str) -> Option<String>) -> String {
    let pos = layout(dag);
    let cols = pos.iter().map(|p| p.0).max().map_or(0, |m| m + 1);
    let rows = pos.iter().map(|p| p.1).max().map_or(0, |m| m + 1);
    let width = PAD * 2.0 + cols as f64 * NODE_W + cols.saturating_sub(1) as f64 * COL_GAP;
    let height = PAD * 2.0 + rows as f64 * NODE_H + rows.saturating_sub(1) as f64 * ROW_GAP;
    let xy = |i: usize| (PAD + pos[i].0 as f64 * (NODE_W + COL_GAP), PAD + pos[i].1 as f64 * (NODE_H + ROW_GAP));
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="task graph of {}">"#,
        esc(&dag.dag_id)
    );
    for (i, t) in dag.tasks.iter().enumerate() {
        let (x2, y2) = xy(i);
        for &u in &t.upstream {
            let (x1, y1) = xy(u);
            let (sx, sy, ex, ey) = (x1 + NODE_W, y1 + NODE_H / 2.0, x2, y2 + NODE_H / 2.0);
            let mid = (sx + ex) / 2.0;
            let _ = write!(
                out,
                r##"<path class="edge" d="M{sx:.1},{sy:.1} C{mid:.1},{sy:.1} {mid:.1},{ey:.1} {ex:.1},{ey:.1}" fill="none" stroke="#8a8f98" stroke-width="1.4"/>"##
            );
        }
    }
    for (i, t) in dag.tasks.iter().enumerate() {
        let (x, y) = xy(i);
        let state = states.get(&t.id).copied();
        let label = if t.id.chars().count() > 22 { format!("{}…", t.id.chars().take(21).collect::<String>()) } else { t.id.clone() };
        let title = format!("{} ({}): {}", t.id, t.kind, state.map_or("no instance", |s| s.as_str()));
        let node = format!(
            r##"<g class="node" data-task="{id}"><title>{title}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{fill}" stroke="#4a4f58" stroke-width="1"/><text x="{tx:.1}" y="{ty:.1}" font-size="12" fill="#111">{label}</text><text x="{kx:.1}" y="{ty:.1}" font-size="10" fill="#333" text-anchor="end">{kind}</text></g>"##,
            id = esc(&t.id),
            title = esc(&title),
            fill = colour(state),
            tx = x + 8.0,
            ty = y + NODE_H / 2.0 + 4.0,
            kx = x + NODE_W - 6.0,
            label = esc(&label),
            kind = esc(t.kind),
        );
        match href(&t.id) {
            Some(h) => {
                let _ = write!(out, r#"<a href="{}">{node}</a>"#, esc(&h));
            }
            None => out.push_str(&node),
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_follow_the_longest_path() {
        let dag = crate::dag::from_yaml(
            "tasks:
  - { id: a, type: shell, command: 'true' }
  - { id: b, type: shell, command: 'true', depends_on: [a] }
  - { id: c, type: shell, command: 'true' }
  - { id: d, type: shell, command: 'true', depends_on: [b, c] }
",
        );
        let pos = layout(&dag);
        assert_eq!(pos.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 0, 2]);
        // Two roots in column 0 get different rows.
        assert_ne!(pos[0].1, pos[2].1);
        let svg = svg(&dag, &HashMap::from([("a".to_string(), TiState::Success)]), |t| Some(format!("/t/{t}")));
        assert_eq!(svg.matches("<path").count(), 3, "one curve per edge");
        assert!(svg.contains(r##"fill="#2e8b3a""##) && svg.contains(r#"href="/t/d""#), "{svg}");
    }
}

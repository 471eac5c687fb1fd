//! Trigger-rule decisions for a run's pending instances, and what
//! `depends_on_past` allows: pure functions of the run's states (and the
//! previous run's), so that they are tested without a database.

use std::collections::HashMap;

use crate::dag::Dag;
use crate::dag::trigger_rule::{Decision, UpstreamCounts, evaluate};
use crate::state::{TiRow, TiState};

/// The previous run's task states, for `depends_on_past`.
pub type Past = HashMap<String, TiState>;

/// Whether `depends_on_past` (and `wait_for_downstream`) let task `i` run:
/// its instance in the previous run (and with `wait_for_downstream`, those
/// of the tasks right after it) succeeded or were skipped. A task the
/// previous run did not have, or no previous run, passes.
pub fn past_allows(dag: &Dag, i: usize, past: &Past) -> bool {
    let task = &dag.tasks[i];
    if !task.depends_on_past {
        return true;
    }
    let ok = |id: &str| past.get(id).is_none_or(|s| matches!(s, TiState::Success | TiState::Skipped | TiState::Removed));
    ok(&task.id) && (!task.wait_for_downstream || task.downstream.iter().all(|&d| ok(&dag.tasks[d].id)))
}

/// Whether what holds task `i` back in the previous run has failed for
/// good (failed or upstream_failed), rather than still being under way.
pub(super) fn past_failed(dag: &Dag, i: usize, past: &Past) -> bool {
    let task = &dag.tasks[i];
    let failed = |id: &str| past.get(id).is_some_and(|s| matches!(s, TiState::Failed | TiState::UpstreamFailed));
    failed(&task.id) || (task.wait_for_downstream && task.downstream.iter().any(|&d| failed(&dag.tasks[d].id)))
}

/// Trigger-rule decisions for pending instances, applied in topological
/// order so that a skip or failure propagates down the graph in one pass.
/// A task that may run but whose past does not allow it yet stays pending.
pub fn decide(dag: &Dag, tis: &[TiRow], past: &Past) -> Vec<(String, TiState)> {
    let by_id: HashMap<&str, TiState> = tis.iter().map(|t| (t.task_id.as_str(), t.state)).collect();
    let mut state: Vec<Option<TiState>> = dag.tasks.iter().map(|t| by_id.get(t.id.as_str()).copied()).collect();
    // A mapped task that expanded counts as its instances, each an upstream.
    let mut instances: HashMap<&str, Vec<TiState>> = HashMap::new();
    for t in tis {
        if let Some((name, _)) = crate::dag::split_map_id(&t.task_id) {
            instances.entry(name).or_default().push(t.state);
        }
    }
    let mut out = Vec::new();
    for &i in &dag.topo {
        if state[i] != Some(TiState::Pending) {
            continue;
        }
        let task = &dag.tasks[i];
        let mut c = UpstreamCounts::default();
        for &u in &task.upstream {
            if state[u] == Some(TiState::Success)
                && let Some(states) = instances.get(dag.tasks[u].id.as_str())
            {
                for s in states {
                    match s {
                        TiState::Removed => continue,
                        TiState::Success => c.success += 1,
                        TiState::Skipped => c.skipped += 1,
                        TiState::Failed => c.failed += 1,
                        TiState::UpstreamFailed => c.upstream_failed += 1,
                        _ => {}
                    }
                    c.total += 1;
                }
                continue;
            }
            match state[u] {
                Some(TiState::Removed) | None => continue,
                Some(TiState::Success) => c.success += 1,
                Some(TiState::Skipped) => c.skipped += 1,
                Some(TiState::Failed) => c.failed += 1,
                Some(TiState::UpstreamFailed) => c.upstream_failed += 1,
                Some(_) => {}
            }
            c.total += 1;
        }
        let new = match evaluate(task.trigger_rule, c) {
            Decision::Wait => continue,
            Decision::Run if !past_allows(dag, i, past) => continue,
            Decision::Run => TiState::Queued,
            Decision::Skip => TiState::Skipped,
            Decision::UpstreamFailed => TiState::UpstreamFailed,
        };
        state[i] = Some(new);
        out.push((task.id.clone(), new));
    }
    // A mapped task's instances wait until its expansion's success (and
    // the list in its output) is recorded; an expansion that did not end
    // well leaves them out of the run.
    for t in tis.iter().filter(|t| t.state == TiState::Pending) {
        let Some((name, _)) = crate::dag::split_map_id(&t.task_id) else { continue };
        match by_id.get(name) {
            Some(TiState::Success) => out.push((t.task_id.clone(), TiState::Queued)),
            Some(s) if s.is_terminal() => out.push((t.task_id.clone(), TiState::Removed)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An instance of `task_id` in `state`, for tests.
    pub(in crate::runner) fn ti(task_id: &str, state: TiState) -> TiRow {
        TiRow::untried(task_id, state, 1)
    }

    /// The decisions for a DAG whose instances have the given states.
    fn decisions(yaml: &str, states: &[(&str, TiState)]) -> Vec<(String, TiState)> {
        let dag = crate::dag::from_yaml(yaml);
        let tis: Vec<TiRow> = states.iter().map(|(t, s)| ti(t, *s)).collect();
        decide(&dag, &tis, &Past::new())
    }

    #[test]
    fn mapped_instances_wait_for_their_expansion_and_count_each_downstream() {
        use TiState::*;
        const MAPPED: &str = "tasks:
  - { id: m, type: shell, command: 'true', expand: [1, 2] }
  - { id: after, type: shell, command: 'true', depends_on: [m] }
";
        // The expansion is still recording its end: its instances wait.
        assert!(decisions(MAPPED, &[("m", Running), ("m[0]", Pending), ("m[1]", Pending), ("after", Pending)]).is_empty());
        // Recorded: they are queued; `after` waits for both.
        let got = decisions(MAPPED, &[("m", Success), ("m[0]", Pending), ("m[1]", Pending), ("after", Pending)]);
        assert_eq!(got, vec![("m[0]".to_string(), Queued), ("m[1]".to_string(), Queued)]);
        assert!(decisions(MAPPED, &[("m", Success), ("m[0]", Success), ("m[1]", Running), ("after", Pending)]).is_empty());
        // One failed instance fails `after` (all_success), as in Airflow.
        let got = decisions(MAPPED, &[("m", Success), ("m[0]", Success), ("m[1]", Failed), ("after", Pending)]);
        assert_eq!(got, vec![("after".to_string(), UpstreamFailed)]);
    }

    const DIAMOND: &str = "tasks:
  - { id: a, type: shell, command: 'true' }
  - { id: b, type: shell, command: 'true', depends_on: [a] }
  - { id: c, type: shell, command: 'true', depends_on: [a] }
  - { id: d, type: shell, command: 'true', depends_on: [b, c] }
  - { id: cleanup, type: shell, command: 'true', depends_on: [d], trigger_rule: all_done }
";

    #[test]
    fn a_failure_propagates_down_the_graph_in_one_pass() {
        use TiState::*;
        let got = decisions(DIAMOND, &[("a", Failed), ("b", Pending), ("c", Pending), ("d", Pending), ("cleanup", Pending)]);
        assert_eq!(
            got,
            vec![("b".into(), UpstreamFailed), ("c".into(), UpstreamFailed), ("d".into(), UpstreamFailed), ("cleanup".into(), Queued),]
        );
    }

    #[test]
    fn a_skip_propagates_and_waiting_tasks_are_left_alone() {
        use TiState::*;
        let got = decisions(DIAMOND, &[("a", Success), ("b", Skipped), ("c", Running), ("d", Pending), ("cleanup", Pending)]);
        // d is skipped at once (eager, as Airflow); cleanup then runs.
        assert_eq!(got, vec![("d".into(), Skipped), ("cleanup".into(), Queued)]);
        let got = decisions(DIAMOND, &[("a", Success), ("b", Success), ("c", UpForRetry), ("d", Pending), ("cleanup", Pending)]);
        assert_eq!(got, vec![], "d waits for c's retry");
    }

    #[test]
    fn depends_on_past_holds_a_task_until_its_previous_run_succeeded() {
        use TiState::*;
        let dag = crate::dag::from_yaml(
            "tasks:
  - { id: a, type: shell, command: 'true', depends_on_past: true }
  - { id: b, type: shell, command: 'true', depends_on: [a] }
  - { id: c, type: shell, command: 'true', wait_for_downstream: true }
  - { id: d, type: shell, command: 'true', depends_on: [c] }
",
        );
        let tis: Vec<TiRow> = ["a", "b", "c", "d"].iter().map(|t| ti(t, Pending)).collect();
        let past = |states: &[(&str, TiState)]| -> Past { states.iter().map(|(t, s)| (t.to_string(), *s)).collect() };
        // The first run (no previous one) passes.
        assert_eq!(decide(&dag, &tis, &Past::new()), vec![("a".into(), Queued), ("c".into(), Queued)]);
        // a failed last time: a waits. d failed last time: c waits too
        // (wait_for_downstream), although c itself succeeded.
        assert_eq!(decide(&dag, &tis, &past(&[("a", Failed), ("b", Success), ("c", Success), ("d", Failed)])), vec![]);
        assert_eq!(
            decide(&dag, &tis, &past(&[("a", Success), ("b", UpstreamFailed), ("c", Success), ("d", Skipped)])),
            vec![("a".into(), Queued), ("c".into(), Queued)]
        );
        // A task the previous run did not have passes; a running one holds.
        assert_eq!(decide(&dag, &tis, &past(&[("c", Running)])), vec![("a".into(), Queued)]);
    }

    #[test]
    fn removed_and_unknown_upstreams_do_not_count() {
        use TiState::*;
        // c was removed from the DAG file's run (state `removed`): d counts b only.
        let got = decisions(DIAMOND, &[("a", Success), ("b", Success), ("c", Removed), ("d", Pending)]);
        assert_eq!(got, vec![("d".into(), Queued)]);
    }
}

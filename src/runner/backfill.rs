//! Backfill: one run per schedule interval in a date range.
//!
//! Which runs exist is decided by the state store, so a backfill is
//! resumable: interrupting and restarting it neither duplicates intervals
//! (a run is unique per DAG and logical date) nor skips them (unfinished
//! runs are resumed).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use super::{Observer, RunOutcome, Runner, RunnerError, retry_store};
use crate::dag::Dag;
use crate::dag::schedule::{DataInterval, local_midnight};
use crate::state::{RunRow, RunState, RunType};

/// What to do with runs that already exist for an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Reprocess {
    /// Leave finished runs alone (the default); unfinished ones are resumed.
    #[default]
    None,
    /// Run again the failed tasks of failed runs.
    Failed,
    /// Run every existing run again from scratch.
    All,
}

/// What a backfill will do for one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Resume,
    RerunFailed,
    RerunAll,
    Skip,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub logical_date: DateTime<Utc>,
    pub interval: DataInterval,
    pub existing: Option<RunRow>,
    pub action: Action,
}

/// The intervals whose logical date falls on the days `from..=to` (in the
/// DAG's time zone), within the DAG's start and end dates.
pub fn intervals(dag: &Dag, from: NaiveDate, to: NaiveDate) -> Result<Vec<DataInterval>, String> {
    let s = dag.schedule.as_ref().ok_or_else(|| format!("DAG `{}` has no schedule, so it has no intervals to backfill", dag.dag_id))?;
    if to < from {
        return Err(format!("--to {to} is before --from {from}"));
    }
    let tz = dag.timezone;
    let start = local_midnight(from, tz).max(dag.start_date.unwrap_or(DateTime::<Utc>::MIN_UTC));
    let end = local_midnight(to.succ_opt().unwrap_or(to), tz);
    let mut out = Vec::new();
    let mut t = s.next_at_or_after(start, tz);
    while let Some(tick) = t {
        if tick >= end || dag.end_date.is_some_and(|e| tick > e) {
            break;
        }
        let next = s.next_after(tick, tz).ok_or("the schedule has no next tick")?;
        out.push(DataInterval { start: tick, end: next });
        t = Some(next);
        if out.len() > 100_000 {
            return Err("more than 100,000 intervals; backfill a shorter range".into());
        }
    }
    Ok(out)
}

pub fn action(existing: Option<&RunRow>, reprocess: Reprocess) -> Action {
    match (existing.map(|r| r.state), reprocess) {
        (None, _) => Action::Create,
        (Some(RunState::Queued | RunState::Running), _) => Action::Resume,
        (Some(_), Reprocess::All) => Action::RerunAll,
        (Some(RunState::Failed), Reprocess::Failed) => Action::RerunFailed,
        (Some(_), _) => Action::Skip,
    }
}

/// Plans a backfill against the state store.
pub async fn plan(runner: &Runner, dag: &Dag, from: NaiveDate, to: NaiveDate, reprocess: Reprocess) -> Result<Vec<Step>, RunnerError> {
    let ivs = intervals(dag, from, to).map_err(|e| RunnerError::State(crate::state::StateError::Invalid(e)))?;
    let mut steps = Vec::with_capacity(ivs.len());
    for iv in ivs {
        let existing = runner.store.find_run(&dag.dag_id, iv.start).await?;
        let action = action(existing.as_ref(), reprocess);
        steps.push(Step { logical_date: iv.start, interval: iv, existing, action });
    }
    Ok(steps)
}

/// The result of one interval.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub logical_date: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub outcome: Option<RunOutcome>,
    pub elapsed: std::time::Duration,
}

/// Runs a plan, at most `max_active` runs at once, in logical date order.
/// `on_done` hears about each finished interval.
pub async fn execute(
    runner: &Runner,
    dag: Arc<Dag>,
    steps: Vec<Step>,
    conf: &serde_json::Map<String, serde_json::Value>,
    max_active: usize,
    stop: CancellationToken,
    mut observer: impl FnMut() -> Box<dyn Observer>,
    mut on_done: impl FnMut(&StepResult),
) -> Result<Vec<StepResult>, RunnerError> {
    let mut results = Vec::new();
    // The range's first interval does not wait for the run before it
    // (Airflow's backfill rule for depends_on_past).
    let first = steps.first().map(|s| s.logical_date);
    let mut pending = steps.into_iter();
    let mut active: tokio::task::JoinSet<Result<StepResult, RunnerError>> = tokio::task::JoinSet::new();
    loop {
        while active.len() < max_active.max(1) && !stop.is_cancelled() {
            let Some(step) = pending.next() else { break };
            let store = &runner.store;
            let run_id = match (&step.action, &step.existing) {
                (Action::Skip, existing) => {
                    let r = StepResult {
                        logical_date: step.logical_date,
                        run_id: existing.as_ref().map(|r| r.run_id),
                        outcome: None,
                        elapsed: Default::default(),
                    };
                    on_done(&r);
                    results.push(r);
                    continue;
                }
                (Action::Create, _) => {
                    let created = retry_store("creating a backfill run", &stop, || {
                        store.create_run(&dag, RunType::Backfill, step.logical_date, step.interval, conf, RunState::Queued)
                    })
                    .await?;
                    match created {
                        Ok(run) => run.run_id,
                        // Created meanwhile by someone else (another backfill, the scheduler).
                        Err(crate::state::RunExists(run)) => run.run_id,
                    }
                }
                (Action::Resume, Some(r)) => r.run_id,
                (Action::RerunFailed, Some(r)) => {
                    let tis = retry_store("reading a run", &stop, || store.task_instances(r.run_id)).await?;
                    let failed: Vec<(String, i32)> = tis
                        .iter()
                        .filter(|t| matches!(t.state, crate::state::TiState::Failed | crate::state::TiState::UpstreamFailed))
                        .filter_map(|t| dag.task(&t.task_id).map(|d| (t.task_id.clone(), d.retries as i32)))
                        .collect();
                    retry_store("clearing failed tasks", &stop, || store.clear(r.run_id, &failed)).await?;
                    r.run_id
                }
                (Action::RerunAll, Some(r)) => {
                    let all: Vec<(String, i32)> = dag.tasks.iter().map(|t| (t.id.clone(), t.retries as i32)).collect();
                    retry_store("clearing tasks", &stop, || store.clear(r.run_id, &all)).await?;
                    r.run_id
                }
                (_, None) => return Err(RunnerError::State(crate::state::StateError::Invalid("a backfill step has no run".into()))),
            };
            let mut me = runner.clone();
            if Some(step.logical_date) == first {
                me.ignore_past_for = Some(run_id);
            }
            let dag = dag.clone();
            let stop = stop.clone();
            let mut obs = observer();
            let logical_date = step.logical_date;
            active.spawn(async move {
                let started = std::time::Instant::now();
                let outcome = me.drive(dag, run_id, obs.as_mut(), stop).await?;
                Ok(StepResult { logical_date, run_id: Some(run_id), outcome: Some(outcome), elapsed: started.elapsed() })
            });
        }
        match active.join_next().await {
            None => break,
            Some(Ok(Ok(r))) => {
                on_done(&r);
                results.push(r);
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(RunnerError::State(crate::state::StateError::Invalid(format!("driving a run ended abnormally: {e}"))));
            }
        }
    }
    results.sort_by_key(|r| r.logical_date);
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_by_existing_state() {
        let run = |state: RunState| RunRow {
            run_id: 1,
            dag_id: "d".into(),
            run_type: RunType::Backfill,
            logical_date: Utc::now(),
            data_interval_start: Utc::now(),
            data_interval_end: Utc::now(),
            conf: serde_json::json!({}),
            state,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
        };
        assert_eq!(action(None, Reprocess::None), Action::Create);
        assert_eq!(action(Some(&run(RunState::Success)), Reprocess::None), Action::Skip);
        assert_eq!(action(Some(&run(RunState::Failed)), Reprocess::None), Action::Skip);
        assert_eq!(action(Some(&run(RunState::Failed)), Reprocess::Failed), Action::RerunFailed);
        assert_eq!(action(Some(&run(RunState::Success)), Reprocess::Failed), Action::Skip);
        assert_eq!(action(Some(&run(RunState::Success)), Reprocess::All), Action::RerunAll);
        assert_eq!(action(Some(&run(RunState::Running)), Reprocess::None), Action::Resume);
        assert_eq!(action(Some(&run(RunState::Queued)), Reprocess::All), Action::Resume);
    }
}

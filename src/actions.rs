//! What a user does to DAGs and runs (trigger, pause, clear, mark), as
//! library functions shared by the CLI and the web UI: the same checks,
//! the same error text, the same state-store change, whichever front end
//! asked.

use chrono::{DateTime, Utc};

use crate::dag::{Dag, ManualWhen};
use crate::state::{RunExists, RunRow, RunState, RunType, StateError, Store, TiState};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The request itself is wrong (a conf value of the wrong type, a bad
    /// pattern, a state that cannot be set): the CLI exits 78, the web UI
    /// answers 400.
    #[error("{0}")]
    Invalid(String),
    /// A DAG, run or task that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the current state refuses it (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Queues a manual run of `dag` with `conf` (KEY, VALUE as typed by the
/// user) checked against the DAG's typed params.
pub async fn trigger(
    store: &Store,
    dag: &Dag,
    conf: &[(String, String)],
    when: ManualWhen,
    now: DateTime<Utc>,
) -> Result<RunRow, ActionError> {
    let params = dag.resolve_params(conf).map_err(ActionError::Invalid)?;
    let (logical, interval) = dag.manual_interval(when, now).map_err(ActionError::Invalid)?;
    store.sync_dags(&[dag]).await?;
    match store.create_run(dag, RunType::Manual, logical, interval, &params, RunState::Queued).await? {
        Ok(run) => Ok(run),
        Err(RunExists(r)) => Err(ActionError::Conflict(format!(
            "{} already has run {} for logical date {} (state {})",
            dag.dag_id,
            r.run_id,
            r.logical_date.to_rfc3339(),
            r.state
        ))),
    }
}

/// Pauses or unpauses. A DAG whose file does not load right now (`dag` is
/// None) keeps its stored row: the flag is set there, so that a broken
/// file never stops an operator from pausing its runs.
pub async fn set_paused(store: &Store, dag_id: &str, dag: Option<&Dag>, paused: bool) -> Result<(), ActionError> {
    match dag {
        Some(dag) => Ok(store.set_paused(dag, paused).await?),
        None => match store.set_paused_by_id(dag_id, paused).await? {
            true => Ok(()),
            false => Err(ActionError::NotFound(format!("no DAG `{dag_id}` in the dags folder or the state store"))),
        },
    }
}

/// What a clear did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Cleared {
    pub cleared: Vec<String>,
    /// Matched but running: left alone.
    pub running: Vec<String>,
}

/// Which task instances of a run a clear resets.
#[derive(Debug, Default, Clone)]
pub struct ClearSelection {
    /// Only tasks whose id matches this regular expression.
    pub pattern: Option<String>,
    /// Also every task downstream of the matched ones.
    pub downstream: bool,
    /// Only tasks that failed or are upstream_failed.
    pub only_failed: bool,
}

/// Resets the selected task instances of a run to `pending` with a fresh
/// set of retries and queues the run again, so that a daemon (or
/// `sluice run --resume`) runs them.
pub async fn clear(store: &Store, dag: &Dag, run_id: i64, sel: &ClearSelection) -> Result<Cleared, ActionError> {
    let run = run_of(store, dag, run_id).await?;
    let re = match &sel.pattern {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| ActionError::Invalid(format!("`{p}` is not a valid regular expression: {e}")))?),
        None => None,
    };
    let tis = store.task_instances(run.run_id).await?;
    let state_of: std::collections::HashMap<&str, TiState> = tis.iter().map(|t| (t.task_id.as_str(), t.state)).collect();
    let roots: Vec<usize> = dag
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| re.as_ref().is_none_or(|r| r.is_match(&t.id)))
        .filter(|(_, t)| !sel.only_failed || matches!(state_of.get(t.id.as_str()), Some(TiState::Failed | TiState::UpstreamFailed)))
        .map(|(i, _)| i)
        .collect();
    if roots.is_empty() {
        return Ok(Cleared::default());
    }
    let chosen = if sel.downstream { dag.downstream_closure(&roots) } else { roots };
    let tasks: Vec<(String, i32)> = chosen.iter().map(|&i| (dag.tasks[i].id.clone(), dag.tasks[i].retries as i32)).collect();
    let (cleared, running) = store.clear(run.run_id, &tasks).await?;
    Ok(Cleared { cleared, running })
}

/// What a mark did: each instance marked with its state before, and the
/// downstream ones left alone because they were running.
#[derive(Debug, Default, serde::Serialize)]
pub struct Marked {
    pub marked: Vec<(String, TiState)>,
    pub running: Vec<String>,
}

/// Sets a task instance's state by hand (`success` or `failed`), as
/// Airflow's "mark success/failed", and with `downstream` every task
/// downstream of it too. A running instance is refused (its try ends in a
/// state it records itself); running downstream ones are left alone. A
/// finished run is queued again so that its state is worked out anew
/// (downstream tasks that were skipped or upstream_failed stay so until
/// cleared or marked).
pub async fn mark(store: &Store, dag: &Dag, run_id: i64, task_id: &str, state: TiState, downstream: bool) -> Result<Marked, ActionError> {
    if !matches!(state, TiState::Success | TiState::Failed) {
        return Err(ActionError::Invalid(format!("a task instance can be marked success or failed, not {state}")));
    }
    let run = run_of(store, dag, run_id).await?;
    let Some(root) = dag.task_index(task_id) else {
        let hint = crate::diag::hint(task_id, dag.tasks.iter().map(|t| t.id.as_str()));
        return Err(ActionError::NotFound(format!("DAG `{}` has no task `{task_id}`{hint}", dag.dag_id)));
    };
    let chosen = if downstream { dag.downstream_closure(&[root]) } else { vec![root] };
    let mut done = Marked::default();
    for i in chosen {
        let id = &dag.tasks[i].id;
        match store.mark(run.run_id, id, state).await? {
            Some(TiState::Running) if i == root => {
                return Err(ActionError::Conflict(format!(
                    "{task_id} of run {run_id} is running; wait for its try to end (or for its timeout) and mark it then"
                )));
            }
            Some(TiState::Running) => done.running.push(id.clone()),
            Some(before) => done.marked.push((id.clone(), before)),
            None if i == root => {
                return Err(ActionError::NotFound(format!("run {run_id} has no instance of `{task_id}` (the DAG changed since the run?)")));
            }
            None => {}
        }
    }
    Ok(done)
}

/// The run, checked to belong to the DAG.
async fn run_of(store: &Store, dag: &Dag, run_id: i64) -> Result<RunRow, ActionError> {
    let run = store.run(run_id).await?.ok_or_else(|| ActionError::NotFound(format!("run {run_id} does not exist")))?;
    if run.dag_id != dag.dag_id {
        return Err(ActionError::Invalid(format!("run {run_id} belongs to DAG `{}`, not `{}`", run.dag_id, dag.dag_id)));
    }
    Ok(run)
}

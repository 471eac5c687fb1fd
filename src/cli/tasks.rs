//! `sluice tasks test` (one task alone, nothing recorded) and `sluice tasks
//! clear` (task instances of a run made runnable again).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::App;
use crate::dag::duration::format_elapsed;
use crate::state::RunRow;

#[derive(Subcommand, Debug)]
pub enum TasksCmd {
    /// Run one task alone, without its dependencies and without recording
    /// anything in the state store (like `airflow tasks test`).
    Test {
        dag: String,
        task: String,
        #[command(flatten)]
        interval: super::IntervalArgs,
        /// Read upstream datasets from this run (default: the DAG's run for the same date, if any).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<i64>,
    },
    /// Reset task instances of a run so that `sluice run --resume` runs them again.
    Clear {
        /// The DAG.
        dag: String,
        /// The run whose tasks are reset.
        #[arg(long, value_name = "RUN_ID")]
        run: i64,
        /// Only tasks whose id matches this regular expression.
        #[arg(long, value_name = "REGEX")]
        task: Option<String>,
        /// Also clear every task downstream of the matched ones.
        #[arg(long)]
        downstream: bool,
        /// Only tasks that failed or are upstream_failed.
        #[arg(long)]
        only_failed: bool,
    },
    /// Set a task instance's state by hand (Airflow's "mark success/failed").
    Mark {
        /// The DAG.
        dag: String,
        /// The task.
        task: String,
        /// The run.
        #[arg(long, value_name = "RUN_ID")]
        run: i64,
        /// The state to set.
        #[arg(long, value_enum)]
        state: MarkState,
        /// Also every task downstream of it.
        #[arg(long)]
        downstream: bool,
    },
}

/// The states `tasks mark` sets.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum MarkState {
    Success,
    Failed,
}

pub async fn run(app: &App, cmd: TasksCmd) -> Result<ExitCode> {
    match cmd {
        TasksCmd::Test { dag, task, interval, run } => test(app, &dag, &task, &interval, run).await,
        TasksCmd::Clear { dag, run, task, downstream, only_failed } => {
            clear(app, &dag, run, crate::actions::ClearSelection { pattern: task, downstream, only_failed }).await
        }
        TasksCmd::Mark { dag, task, run, state, downstream } => mark(app, &dag, run, &task, state, downstream).await,
    }
}

async fn test(app: &App, dag_id: &str, task_id: &str, args: &super::IntervalArgs, run_id: Option<i64>) -> Result<ExitCode> {
    let (dag, conns) = match super::load_dag(app, dag_id)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let Some(task) = dag.task(task_id) else {
        let hint = crate::diag::hint(task_id, dag.tasks.iter().map(|t| t.id.as_str()));
        return Ok(super::config_exit(&format!("DAG `{dag_id}` has no task `{task_id}`{hint}")));
    };
    let when = args.when()?;
    let params = match super::conf_params(&dag, &args.conf)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let (logical, interval) = dag.manual_interval(when, chrono::Utc::now()).map_err(anyhow::Error::msg)?;

    // Upstream datasets come from an existing run when there is one; the
    // state store is only read, never written.
    let mut inputs = Default::default();
    let mut upstream = Default::default();
    if app.global.database_url.is_some() {
        let store = app.store().await?;
        let source = match run_id {
            Some(id) => store.run(id).await?,
            None => store.find_run(&dag.dag_id, logical).await?,
        };
        if let Some(r) = source {
            let outputs = store.outputs(r.run_id).await?;
            upstream = crate::runner::exec::upstream_of(task, &dag, &outputs);
            inputs = crate::runner::exec::datasets_of(task, &dag, outputs);
        }
    } else if run_id.is_some() {
        bail!("--run needs the state database (SLUICE_DATABASE_URL)");
    }
    let res = app.checked_resources(conns).await?;
    let fake_run = RunRow::unrecorded(&dag.dag_id, logical, interval, params);
    let log = crate::tasks::TryLog::echoing();
    let guard = crate::logging::capture(&log);
    let span = tracing::warn_span!("try", log_key = guard.0, dag = %dag.dag_id, task = %task.id, try_number = 1);
    let started = std::time::Instant::now();
    // A throwaway runner: no worker row, no heartbeat, nothing recorded.
    let store = match app.global.database_url.is_some() {
        true => Some(app.store().await?),
        false => None,
    };
    let result = {
        use tracing::Instrument;
        if let Some(st) = &store {
            let _ = res.pipeline.set(std::sync::Arc::new(st.clone()));
        }
        let ctx = crate::runner::exec::task_ctx(res, &dag, task, &fake_run, 1, inputs, upstream, log.clone(), true, None, None)?;
        eprintln!("testing {}.{} for {} (nothing is recorded)", dag.dag_id, task.id, logical.with_timezone(&dag.timezone).to_rfc3339());
        let fut = std::panic::AssertUnwindSafe(crate::runner::exec::run_with_timeout(&dag, task, &ctx));
        match futures::FutureExt::catch_unwind(fut).instrument(span).await {
            Ok(r) => r,
            Err(p) => Err(crate::tasks::TaskError::Panic(crate::tasks::error::panic_message(p.as_ref()))),
        }
    };
    drop(store);
    drop(guard);
    match result {
        Ok(o) => {
            let note = o.note.clone().unwrap_or_default();
            let state = if o.skipped { "skipped" } else { "success" };
            eprintln!("{} {state} in {}: {note}", task.id, format_elapsed(started.elapsed()));
            if !o.metrics.is_empty() || o.dataset.is_some() {
                outln!("{}", serde_json::to_string_pretty(&o)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{} failed in {}: {}", task.id, format_elapsed(started.elapsed()), crate::secrets::mask(&e.to_string()));
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn clear(app: &App, dag_id: &str, run_id: i64, sel: crate::actions::ClearSelection) -> Result<ExitCode> {
    let (dag, _) = match super::load_dag(app, dag_id)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let store = app.store().await?;
    let done = match crate::actions::clear(&store, &dag, run_id, &sel).await {
        Ok(d) => d,
        Err(e) => return super::action_exit(e),
    };
    if done.cleared.is_empty() && done.running.is_empty() {
        outln!("no task instance of run {run_id} matches; nothing cleared");
        return Ok(ExitCode::SUCCESS);
    }
    let n = done.cleared.len();
    outln!("cleared {n} task instance{} of run {run_id}: {}", if n == 1 { "" } else { "s" }, done.cleared.join(", "));
    if !done.running.is_empty() {
        outln!("left alone because they are running: {}", done.running.join(", "));
    }
    outln!("a running daemon picks the run up again; without one: `sluice run {} --resume {run_id}`", dag.dag_id);
    Ok(ExitCode::SUCCESS)
}

async fn mark(app: &App, dag_id: &str, run_id: i64, task_id: &str, state: MarkState, downstream: bool) -> Result<ExitCode> {
    let (dag, _) = match super::load_dag(app, dag_id)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let store = app.store().await?;
    let to = match state {
        MarkState::Success => crate::state::TiState::Success,
        MarkState::Failed => crate::state::TiState::Failed,
    };
    match crate::actions::mark(&store, &dag, run_id, task_id, to, downstream).await {
        Ok(done) => {
            for (task, before) in &done.marked {
                outln!("{task} of run {run_id} marked {to} (was {before})");
            }
            if !done.running.is_empty() {
                outln!("left alone because they are running: {}", done.running.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => super::action_exit(e),
    }
}

//! `sluice run`, `sluice tasks test`, `sluice tasks clear`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets};
use tokio_util::sync::CancellationToken;

use super::App;
use super::progress::{Progress, first_line};
use crate::dag::Dag;
use crate::dag::duration::format_elapsed;
use crate::runner::{RunOutcome, Runner};
use crate::state::{RunRow, Store};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The DAG to run.
    pub dag: String,
    #[command(flatten)]
    pub interval: super::IntervalArgs,
    /// Continue an existing run (after `sluice tasks clear`, an interruption or a crash).
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["date", "logical_date", "conf", "rerun"])]
    pub resume: Option<i64>,
    /// When the DAG already has a run for this date, clear all its tasks and run it again.
    #[arg(long)]
    pub rerun: bool,
    /// Tasks run at once by this process (the DAG's max_active_tasks also applies).
    #[arg(long, default_value_t = 32)]
    pub parallelism: usize,
    /// Print task logs on stderr as they are written.
    #[arg(long)]
    pub follow: bool,
}

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
}

pub async fn run(app: &App, args: RunArgs) -> Result<ExitCode> {
    let (dag, conns) = match super::load_dag(app, &args.dag)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let store = app.store().await?;
    store.sync_dags(&[dag.as_ref()]).await?;

    let run = match args.resume {
        Some(id) => {
            let run = store.run(id).await?.with_context(|| format!("run {id} does not exist; `sluice runs list` shows runs"))?;
            if run.dag_id != dag.dag_id {
                bail!("run {id} belongs to DAG `{}`, not `{}`", run.dag_id, dag.dag_id);
            }
            run
        }
        None => {
            let when = args.interval.when()?;
            let params = match super::conf_params(&dag, &args.interval.conf)? {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let (logical, interval) = dag.manual_interval(when, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
            match store.create_run(&dag, "manual", logical, interval, &params, "running").await? {
                Ok(run) => run,
                Err(crate::state::RunExists(existing)) if args.rerun => {
                    let all: Vec<(String, i32)> = dag.tasks.iter().map(|t| (t.id.clone(), t.retries as i32)).collect();
                    let (_, running) = store.clear(existing.run_id, &all).await?;
                    if !running.is_empty() {
                        bail!(
                            "run {} has running tasks ({}); wait for them or stop their worker first",
                            existing.run_id,
                            running.join(", ")
                        );
                    }
                    store.set_run_conf(existing.run_id, &params).await?;
                    store.run(existing.run_id).await?.context("the run vanished")?
                }
                Err(crate::state::RunExists(existing)) => {
                    bail!(
                        "DAG `{}` already has run {} for logical date {} (state {}); continue it with `sluice run {} --resume {}`, or run it again from scratch with `--rerun`",
                        dag.dag_id,
                        existing.run_id,
                        existing.logical_date.with_timezone(&dag.timezone).to_rfc3339(),
                        existing.state,
                        dag.dag_id,
                        existing.run_id
                    );
                }
            }
        }
    };

    let res = app.checked_resources(conns).await?;
    let mut runner = Runner::new(store.clone(), res);
    runner.parallelism = args.parallelism.max(1);
    runner.echo_logs = args.follow;
    store.register_worker(&runner.worker, "run").await?;
    let stop = CancellationToken::new();
    let hb_stop = CancellationToken::new();
    let hb = runner.spawn_heartbeat(hb_stop.clone());
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping running tasks (press Ctrl-C again to force)");
                stop.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    crate::process::kill_all_before_exit();
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(unix)]
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                s.recv().await;
                stop.cancel();
            }
        });
    }

    eprintln!("{}", header(&dag, &run));
    let width = dag.tasks.iter().map(|t| t.id.len()).max().unwrap_or(4);
    let mut progress = Progress::new(width);
    let started = std::time::Instant::now();
    let outcome = runner.drive(dag.clone(), run.run_id, &mut progress, stop).await;
    hb_stop.cancel();
    let _ = hb.await;
    store.stop_worker(&runner.worker).await.ok();
    let outcome = outcome?;
    print_summary(&store, &dag, run.run_id, started.elapsed()).await?;
    Ok(match outcome {
        RunOutcome::Success => {
            eprintln!("run {} of {} succeeded in {}", run.run_id, dag.dag_id, format_elapsed(started.elapsed()));
            ExitCode::SUCCESS
        }
        RunOutcome::Failed => {
            eprintln!(
                "run {} of {} failed; see `sluice logs {} TASK`, fix, then `sluice tasks clear {} --run {} --only-failed` and `sluice run {} --resume {}`",
                run.run_id, dag.dag_id, run.run_id, dag.dag_id, run.run_id, dag.dag_id, run.run_id
            );
            ExitCode::FAILURE
        }
        RunOutcome::Interrupted => {
            eprintln!("run {} interrupted; continue it with `sluice run {} --resume {}`", run.run_id, dag.dag_id, run.run_id);
            ExitCode::from(130)
        }
    })
}

fn header(dag: &Dag, run: &RunRow) -> String {
    let tz = dag.timezone;
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    format!(
        "run {} of {}: logical date {}, data interval [{}, {}) {}, {} tasks",
        run.run_id,
        dag.dag_id,
        fmt(run.logical_date),
        fmt(run.data_interval_start),
        fmt(run.data_interval_end),
        tz,
        dag.tasks.len()
    )
}

/// Prints the run's task table on stdout.
pub async fn print_summary(store: &Store, dag: &Dag, run_id: i64, elapsed: std::time::Duration) -> Result<()> {
    let tis = store.task_instances(run_id).await?;
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN);
    t.set_header(["task", "state", "tries", "duration", "details"]);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for ti in &tis {
        *counts.entry(ti.state.clone()).or_default() += 1;
        let dur = match (ti.started_at, ti.ended_at) {
            (Some(a), Some(b)) => format_elapsed((b - a).to_std().unwrap_or_default()),
            _ => String::new(),
        };
        let details = match &ti.error {
            Some(e) => first_line(e),
            None => ti.output.as_ref().and_then(|o| o.get("note")).and_then(|n| n.as_str()).unwrap_or_default().to_string(),
        };
        t.add_row([ti.task_id.clone(), ti.state.clone(), ti.try_number.to_string(), dur, details]);
    }
    outln!("{t}");
    // Failure notices: where each went, or that it was lost.
    for ti in tis.iter().filter(|ti| ti.notice.is_some()) {
        outln!("{}: {}", ti.task_id, crate::secrets::mask(ti.notice.as_deref().unwrap_or_default()));
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    outln!("{}: {} in {}", dag.dag_id, parts.join(", "), format_elapsed(elapsed));
    Ok(())
}

pub async fn tasks(app: &App, cmd: TasksCmd) -> Result<ExitCode> {
    match cmd {
        TasksCmd::Test { dag, task, interval, run } => test(app, &dag, &task, &interval, run).await,
        TasksCmd::Clear { dag, run, task, downstream, only_failed } => {
            clear(app, &dag, run, task.as_deref(), downstream, only_failed).await
        }
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
    let fake_run = RunRow {
        run_id: 0,
        dag_id: dag.dag_id.clone(),
        run_type: "test".into(),
        logical_date: logical,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        conf: serde_json::Value::Object(params),
        state: "running".into(),
        created_at: chrono::Utc::now(),
        started_at: None,
        ended_at: None,
    };
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
        let ctx = crate::runner::exec::task_ctx(res, &dag, task, &fake_run, 1, inputs, upstream, log.clone(), true)?;
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

async fn clear(app: &App, dag_id: &str, run_id: i64, pattern: Option<&str>, downstream: bool, only_failed: bool) -> Result<ExitCode> {
    let (dag, _) = match super::load_dag(app, dag_id)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let store = app.store().await?;
    let run = store.run(run_id).await?.with_context(|| format!("run {run_id} does not exist"))?;
    if run.dag_id != dag.dag_id {
        bail!("run {run_id} belongs to DAG `{}`, not `{}`", run.dag_id, dag.dag_id);
    }
    let re = match pattern {
        Some(p) => Some(regex::Regex::new(p).with_context(|| format!("--task {p} is not a valid regular expression"))?),
        None => None,
    };
    let tis = store.task_instances(run_id).await?;
    let state_of: std::collections::HashMap<&str, crate::state::TiState> = tis.iter().map(|t| (t.task_id.as_str(), t.state())).collect();
    let mut roots: Vec<usize> = Vec::new();
    for (i, t) in dag.tasks.iter().enumerate() {
        if re.as_ref().is_some_and(|r| !r.is_match(&t.id)) {
            continue;
        }
        if only_failed
            && !matches!(state_of.get(t.id.as_str()), Some(crate::state::TiState::Failed | crate::state::TiState::UpstreamFailed))
        {
            continue;
        }
        roots.push(i);
    }
    if roots.is_empty() {
        outln!("no task instance of run {run_id} matches; nothing cleared");
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = if downstream { dag.downstream_closure(&roots) } else { roots };
    let tasks: Vec<(String, i32)> = chosen.iter().map(|&i| (dag.tasks[i].id.clone(), dag.tasks[i].retries as i32)).collect();
    let (cleared, running) = store.clear(run_id, &tasks).await?;
    outln!("cleared {} task instance{} of run {run_id}: {}", cleared.len(), if cleared.len() == 1 { "" } else { "s" }, cleared.join(", "));
    if !running.is_empty() {
        outln!("left alone because they are running: {}", running.join(", "));
    }
    outln!("run them with `sluice run {} --resume {run_id}`", dag.dag_id);
    Ok(ExitCode::SUCCESS)
}

//! `sluice run`: one DAG run in the foreground, with live progress and a
//! summary.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
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
            match store.create_run(&dag, crate::state::RunType::Manual, logical, interval, &params, crate::state::RunState::Running).await?
            {
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
        *counts.entry(ti.state.to_string()).or_default() += 1;
        let dur = match (ti.started_at, ti.ended_at) {
            (Some(a), Some(b)) => format_elapsed((b - a).to_std().unwrap_or_default()),
            _ => String::new(),
        };
        let details = match &ti.error {
            Some(e) => first_line(e),
            None => ti.output.as_ref().and_then(|o| o.get("note")).and_then(|n| n.as_str()).unwrap_or_default().to_string(),
        };
        t.add_row([ti.task_id.clone(), ti.state.to_string(), ti.try_number.to_string(), dur, details]);
    }
    outln!("{t}");
    // Failure notices: where each went, or that it was lost.
    for ti in tis.iter().filter(|ti| ti.notice.is_some()) {
        outln!("{}: {}", ti.task_id, crate::secrets::mask(ti.notice.as_deref().unwrap_or_default()));
    }
    if let Some(n) = store.run_notice(run_id).await? {
        outln!("run: {}", crate::secrets::mask(&n));
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    outln!("{}: {} in {}", dag.dag_id, parts.join(", "), format_elapsed(elapsed));
    Ok(())
}

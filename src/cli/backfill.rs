//! `sluice backfill`

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::App;
use crate::dag::Dag;
use crate::dag::duration::format_elapsed;
use crate::runner::backfill::{self, Action, Reprocess, StepResult};
use crate::runner::{Quiet, RunOutcome, Runner};

#[derive(Args, Debug)]
pub struct BackfillArgs {
    /// The DAG to backfill.
    pub dag: String,
    /// The first day (YYYY-MM-DD, in the DAG's time zone).
    #[arg(long)]
    pub from: chrono::NaiveDate,
    /// The last day, included.
    #[arg(long)]
    pub to: chrono::NaiveDate,
    /// What to do with runs that already exist.
    #[arg(long, value_enum, default_value = "none")]
    pub reprocess: Reprocess,
    /// Runs at once (default: the DAG's max_active_runs).
    #[arg(long)]
    pub max_active_runs: Option<usize>,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Override a param for every run: KEY=VALUE.
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    pub conf: Vec<String>,
}

pub async fn run(app: &App, args: BackfillArgs) -> Result<ExitCode> {
    let (dag, conns) = match super::load_dag(app, &args.dag)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let params = match super::conf_params(&dag, &args.conf)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = app.store().await?;
    store.sync_dags(&[dag.as_ref()]).await?;
    let runner = Runner::new(store.clone(), app.checked_resources(conns).await?);
    let summary = backfill_dag(&runner, dag, args.from, args.to, args.reprocess, args.max_active_runs, args.dry_run, &params).await?;
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Default)]
pub struct BackfillSummary {
    pub ran: usize,
    pub skipped: usize,
    pub failed: usize,
    pub interrupted: bool,
}

/// Plans and runs a backfill, printing one line per interval. Shared with
/// `sluice demo`.
pub async fn backfill_dag(
    runner: &Runner,
    dag: Arc<Dag>,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    reprocess: Reprocess,
    max_active: Option<usize>,
    dry_run: bool,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<BackfillSummary> {
    let steps = backfill::plan(runner, &dag, from, to, reprocess).await.context("planning the backfill")?;
    let tz = dag.timezone;
    // With the offset: an hour that happens twice must read as two.
    let day = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M%:z").to_string();
    let mut summary = BackfillSummary::default();
    let count = |a: &Action| steps.iter().filter(|s| &s.action == a).count();
    eprintln!(
        "backfill {} from {from} to {to}: {} intervals ({} to create, {} to resume, {} to rerun, {} to skip)",
        dag.dag_id,
        steps.len(),
        count(&Action::Create),
        count(&Action::Resume),
        count(&Action::RerunFailed) + count(&Action::RerunAll),
        count(&Action::Skip),
    );
    if dry_run {
        for s in &steps {
            let existing = s.existing.as_ref().map(|r| format!(" (run {}, {})", r.run_id, r.state)).unwrap_or_default();
            outln!("  {}  {:?}{existing}", day(s.logical_date), s.action);
        }
        return Ok(summary);
    }
    runner.store.register_worker(&runner.worker, "backfill").await?;
    let hb_stop = CancellationToken::new();
    let hb = runner.spawn_heartbeat(hb_stop.clone());
    let stop = CancellationToken::new();
    {
        // Ctrl-C and SIGTERM stop the running tries (requeued, not failed)
        // and end the backfill; running the same command again resumes it.
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            eprintln!("\ninterrupted: the runs in progress are stopped; run the same backfill again to continue");
            stop.cancel();
        });
    }
    let max = max_active.unwrap_or(dag.max_active_runs as usize).max(1);
    let started = std::time::Instant::now();
    let mut on_done = |r: &StepResult| {
        let run = r.run_id.map(|i| format!("run {i}")).unwrap_or_default();
        match r.outcome {
            None => {
                summary.skipped += 1;
                outln!("  {}  - skipped (already done)   {run}", day(r.logical_date));
            }
            Some(RunOutcome::Success) => {
                summary.ran += 1;
                outln!("  {}  ✓ success  {:>8}  {run}", day(r.logical_date), format_elapsed(r.elapsed));
            }
            Some(RunOutcome::Failed) => {
                summary.ran += 1;
                summary.failed += 1;
                outln!(
                    "  {}  ✗ failed   {:>8}  {run}: see `sluice runs show {}`",
                    day(r.logical_date),
                    format_elapsed(r.elapsed),
                    r.run_id.unwrap_or(0)
                );
            }
            Some(RunOutcome::Interrupted) => {
                summary.interrupted = true;
                outln!("  {}  ~ interrupted          {run}", day(r.logical_date));
            }
        }
    };
    let result = backfill::execute(runner, dag.clone(), steps, params, max, stop.clone(), || Box::new(Quiet), &mut on_done).await;
    hb_stop.cancel();
    let _ = hb.await;
    runner.store.stop_worker(&runner.worker).await.ok();
    result.with_context(|| format!("the backfill of {} stopped; run the same command again to resume it", dag.dag_id))?;
    if stop.is_cancelled() {
        summary.interrupted = true;
    }
    eprintln!(
        "backfill of {}: {} ran ({} failed), {} skipped, in {}",
        dag.dag_id,
        summary.ran,
        summary.failed,
        summary.skipped,
        format_elapsed(started.elapsed())
    );
    Ok(summary)
}

//! `sluice runs ...` and `sluice logs`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets};

use super::App;
use super::progress::first_line;
use crate::dag::duration::format_elapsed;

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// List runs, newest logical date first.
    List {
        /// Only this DAG's runs.
        dag: Option<String>,
        /// Only runs in this state: queued, running, success, failed.
        #[arg(long)]
        state: Option<crate::state::RunState>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a run and every task: state, try, start, duration, error.
    Show {
        run_id: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The run (see `sluice runs list`).
    pub run_id: i64,
    /// The task id.
    pub task: String,
    /// Which try (default: the latest).
    #[arg(long = "try", value_name = "N")]
    pub try_number: Option<i32>,
    /// A mapped task's instance (`expand`): the log of `TASK[N]`.
    #[arg(long, value_name = "N")]
    pub map_index: Option<usize>,
}

fn dur(a: Option<chrono::DateTime<chrono::Utc>>, b: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format_elapsed((b - a).to_std().unwrap_or_default()),
        (Some(a), None) => format!("{} so far", format_elapsed((chrono::Utc::now() - a).to_std().unwrap_or_default())),
        _ => String::new(),
    }
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub async fn run(app: &App, cmd: RunsCmd) -> Result<ExitCode> {
    let store = app.store().await?;
    match cmd {
        RunsCmd::List { dag, state, limit, json } => {
            let runs = store.list_runs(dag.as_deref(), state, limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&runs)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(presets::ASCII_MARKDOWN);
            t.set_header(["run_id", "dag_id", "type", "logical_date", "state", "started", "duration"]);
            for r in &runs {
                t.add_row([
                    r.run_id.to_string(),
                    r.dag_id.clone(),
                    r.run_type.to_string(),
                    r.logical_date.to_rfc3339(),
                    r.state.to_string(),
                    ts(r.started_at),
                    dur(r.started_at, r.ended_at),
                ]);
            }
            outln!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Show { run_id, json } => {
            let run = store.run(run_id).await?.with_context(|| format!("run {run_id} does not exist; `sluice runs list` shows runs"))?;
            let tis = store.task_instances(run_id).await?;
            // Whether the DAG file changed since the run was created.
            let ran = store.run_dag_version(run_id).await?.map(|(h, _)| h);
            let now = app.load(true).ok().and_then(|(bag, _)| bag.dags.get(&run.dag_id).map(|d| d.file_hash.clone()));
            let changed = matches!((&ran, &now), (Some(a), Some(b)) if a != b);
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "run": run, "tasks": tis, "dag_hash": ran, "dag_changed_since": changed })
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "run {} of {} ({}): {}\n  logical date {}, data interval [{}, {})\n  conf {}\n  started {}, {}",
                run.run_id,
                run.dag_id,
                run.run_type,
                run.state,
                run.logical_date.to_rfc3339(),
                run.data_interval_start.to_rfc3339(),
                run.data_interval_end.to_rfc3339(),
                run.conf,
                ts(run.started_at),
                if run.ended_at.is_some() { format!("took {}", dur(run.started_at, run.ended_at)) } else { "not finished".into() }
            );
            let mut t = Table::new();
            t.load_preset(presets::ASCII_MARKDOWN);
            t.set_header(["task", "state", "try", "started", "duration", "error / result"]);
            for ti in &tis {
                let detail = match &ti.error {
                    Some(e) => first_line(&crate::secrets::mask(e)),
                    None => ti.output.as_ref().and_then(|o| o.get("note")).and_then(|n| n.as_str()).unwrap_or_default().to_string(),
                };
                t.add_row([
                    ti.task_id.clone(),
                    ti.state.to_string(),
                    format!("{}/{}", ti.try_number, ti.max_tries),
                    ts(ti.started_at),
                    dur(ti.started_at, ti.ended_at),
                    detail,
                ]);
            }
            outln!("{t}");
            if changed {
                outln!(
                    "The DAG file has changed since this run was created; `sluice dags show {} --run {run_id}` draws the version that ran.",
                    run.dag_id
                );
            }
            for ti in tis.iter().filter(|ti| ti.notice.is_some()) {
                outln!("{}: {}", ti.task_id, crate::secrets::mask(ti.notice.as_deref().unwrap_or_default()));
            }
            if let Some(n) = store.run_notice(run_id).await? {
                outln!("run: {}", crate::secrets::mask(&n));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn logs(app: &App, mut args: LogsArgs) -> Result<ExitCode> {
    if let Some(n) = args.map_index {
        args.task = crate::dag::map_id(&args.task, n);
    }
    let store = app.store().await?;
    store.run(args.run_id).await?.with_context(|| format!("run {} does not exist", args.run_id))?;
    match store.try_log(args.run_id, &args.task, args.try_number).await? {
        Some((n, state, log)) => {
            eprintln!("# run {}, task {}, try {n} ({state})", args.run_id, args.task);
            out!("{}", crate::secrets::mask(&log));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let tis = store.task_instances(args.run_id).await?;
            if !tis.iter().any(|t| t.task_id == args.task) {
                let hint = crate::diag::hint(&args.task, tis.iter().map(|t| t.task_id.as_str()));
                anyhow::bail!("run {} has no task `{}`{hint}", args.run_id, args.task);
            }
            match args.try_number {
                Some(n) => anyhow::bail!("task `{}` of run {} has no try {n}", args.task, args.run_id),
                None => anyhow::bail!("task `{}` of run {} has not run yet", args.task, args.run_id),
            }
        }
    }
}

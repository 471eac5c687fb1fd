//! `sluice demo`: the shop's whole job on a fresh machine. Starts a private
//! PostgreSQL if none is configured, generates the raw exports, backfills
//! the daily ETL over them, grades the customers, and prints a summary.
//! Safe to run again: finished runs are skipped and the data is the same.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::App;
use crate::connections::Connections;
use crate::dag::duration::format_elapsed;
use crate::runner::backfill::Reprocess;
use crate::runner::{Quiet, Runner};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub shop: super::ShopArgs,
    /// Generate clean data (by default the demo injects faults to show the quarantine).
    #[arg(long)]
    pub clean: bool,
}

pub async fn run(app: &App, args: DemoArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let root = app.project.root.clone();

    // 1. A database.
    let (url, private) = match &app.global.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let dir = root.join(".sluice/pg");
            let pg = tokio::task::spawn_blocking(move || crate::pgsetup::ensure(&dir)).await??;
            eprintln!(
                "{} a private PostgreSQL in {} ({})",
                if pg.started { "started" } else { "using" },
                crate::loader::display_path(&pg.dir).display(),
                pg.url
            );
            (pg.url.clone(), Some(pg))
        }
    };
    crate::secrets::register_uri(&url);
    let store = crate::state::Store::connect(&url, &app.global.schema).await.context("connecting to the state database")?;
    eprintln!("state store ready (schema `{}`)", store.schema());

    // 2. The raw exports.
    let out = root.join(crate::generate::DEFAULT_OUT);
    let opts = args.shop.options(out.clone(), !args.clean);
    // Exports made afresh (other options, a newer generator) invalidate what
    // earlier demos loaded: every run below is then done again.
    let fresh = !crate::generate::is_generated(&opts);
    if !fresh {
        eprintln!("raw exports already generated in {} (same options)", crate::loader::display_path(&out).display());
    } else {
        let t = std::time::Instant::now();
        let o = opts.clone();
        let s = tokio::task::spawn_blocking(move || crate::generate::generate(&o)).await??;
        eprintln!(
            "generated {} days of exports in {}: {} users, {} products, {} orders, {} visit events, {} injected faults ({})",
            s.days,
            crate::loader::display_path(&out).display(),
            s.users,
            s.products,
            s.orders,
            s.visit_lines,
            s.faults,
            format_elapsed(t.elapsed())
        );
    }

    // 3. The DAGs, with the warehouse on this database.
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert("SLUICE_DATABASE_URL".into(), url.clone());
    let (conns, diags) = Connections::load_with(&root, true, &env);
    for d in diags.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    let conns = Arc::new(conns);
    let files = crate::loader::dag_files(std::slice::from_ref(&app.project.dags_dir)).map_err(anyhow::Error::msg)?;
    let bag = crate::loader::load(&files, &root, &conns, &app.templates);
    let etl = bag.get("ecommerce_etl").map_err(anyhow::Error::msg)?;
    let grades = bag.get("grade_update").map_err(anyhow::Error::msg)?;
    store.sync_dags(&[etl.as_ref(), grades.as_ref()]).await?;
    let runner = Runner::new(store.clone(), app.resources(conns)?);

    // 4. The daily ETL over every generated day.
    let last = args.shop.start + chrono::Duration::days(args.shop.days as i64 - 1);
    let etl_params = etl.resolve_params(&[]).map_err(anyhow::Error::msg)?;
    let summary = super::backfill::backfill_dag(&runner, etl.clone(), args.shop.start, last, redo(fresh), None, false, &etl_params).await?;
    if summary.failed > 0 {
        bail!("{} ETL run(s) failed; `sluice runs list ecommerce_etl --state failed` shows them", summary.failed);
    }

    // 5. Grades through the demo window. The shipped schedule grades every
    // ten minutes (12,960 ticks for 90 days); the demo runs one tick a day,
    // the last of each day (23:50, grading as of midnight), in order, so the
    // grade history has the real upgrades and downgrades of each day.
    let params = grades.resolve_params(&[]).map_err(anyhow::Error::msg)?;
    if fresh {
        // Grades are state carried from one tick to the next: start over,
        // and have the first grading grade everyone (`shop.grading`: the
        // reset is not a grade set by hand for the next grading to read).
        sqlx::raw_sql(
            "SET shop.grading = on; UPDATE shop.users SET grade = 'BRONZE', grade_updated_at = NULL;
             DELETE FROM shop.grade_history; DELETE FROM shop.grade_state",
        )
        .execute(&mut <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?)
        .await
        .context("resetting the grades of an earlier demo")?;
    }
    let (mut graded, mut already) = (0, 0);
    let t = std::time::Instant::now();
    store.register_worker(&runner.worker, "demo").await?;
    let mut day = args.shop.start;
    while day <= last {
        let midnight = crate::dag::schedule::local_midnight(day.succ_opt().unwrap_or(day), grades.timezone);
        let tick = crate::dag::ManualWhen::Logical(midnight - chrono::Duration::minutes(10));
        match run_once(&runner, &grades, tick, &params, fresh, crate::state::RunType::Backfill).await? {
            (_, false) => already += 1,
            (run, true) if run.state != crate::state::RunState::Success => {
                store.stop_worker(&runner.worker).await.ok();
                bail!("the grade update as of {midnight} failed; see `sluice runs show {}`", run.run_id);
            }
            _ => graded += 1,
        }
        day = day.succ_opt().unwrap_or(day);
    }
    store.stop_worker(&runner.worker).await.ok();
    if graded > 0 {
        eprintln!(
            "graded every customer at the end of each day: {graded} grade run(s) in {}{}",
            format_elapsed(t.elapsed()),
            if already > 0 { format!(", {already} already done") } else { String::new() }
        );
    } else {
        eprintln!("grades of all {already} days already computed");
    }

    // 6. The weekly report of the last full Monday-to-Sunday week.
    let report = bag.get("weekly_report").map_err(anyhow::Error::msg)?;
    store.sync_dags(&[report.as_ref()]).await?;
    use chrono::Datelike;
    let sunday = last - chrono::Duration::days(last.weekday().num_days_from_sunday() as i64);
    let monday = sunday - chrono::Duration::days(6);
    let mut report_lines = Vec::new();
    if monday >= args.shop.start {
        let params = report.resolve_params(&[]).map_err(anyhow::Error::msg)?;
        // Redo a finished report whose PDF is gone.
        let existing = report.manual_interval(crate::dag::ManualWhen::Date(monday), chrono::Utc::now()).map_err(anyhow::Error::msg)?;
        let pdf_gone = match store.find_run(&report.dag_id, existing.0).await? {
            Some(r) => !store
                .outputs(r.run_id)
                .await?
                .get("weekly_report")
                .and_then(|o| o.pointer("/artifacts/local").and_then(|v| v.as_str()).map(|p| std::path::Path::new(p).exists()))
                .unwrap_or(false),
            None => false,
        };
        store.register_worker(&runner.worker, "demo").await?;
        let (run, _) =
            run_once(&runner, &report, crate::dag::ManualWhen::Date(monday), &params, fresh || pdf_gone, crate::state::RunType::Manual)
                .await?;
        store.stop_worker(&runner.worker).await.ok();
        if run.state != crate::state::RunState::Success {
            bail!("the weekly report failed; see `sluice runs show {}`", run.run_id);
        }
        let outputs = store.outputs(run.run_id).await?;
        if let Some(pdf) = outputs.get("weekly_report").and_then(|o| o.pointer("/artifacts/local")).and_then(|v| v.as_str()) {
            report_lines.push(format!("  PDF    {}", crate::loader::display_path(std::path::Path::new(pdf)).display()));
        }
        if let Some(eml) = outputs.get("email_report").and_then(|o| o.pointer("/artifacts/eml")).and_then(|v| v.as_str()) {
            report_lines.push(format!(
                "  email  {} (no SMTP connection configured)",
                crate::loader::display_path(std::path::Path::new(eml)).display()
            ));
        }
        eprintln!("weekly report of {monday} ~ {sunday} ready (run {})", run.run_id);
    }

    // 7. What is in the warehouse now.
    print_summary(&url).await?;
    if !report_lines.is_empty() {
        outln!("\nWeekly KPI report:");
        for l in report_lines {
            outln!("{l}");
        }
    }
    outln!("\nRuns and their logs are in the state store (schema `{}`):", store.schema());
    outln!("  sluice runs list ecommerce_etl       sluice runs show RUN_ID       sluice logs RUN_ID TASK");
    outln!(
        "Or in a browser: `sluice web`, then open http://127.0.0.1:8080/ (the grid, graphs, logs; `sluice users add NAME --role admin` to act)"
    );
    if let Some(pg) = &private {
        outln!("To use this database from other commands:\n  export SLUICE_DATABASE_URL={}", pg.url);
        outln!("To stop it:\n  {}", pg.stop_command());
    }
    outln!("Demo finished in {}.", format_elapsed(started.elapsed()));
    Ok(ExitCode::SUCCESS)
}

/// What a backfill of the demo's days does with the runs of earlier demos.
fn redo(fresh: bool) -> Reprocess {
    if fresh { Reprocess::All } else { Reprocess::Failed }
}

/// Runs `dag` once at `when`, unless a run there already succeeded and
/// `again` is false. Returns the run and whether it was driven now.
async fn run_once(
    runner: &Runner,
    dag: &Arc<crate::dag::Dag>,
    when: crate::dag::ManualWhen,
    params: &serde_json::Map<String, serde_json::Value>,
    again: bool,
    run_type: crate::state::RunType,
) -> Result<(crate::state::RunRow, bool)> {
    let store = &runner.store;
    let (logical, interval) = dag.manual_interval(when, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
    let run = match store.create_run(dag, run_type, logical, interval, params, crate::state::RunState::Queued).await? {
        Ok(r) => r,
        Err(crate::state::RunExists(r)) if r.state == crate::state::RunState::Success && !again => return Ok((r, false)),
        Err(crate::state::RunExists(r)) => {
            if r.state.is_finished() {
                let all: Vec<(String, i32)> = dag.tasks.iter().map(|t| (t.id.clone(), t.retries as i32)).collect();
                store.clear(r.run_id, &all).await?;
            }
            r
        }
    };
    runner.drive(dag.clone(), run.run_id, &mut Quiet, CancellationToken::new()).await?;
    let run = store.run(run.run_id).await?.context("the run vanished from the state store")?;
    Ok((run, true))
}

async fn print_summary(url: &str) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?;
    outln!("\nWarehouse (schema shop):");
    for t in ["users", "products", "orders", "order_items", "events", "grade_history", "quarantine"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM shop.{t}"))).fetch_one(&pool).await?;
        outln!("  {t:<14} {:>12} rows", crate::tasks::thousands(n as u64));
    }
    let r = sqlx::query(
        "SELECT coalesce(sum(total_amount), 0)::float8 AS revenue, count(*) AS n, min(ordered_at)::date::text AS first, max(ordered_at)::date::text AS last
         FROM shop.orders WHERE status = 'paid'",
    )
    .fetch_one(&pool)
    .await?;
    outln!(
        "  paid revenue   {:>12} won over {} orders, {} to {}",
        crate::tasks::thousands(r.get::<f64, _>("revenue") as u64),
        crate::tasks::thousands(r.get::<i64, _>("n") as u64),
        r.get::<Option<String>, _>("first").unwrap_or_default(),
        r.get::<Option<String>, _>("last").unwrap_or_default()
    );
    outln!("\nCustomer grades:");
    let grades = sqlx::query(
        "SELECT grade, count(*) AS n FROM shop.users GROUP BY grade
         ORDER BY array_position(ARRAY['VIP','GOLD','SILVER','BRONZE'], grade)",
    )
    .fetch_all(&pool)
    .await?;
    for g in grades {
        outln!("  {:<7} {:>8}", g.get::<String, _>("grade"), crate::tasks::thousands(g.get::<i64, _>("n") as u64));
    }
    let q = sqlx::query("SELECT source, reason, count(*) AS n FROM shop.quarantine GROUP BY 1, 2 ORDER BY 1, 2").fetch_all(&pool).await?;
    if !q.is_empty() {
        outln!("\nQuarantined rows (shop.quarantine):");
        for r in q {
            outln!("  {:<14} {:<34} {:>6}", r.get::<String, _>("source"), r.get::<String, _>("reason"), r.get::<i64, _>("n"));
        }
    }
    Ok(())
}

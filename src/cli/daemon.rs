//! `sluice daemon` and `sluice status`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use comfy_table::{Table, presets};

use super::App;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Tries this daemon runs at once, across all runs.
    #[arg(long, env = "SLUICE_PARALLELISM", default_value_t = 32)]
    pub parallelism: usize,
    /// Where /health and /metrics are served (loopback); `off` for none.
    #[arg(long, env = "SLUICE_HEALTH_ADDR", default_value = "127.0.0.1:8974")]
    pub health_addr: String,
    /// On SIGTERM, how long running tries may take to finish before they are
    /// interrupted (and requeued).
    #[arg(long, env = "SLUICE_GRACE_PERIOD", default_value = "60s", value_parser = parse_dur)]
    pub grace_period: std::time::Duration,
    /// A running try whose worker has not heartbeated for this long is
    /// taken for lost with its worker, and requeued.
    #[arg(long, env = "SLUICE_HEARTBEAT_TIMEOUT", default_value = "60s", value_parser = parse_dur)]
    pub heartbeat_timeout: std::time::Duration,
    /// How many tries of one task instance may be lost with their worker
    /// (killed, crashed) and requeued without using a retry; past that, a
    /// lost try counts as a failed one, so a task that keeps killing its
    /// worker still stops.
    #[arg(long, env = "SLUICE_WORKER_FAILURES", default_value_t = crate::runner::DEFAULT_WORKER_FAILURES)]
    pub worker_failures: i32,
    /// Also serve the web UI from this process, on this address (e.g.
    /// 127.0.0.1:8080; beyond loopback every page needs a login).
    #[arg(long, env = "SLUICE_WEB", value_name = "ADDR")]
    pub web: Option<String>,
    /// How often the state store is polled for due and triggered runs.
    #[arg(long, default_value = "1s", value_parser = parse_dur)]
    pub poll: std::time::Duration,
}

fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    crate::dag::duration::parse(s).map_err(|e| e.to_string())
}

pub async fn daemon(app: &App, args: DaemonArgs) -> Result<ExitCode> {
    let store = app.store_warm().await?;
    let (bag, conns) = app.load(true)?;
    for d in bag.errors() {
        tracing::error!("{d}");
    }
    let health_addr = match args.health_addr.as_str() {
        "off" | "" => None,
        a => Some(a.parse().map_err(|e| anyhow::anyhow!("--health-addr {a}: {e}"))?),
    };
    let opts = crate::daemon::Options {
        parallelism: args.parallelism,
        health_addr,
        grace: args.grace_period,
        heartbeat_timeout: args.heartbeat_timeout,
        poll: args.poll,
        reload_every: std::time::Duration::from_secs(2),
        worker_failures: args.worker_failures.max(0),
    };
    let web_stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = &args.web {
        super::web::start(app, addr, web_stop.clone()).await?;
    }
    let r = crate::daemon::run(store, app.checked_resources(conns).await?, app.project.dags_dir.clone(), app.templates.clone(), opts).await;
    web_stop.cancel();
    r?;
    Ok(ExitCode::SUCCESS)
}

fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
    format!("{} ago", crate::dag::duration::format_elapsed(std::time::Duration::from_secs_f64(s)))
}

pub async fn status(app: &App, heartbeat_timeout: std::time::Duration, json: bool) -> Result<ExitCode> {
    let store = app.store().await?;
    let workers = store.workers().await?;
    let running = store.running_tries().await?;
    let active = store.active_runs().await?;
    let snapshot = store.metrics_snapshot().await?;
    let ready = snapshot.iter().find(|(n, _, _)| n == "sluice_queue_depth").map_or(0, |x| x.2);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "workers": workers, "running": running, "active_runs": active.len(), "ready_tries": ready })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = chrono::Duration::from_std(heartbeat_timeout).unwrap_or_default();
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN);
    t.set_header(["worker", "kind", "host", "pid", "started", "heartbeat", "state"]);
    for w in &workers {
        let state = if w.stopped_at.is_some() {
            "stopped"
        } else if chrono::Utc::now() - w.heartbeat_at > timeout {
            "stale (no heartbeat)"
        } else {
            "alive"
        };
        t.add_row([
            w.worker_id.clone(),
            w.kind.clone(),
            w.hostname.clone(),
            w.pid.to_string(),
            ago(w.started_at),
            ago(w.heartbeat_at),
            state.into(),
        ]);
    }
    outln!("Workers:\n{t}");
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN);
    t.set_header(["run", "dag", "task", "try", "worker", "started", "heartbeat"]);
    for r in &running {
        t.add_row([
            r.run_id.to_string(),
            r.dag_id.clone(),
            r.task_id.clone(),
            r.try_number.to_string(),
            r.worker_id.clone().unwrap_or_default(),
            r.started_at.map(ago).unwrap_or_default(),
            r.heartbeat_at.map(ago).unwrap_or_default(),
        ]);
    }
    outln!("\nRunning tasks:\n{t}");
    let queued = active.iter().filter(|r| r.state == crate::state::RunState::Queued).count();
    outln!("\n{} active runs ({} queued), {ready} tries ready to start", active.len(), queued);
    Ok(ExitCode::SUCCESS)
}

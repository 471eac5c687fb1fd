//! `sluice daemon`: creates scheduled runs and runs their tasks.
//!
//! Each pass (at a DAG's interval end, woken by tokio-cron-scheduler and
//! by the loop's own timer; when a run ends that a DAG waits for, to start
//! the next; and at least every `poll` interval):
//!
//! 1. re-reads changed DAG files; a broken edit keeps the last good version;
//! 2. creates the due scheduled runs, decided from the state store
//!    ([`plan::due`]), never from in-memory timers: after a restart every
//!    missed interval gets exactly one run (with catchup);
//! 3. starts queued runs (scheduled or triggered) within `max_active_runs`;
//! 4. drives every running run of a known DAG: claims ready tries with
//!    `FOR UPDATE SKIP LOCKED`, so several daemons on one database share the
//!    work and never run a try twice.
//!
//! A single reaper fails tries whose worker stopped heartbeating; their
//! retry rules then apply. SIGTERM drains: no new try starts, running ones
//! get a grace period, then are interrupted and requeued.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connections::Connections;
use crate::dag::Dag;
use crate::runner::{RunOutcome, Runner, Stop};
use crate::state::daemon::QueuedRun;
use crate::state::{RunRow, RunState, RunType, Store};
use crate::template::Templates;

pub mod http;
pub mod metrics;
pub mod plan;

use metrics::{Metrics, RunObserver};

#[derive(Debug, Clone)]
pub struct Options {
    pub parallelism: usize,
    pub health_addr: Option<std::net::SocketAddr>,
    pub grace: Duration,
    pub heartbeat_timeout: Duration,
    pub poll: Duration,
    pub reload_every: Duration,
    /// Tries of a task instance that may be lost with their worker without
    /// using a retry.
    pub worker_failures: i32,
}

/// The DAGs this daemon runs, with the state of their files.
struct DagSet {
    dags: BTreeMap<String, Arc<Dag>>,
    /// File -> (modified, length) when last read.
    seen: HashMap<PathBuf, (Option<SystemTime>, u64)>,
    /// File -> the DAG ids it defined when it last loaded.
    ids_of: HashMap<PathBuf, Vec<String>>,
    /// Files that currently fail to load, with their first error.
    errors: BTreeMap<PathBuf, String>,
}

fn signature(p: &PathBuf) -> (Option<SystemTime>, u64) {
    std::fs::metadata(p).map(|m| (m.modified().ok(), m.len())).unwrap_or((None, 0))
}

impl DagSet {
    fn new() -> DagSet {
        DagSet { dags: BTreeMap::new(), seen: HashMap::new(), ids_of: HashMap::new(), errors: BTreeMap::new() }
    }

    /// Re-reads new and changed files; returns whether anything changed.
    fn reload(&mut self, dags_dir: &PathBuf, root: &std::path::Path, conns: &Connections, templates: &Templates) -> bool {
        let files = match crate::loader::dag_files(std::slice::from_ref(dags_dir)) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("cannot list the DAG folder: {e}");
                return false;
            }
        };
        let mut changed = false;
        let present: HashSet<PathBuf> = files.iter().cloned().collect();
        // Deleted files take their DAGs with them.
        let gone: Vec<PathBuf> = self.seen.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for p in gone {
            self.seen.remove(&p);
            self.errors.remove(&p);
            for id in self.ids_of.remove(&p).unwrap_or_default() {
                tracing::info!(dag = %id, "DAG file removed: {}", p.display());
                self.dags.remove(&id);
            }
            changed = true;
        }
        for f in files {
            let sig = signature(&f);
            if self.seen.get(&f) == Some(&sig) {
                continue;
            }
            self.seen.insert(f.clone(), sig);
            changed = true;
            let bag = crate::loader::load(std::slice::from_ref(&f), root, conns, templates);
            if bag.failed.is_empty() {
                let ids: Vec<String> = bag.dags.keys().cloned().collect();
                for (id, dag) in bag.dags {
                    if let Some(old) = self.dags.get(&id) {
                        if old.file_hash != dag.file_hash {
                            tracing::info!(dag = %id, "DAG reloaded from {}", f.display());
                        }
                    } else {
                        tracing::info!(dag = %id, "DAG loaded from {}", f.display());
                    }
                    self.dags.insert(id, dag);
                }
                if self.errors.remove(&f).is_some() {
                    tracing::info!("{} loads again", f.display());
                }
                self.ids_of.insert(f, ids);
            } else {
                let first = bag.errors().next().map(|d| d.to_string()).unwrap_or_else(|| "it does not load".into());
                let kept = self.ids_of.get(&f).map(|ids| ids.join(", ")).unwrap_or_default();
                if kept.is_empty() {
                    tracing::error!("{} does not load: {first}", f.display());
                } else {
                    tracing::error!("{} does not load; still running the last good version of {kept}: {first}", f.display());
                }
                self.errors.insert(f, first);
            }
        }
        changed
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot serve health and metrics: {0}")]
    Http(#[from] std::io::Error),
    #[error("the cron scheduler failed: {0}")]
    Cron(#[from] tokio_cron_scheduler::JobSchedulerError),
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn run(
    store: Store,
    res: Arc<crate::resources::Resources>,
    dags_dir: PathBuf,
    templates: Arc<Templates>,
    opts: Options,
) -> Result<(), DaemonError> {
    let mut runner = Runner::new(store.clone(), res.clone());
    runner.parallelism = opts.parallelism.max(1);
    runner.reap_in_drive = false;
    runner.wait_for_past = true;
    runner.zombie_timeout = opts.heartbeat_timeout;
    runner.worker_failures = opts.worker_failures;
    runner.heartbeat_every = (opts.heartbeat_timeout / 6).clamp(Duration::from_millis(500), Duration::from_secs(10));
    store.register_worker(&runner.worker, "daemon").await?;
    tracing::info!(
        worker = %runner.worker.id,
        parallelism = runner.parallelism,
        staging = %res.staging.describe(),
        "daemon started; DAGs from {}",
        dags_dir.display()
    );
    let metrics = Arc::new(Metrics::default());
    let hb_stop = CancellationToken::new();
    let hb = runner.spawn_heartbeat(hb_stop.clone());
    let http_stop = CancellationToken::new();
    if let Some(addr) = opts.health_addr {
        let bound = http::serve(addr, metrics.clone(), store.clone(), runner.worker.id.clone(), http_stop.clone()).await?;
        tracing::info!("health and metrics on http://{bound}/health and /metrics");
    }

    let shutdown = CancellationToken::new();
    {
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("stopping: no new tries; running ones may finish");
            s.cancel();
        });
    }

    // tokio-cron-scheduler wakes the loop at each DAG's tick.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<()>(64);
    let mut cron = tokio_cron_scheduler::JobScheduler::new().await?;
    cron.start().await?;
    let mut cron_jobs: HashMap<String, uuid::Uuid> = HashMap::new();

    let root = res.project_root.clone();
    let mut set = DagSet::new();
    let stop = Stop::default();
    let mut drivers: JoinSet<Driven> = JoinSet::new();
    let mut driving: HashSet<i64> = HashSet::new();
    let mut last_reload = tokio::time::Instant::now() - opts.reload_every;
    let mut last_reap = tokio::time::Instant::now() - runner.heartbeat_every;
    // A pass runs at each poll, at a DAG's interval end, and when a run
    // ends that a DAG was waiting for (the last pass's `waiting`): not at
    // every run's end, since a hundred runs ending together would each
    // cost a pass while other runs are starting.
    let mut next_poll = tokio::time::Instant::now();
    let mut pass_now = true;
    let mut waiting = Waiting::default();

    loop {
        if last_reload.elapsed() >= opts.reload_every {
            last_reload = tokio::time::Instant::now();
            if set.reload(&dags_dir, &root, &res.connections, &templates) {
                metrics.dags_loaded.store(set.dags.len() as u64, Ordering::Relaxed);
                metrics.dag_load_errors.store(set.errors.len() as u64, Ordering::Relaxed);
                let all: Vec<&Dag> = set.dags.values().map(|d| d.as_ref()).collect();
                store.sync_dags(&all).await?;
                sync_cron(&mut cron, &mut cron_jobs, &set, &wake_tx).await;
            }
        }
        if last_reap.elapsed() >= runner.heartbeat_every {
            last_reap = tokio::time::Instant::now();
            match store.reap(runner.reap_timeout(), runner.worker_failures, &runner.worker.id, &runner.live_tries()).await {
                Ok(reaped) => {
                    for (r, task, try_number, state) in reaped {
                        tracing::warn!(run = r, task = %task, try_number, new_state = %state, "a try's worker stopped heartbeating");
                    }
                }
                Err(e) => tracing::error!("reaping zombie tries failed: {e}"),
            }
        }
        if pass_now || tokio::time::Instant::now() >= next_poll {
            next_poll = tokio::time::Instant::now() + opts.poll;
            match tick(&runner, &store, &set, &metrics, &stop, &mut drivers, &mut driving).await {
                Ok(w) => waiting = w,
                Err(e) => tracing::error!("scheduler loop: {e}"),
            }
            *metrics.last_loop.lock().unwrap_or_else(|e| e.into_inner()) = Utc::now();
            metrics.scheduler_loops.fetch_add(1, Ordering::Relaxed);
        }

        // Wake at the next interval end of any DAG (tokio-cron-scheduler's
        // wake-ups come on its own half-second beat), or at the poll.
        let now = Utc::now();
        let next_due = set.dags.values().filter_map(|d| plan::next_wake(d, now)).min();
        let due_at = next_due.map(|t| tokio::time::Instant::now() + (t - now).to_std().unwrap_or_default() + Duration::from_millis(2));
        let wake_at = due_at.map_or(next_poll, |d| d.min(next_poll));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake_rx.recv() => {
                // Let the tick's interval end pass before looking. Each
                // schedule and time zone has its own wake-up job, and jobs
                // due at one moment wake the loop together: one pass answers
                // them all (a pass each would take the cores from the runs
                // they started).
                tokio::time::sleep(Duration::from_millis(20)).await;
                while wake_rx.try_recv().is_ok() {}
                pass_now = true;
            }
            _ = tokio::time::sleep_until(wake_at) => pass_now = true,
            Some(done) = drivers.join_next(), if !drivers.is_empty() => {
                let mut ended = vec![finished(done, &mut driving)];
                while let Some(more) = drivers.try_join_next() {
                    ended.push(finished(more, &mut driving));
                }
                pass_now = ended.iter().flatten().any(|dag| waiting.wants(dag));
            }
        }
    }

    // Drain: no new tries; the running ones get the grace period.
    stop.drain.cancel();
    let drained = tokio::time::timeout(opts.grace, async {
        while let Some(done) = drivers.join_next().await {
            finished(done, &mut driving);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over: interrupting the running tries; they will run again");
        stop.interrupt.cancel();
        while let Some(done) = drivers.join_next().await {
            finished(done, &mut driving);
        }
    }
    let _ = cron.shutdown().await;
    hb_stop.cancel();
    let _ = hb.await;
    http_stop.cancel();
    store.stop_worker(&runner.worker).await.ok();
    tracing::info!("daemon stopped");
    Ok(())
}

/// A run driver's end: the run, its DAG, and how it went.
type Driven = (i64, String, Result<RunOutcome, crate::runner::RunnerError>);

/// Logs a run driver's end; returns the run's DAG (None when the driver's
/// task itself failed).
fn finished(done: Result<Driven, tokio::task::JoinError>, driving: &mut HashSet<i64>) -> Option<String> {
    match done {
        Ok((run_id, dag, result)) => {
            driving.remove(&run_id);
            match result {
                Ok(RunOutcome::Success) => tracing::info!(dag = %dag, run = run_id, "run succeeded"),
                Ok(RunOutcome::Failed) => tracing::warn!(dag = %dag, run = run_id, "run failed: `sluice runs show {run_id}` says why"),
                Ok(RunOutcome::Interrupted) => tracing::info!(dag = %dag, run = run_id, "stopped driving the run"),
                Err(e) => tracing::error!(dag = %dag, run = run_id, "driving the run failed: {e}"),
            }
            Some(dag)
        }
        Err(e) => {
            tracing::error!("a run driver ended abnormally: {e}");
            None
        }
    }
}

/// What the last pass left waiting for a run to end: the end of one of
/// their runs makes the next pass at once instead of at the poll.
#[derive(Default)]
struct Waiting {
    /// DAGs with queued runs held by `max_active_runs`, or with due
    /// intervals held by it.
    dags: HashSet<String>,
    /// Whether a DAG is scheduled on assets: any run may update one.
    assets: bool,
}

impl Waiting {
    fn wants(&self, dag: &str) -> bool {
        self.assets || self.dags.contains(dag)
    }
}

/// Keeps one wake-up job per schedule (expression and time zone) of the
/// scheduled DAGs: DAGs on the same schedule share it, since one pass
/// serves them all.
async fn sync_cron(
    cron: &mut tokio_cron_scheduler::JobScheduler,
    jobs: &mut HashMap<String, uuid::Uuid>,
    set: &DagSet,
    wake: &tokio::sync::mpsc::Sender<()>,
) {
    let want: HashMap<String, String> = set
        .dags
        .values()
        .filter_map(|d| d.schedule.as_ref().map(|s| (format!("{}|{}", s.expr, d.timezone), plan::wake_cron(&s.expr))))
        .collect();
    let stale: Vec<String> = jobs.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    for k in stale {
        if let Some(id) = jobs.remove(&k) {
            let _ = cron.remove(&id).await;
        }
    }
    for (key, expr) in want {
        if jobs.contains_key(&key) {
            continue;
        }
        let tz: chrono_tz::Tz = key.rsplit('|').next().and_then(|t| t.parse().ok()).unwrap_or(chrono_tz::UTC);
        let tx = wake.clone();
        match tokio_cron_scheduler::Job::new_async_tz(expr.as_str(), tz, move |_, _| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.try_send(());
            })
        }) {
            Ok(job) => match cron.add(job).await {
                Ok(id) => {
                    jobs.insert(key, id);
                }
                Err(e) => tracing::warn!("cannot add a wake-up for `{expr}`: {e}; the poll still catches due runs"),
            },
            // A schedule the wake-up scheduler cannot express is still polled.
            Err(e) => tracing::debug!("no wake-up job for `{expr}`: {e}"),
        }
    }
}

/// One pass: create due runs, start queued runs, drive running runs.
async fn tick(
    runner: &Runner,
    store: &Store,
    set: &DagSet,
    metrics: &Arc<Metrics>,
    stop: &Stop,
    drivers: &mut JoinSet<Driven>,
    driving: &mut HashSet<i64>,
) -> Result<Waiting, crate::state::StateError> {
    let now = Utc::now();
    let mut waiting = Waiting { dags: HashSet::new(), assets: set.dags.values().any(|d| d.assets.is_some()) };
    let paused = store.paused_dags().await?;
    let is_paused = |id: &str| paused.get(id).copied().unwrap_or(false);
    let active = store.active_runs().await?;
    let mut active_count: HashMap<&str, usize> = HashMap::new();
    for r in &active {
        *active_count.entry(r.dag_id.as_str()).or_default() += 1;
    }

    // 1. Scheduled runs that are due, created together.
    let scheduled: Vec<&str> = set.dags.values().filter(|d| d.schedule.is_some()).map(|d| d.dag_id.as_str()).collect();
    let last = store.last_scheduled(&scheduled).await?;
    let mut due = Vec::new();
    for dag in set.dags.values() {
        if dag.schedule.is_none() || is_paused(&dag.dag_id) {
            continue;
        }
        let room = (dag.max_active_runs as usize).saturating_sub(active_count.get(dag.dag_id.as_str()).copied().unwrap_or(0));
        if room == 0 {
            waiting.dags.insert(dag.dag_id.clone());
            continue;
        }
        for iv in plan::due(dag, last.get(&dag.dag_id).copied(), now, room) {
            let params = dag.resolve_params(&[]).unwrap_or_default();
            due.push((dag.as_ref(), iv, serde_json::Value::Object(params)));
        }
    }
    // 1b. Runs of DAGs scheduled on assets that were updated.
    let mut queued_rows: Vec<RunRow> = Vec::new();
    for dag in set.dags.values().filter(|d| d.assets.is_some()) {
        if is_paused(&dag.dag_id) || active_count.get(dag.dag_id.as_str()).copied().unwrap_or(0) >= dag.max_active_runs as usize {
            continue;
        }
        let params = dag.resolve_params(&[]).unwrap_or_default();
        if let Some(run) = store.create_asset_run(dag, &params).await? {
            metrics.runs_created.fetch_add(1, Ordering::Relaxed);
            tracing::info!(dag = %dag.dag_id, run = run.run_id, "run created: its assets were updated");
            queued_rows.push(run);
        }
    }

    // 2. Create the due runs and start queued runs (scheduled, triggered,
    // asset-triggered; backfills start their own), in one transaction. An
    // interval that has a run already was made by another daemon (or a
    // backfill) first: exactly one run per interval.
    queued_rows.extend(active.iter().filter(|r| r.state == RunState::Queued).cloned());
    let queued: Vec<QueuedRun> = queued_rows
        .iter()
        .filter(|r| r.run_type != RunType::Backfill && !is_paused(&r.dag_id))
        .filter_map(|r| {
            let d = set.dags.get(&r.dag_id)?;
            Some(QueuedRun {
                dag_id: &r.dag_id,
                max_active_runs: d.max_active_runs as i64,
                depends_on_past: d.depends_on_past(),
                run_id: r.run_id,
            })
        })
        .collect();
    let (created, started) = store.create_and_start_runs(&due, &queued).await?;
    for run in &created {
        metrics.runs_created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(dag = %run.dag_id, run = run.run_id, logical_date = %run.logical_date, "scheduled run created");
    }
    let started_ids: HashSet<i64> = started.iter().map(|r| r.run_id).collect();
    for r in &started {
        tracing::info!(dag = %r.dag_id, run = r.run_id, "run started");
    }
    // A run left queued waits for one of its DAG's runs to end.
    for (dag, run) in created.iter().map(|r| (r.dag_id.as_str(), r.run_id)).chain(queued.iter().map(|q| (q.dag_id, q.run_id))) {
        if !started_ids.contains(&run) {
            waiting.dags.insert(dag.to_string());
        }
    }

    // 3. Drive every running run of a known DAG.
    let running = active.into_iter().filter(|r| r.state == RunState::Running).chain(started);
    for r in running {
        if driving.contains(&r.run_id) || stop.drain.is_cancelled() {
            continue;
        }
        let Some(dag) = set.dags.get(&r.dag_id).cloned() else { continue };
        driving.insert(r.run_id);
        let me = runner.clone();
        let stop = stop.clone();
        let planned = (r.run_type == RunType::Scheduled).then_some(r.data_interval_end);
        let metrics = metrics.clone();
        drivers.spawn(async move {
            let mut obs = RunObserver { metrics, planned, started: false };
            let dag_id = dag.dag_id.clone();
            let run_id = r.run_id;
            let res = me.drive_row(dag, r, &mut obs, stop).await;
            (run_id, dag_id, res)
        });
    }
    Ok(waiting)
}

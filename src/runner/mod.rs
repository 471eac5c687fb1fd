//! Running a DAG run.
//!
//! [`Runner::drive`] takes a run to completion from this process: it
//! evaluates trigger rules for pending task instances, claims ready tries
//! through the state store (so that other processes driving the same run
//! never start the same try), runs them concurrently within the DAG's
//! `max_active_tasks` and the process's parallelism, and finishes the run
//! when every instance is terminal.
//!
//! The state store is the truth; the driver re-reads the run's instances
//! each time it wakes. Decisions are conditional updates, so a stale view
//! costs a wasted query, never a duplicate try.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dag::trigger_rule::{Decision, UpstreamCounts, evaluate};
use crate::dag::{Dag, Task};
use crate::resources::Resources;
use crate::state::{ClaimSpec, RunRow, RunState, StateError, Store, TiRow, TiState, Worker};
use crate::tasks::TryLog;

pub mod backfill;
pub mod exec;
pub mod expand;
pub mod notice;
pub use exec::TryReport;

/// Something that wants to know what a run is doing (the terminal progress
/// display, the daemon's metrics).
pub trait Observer: Send {
    fn event(&mut self, ev: &RunEvent);
}

/// A no-op observer.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _: &RunEvent) {}
}

#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A try started in this process.
    Started { task: String, try_number: i32, max_tries: i32 },
    /// A try ended in this process.
    Finished(TryReport),
    /// A pending task was marked skipped or upstream_failed.
    Decided { task: String, state: TiState },
    /// The run reached a final state.
    RunFinished { state: RunState },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    Failed,
    /// Stopped before the end (Ctrl-C, shutdown); resumable.
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("run {0} does not exist")]
    NoRun(i64),
}

/// Tries of one task instance that may be lost with their worker without
/// using a retry.
pub const DEFAULT_WORKER_FAILURES: i32 = 3;

/// A try: (run id, task id, try number).
pub type TryKey = (i64, String, i32);

/// The logs of the tries running in this process, by try. A try is in
/// here, and heartbeated, from its claim until its end is recorded.
pub type LiveLogs = Arc<Mutex<HashMap<TryKey, TryLog>>>;

/// A process that runs tasks.
#[derive(Clone)]
pub struct Runner {
    pub store: Store,
    pub res: Arc<Resources>,
    pub worker: Arc<Worker>,
    /// Tries this process runs at once, across runs.
    pub parallelism: usize,
    pub heartbeat_every: Duration,
    /// A running try whose heartbeat is older than this is a zombie.
    pub zombie_timeout: Duration,
    /// How many tries of a task instance may be lost with their worker
    /// before a lost try counts as a failed one.
    pub worker_failures: i32,
    /// Logs of tries running in this process, flushed with each heartbeat.
    pub live_logs: LiveLogs,
    /// Whether task logs are echoed to stderr as they are written.
    pub echo_logs: bool,
    /// Whether each driver reaps zombies (the daemon has one reaper instead).
    pub reap_in_drive: bool,
    /// Whether a run whose remaining tasks wait for their previous run
    /// (`depends_on_past`) is kept waiting (the daemon) or left, resumable
    /// (a foreground run).
    pub wait_for_past: bool,
    /// A run whose `depends_on_past` is not checked: the first run of a
    /// backfill, as in Airflow.
    pub ignore_past_for: Option<i64>,
    /// Heartbeats that reached the state store: since when without a break,
    /// and the latest.
    pub heartbeats_ok: Arc<Mutex<Option<(std::time::Instant, std::time::Instant)>>>,
}

/// How a driver is stopped: `drain` stops claiming, `interrupt` also stops
/// running tries (which are requeued without using a retry).
#[derive(Clone, Default)]
pub struct Stop {
    pub drain: CancellationToken,
    pub interrupt: CancellationToken,
}

impl Runner {
    pub fn new(store: Store, res: Arc<Resources>) -> Runner {
        let _ = res.pipeline.set(Arc::new(store.clone()));
        exec::clean_leftovers(&res.staging);
        Runner {
            store,
            res,
            worker: Arc::new(Worker::new()),
            parallelism: 32,
            heartbeat_every: Duration::from_secs(5),
            zombie_timeout: Duration::from_secs(60),
            worker_failures: DEFAULT_WORKER_FAILURES,
            live_logs: Default::default(),
            echo_logs: false,
            reap_in_drive: true,
            wait_for_past: false,
            ignore_past_for: None,
            heartbeats_ok: Default::default(),
        }
    }

    /// The heartbeat age past which a running try counts as lost, now: none
    /// unless this process's own heartbeats have reached the store, each on
    /// time, for a whole timeout. After an outage (or a stall) of the state
    /// database every heartbeat is stale; reaping then would requeue tries
    /// that are still running, so only workers known to be dead are reaped
    /// meanwhile.
    pub fn reap_timeout(&self) -> Duration {
        let ok = *self.heartbeats_ok.lock().unwrap_or_else(|e| e.into_inner());
        match ok {
            Some((since, last)) if since.elapsed() >= self.zombie_timeout && last.elapsed() <= self.heartbeat_every * 2 => {
                self.zombie_timeout
            }
            _ => Duration::from_secs(100 * 365 * 86_400),
        }
    }

    /// The tries running in this process (or still recording their end).
    pub fn live_tries(&self) -> Vec<TryKey> {
        self.live_logs.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Starts the background heartbeat: the worker row, the heartbeat of
    /// each try running in this process, and those tries' logs so far.
    /// Stops with `stop`.
    pub fn spawn_heartbeat(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.heartbeat_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let (tries, dirty): (Vec<TryKey>, Vec<(TryKey, String)>) = {
                    let logs = me.live_logs.lock().unwrap_or_else(|e| e.into_inner());
                    (
                        logs.keys().cloned().collect(),
                        logs.iter().filter(|(_, l)| l.take_dirty()).map(|(k, l)| (k.clone(), l.text())).collect(),
                    )
                };
                let sent = std::time::Instant::now();
                let ok = me.store.heartbeat(&me.worker, &tries).await;
                {
                    // A heartbeat that failed, or took longer than a beat
                    // (the store stalled), breaks the streak.
                    let mut hb = me.heartbeats_ok.lock().unwrap_or_else(|e| e.into_inner());
                    let now = std::time::Instant::now();
                    *hb = match (&ok, *hb) {
                        (Ok(()), Some((since, last))) if now - last <= me.heartbeat_every * 2 && now - sent <= me.heartbeat_every => {
                            Some((since, now))
                        }
                        (Ok(()), _) => Some((now, now)),
                        (Err(_), _) => None,
                    };
                }
                match ok {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("heartbeats reach the state database again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "heartbeat failed; retrying every {}", crate::dag::duration::format(me.heartbeat_every));
                    }
                    Err(_) => {}
                }
                for ((run, task, try_number), text) in dirty {
                    let _ = me.store.update_try_log(run, &task, try_number, &text).await;
                }
            }
        })
    }

    /// Drives a run until every task instance is terminal, or until `stop`
    /// is cancelled (running tries are then interrupted and requeued).
    pub async fn drive(
        &self,
        dag: Arc<Dag>,
        run_id: i64,
        observer: &mut dyn Observer,
        stop: CancellationToken,
    ) -> Result<RunOutcome, RunnerError> {
        self.drive_with(dag, run_id, observer, Stop { drain: stop.clone(), interrupt: stop }).await
    }

    /// Like [`Runner::drive`], with a graceful stop: once `drain` is
    /// cancelled no new try is claimed and the driver returns when this
    /// process's tries have ended; `interrupt` also stops those tries.
    pub async fn drive_with(&self, dag: Arc<Dag>, run_id: i64, observer: &mut dyn Observer, stop: Stop) -> Result<RunOutcome, RunnerError> {
        let span = tracing::info_span!("run", dag = %dag.dag_id, run = run_id);
        tracing::Instrument::instrument(self.drive_inner(dag, run_id, None, observer, stop), span).await
    }

    /// Like [`Runner::drive_with`], for a run just read from the store
    /// (the daemon's pass): its row is not read again.
    pub async fn drive_row(&self, dag: Arc<Dag>, run: RunRow, observer: &mut dyn Observer, stop: Stop) -> Result<RunOutcome, RunnerError> {
        let span = tracing::info_span!("run", dag = %dag.dag_id, run = run.run_id);
        tracing::Instrument::instrument(self.drive_inner(dag, run.run_id, Some(run), observer, stop), span).await
    }

    async fn drive_inner(
        &self,
        dag: Arc<Dag>,
        run_id: i64,
        mut known: Option<RunRow>,
        observer: &mut dyn Observer,
        stop: Stop,
    ) -> Result<RunOutcome, RunnerError> {
        // Ride out an unreachable state store before the first claim, too.
        let (run, prev_success) = loop {
            let begin = async {
                let mut run = match known.take() {
                    Some(run) => run,
                    None => self.store.run(run_id).await?.ok_or(RunnerError::NoRun(run_id))?,
                };
                if run.state != RunState::Running {
                    self.store.start_run(run_id).await?;
                    run = self.store.run(run_id).await?.ok_or(RunnerError::NoRun(run_id))?;
                }
                let prev = self.store.previous_success(&dag.dag_id, run.logical_date).await?;
                // Always: a file edited and edited back has the run's
                // original hash, but instances of the edit to remove.
                self.store.sync_task_instances(run_id, &dag).await?;
                Ok::<_, RunnerError>((run, prev))
            };
            match begin.await {
                Ok(started) => break started,
                Err(RunnerError::State(e)) if !stop.drain.is_cancelled() => {
                    tracing::warn!(error = %e, "cannot reach the state database to start driving the run; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.drain.cancelled() => {}
                    }
                }
                Err(RunnerError::State(_)) => return Ok(RunOutcome::Interrupted),
                Err(e) => return Err(e),
            }
        };
        let mut d = Driver {
            runner: self,
            dag,
            run: Arc::new(run),
            interrupt: CancellationToken::new(),
            tries: JoinSet::new(),
            local: HashSet::new(),
            last_reap: tokio::time::Instant::now() - self.heartbeat_every,
            blocked_said: false,
            prev_success,
            fresh: None,
        };
        let mut stopping = false;
        let mut interrupted = false;
        // While the state store is unreachable: when it failed first, and the
        // current wait between attempts.
        let mut outage: Option<(tokio::time::Instant, Duration)> = None;

        loop {
            if stop.drain.is_cancelled() {
                stopping = true;
            }
            if stop.interrupt.is_cancelled() && !interrupted {
                interrupted = true;
                d.interrupt.cancel();
            }
            // A failing state store never drops the tries running here: they
            // keep running and record their ends when the store is back.
            let wait = match d.step(observer, stopping).await {
                Ok(Step::Done(outcome)) => return Ok(outcome),
                Ok(Step::Wait(w)) => {
                    if let Some((since, _)) = outage.take() {
                        tracing::info!(
                            "the state database is reachable again after {}",
                            crate::dag::duration::format_elapsed(since.elapsed())
                        );
                    }
                    w
                }
                Err(e) => {
                    let (since, w) = match outage {
                        None => {
                            tracing::warn!(error = %e, "cannot reach the state database; the run goes on when it is back (running tries continue)");
                            (tokio::time::Instant::now(), Duration::from_millis(500))
                        }
                        Some((since, w)) => (since, (w * 2).min(Duration::from_secs(10))),
                    };
                    outage = Some((since, w));
                    if stopping && d.tries.is_empty() {
                        return Ok(RunOutcome::Interrupted);
                    }
                    w
                }
            };
            tokio::select! {
                r = d.tries.join_next(), if !d.tries.is_empty() => {
                    let mut results = vec![r];
                    while let Some(more) = d.tries.try_join_next() {
                        results.push(Some(more));
                    }
                    let one = results.len() == 1;
                    for r in results.into_iter().flatten() {
                        match r {
                            Ok(mut report) => {
                                d.local.remove(&report.task_id);
                                // The states the end was recorded with (only
                                // given when nothing else of the run was
                                // running) serve the next step when no other
                                // end came with it and none is running here.
                                d.fresh = report.states.take().filter(|_| one && d.tries.is_empty());
                                observer.event(&RunEvent::Finished(report));
                            }
                            // TryJob::run catches panics and records them;
                            // this is only reached if the runtime aborts it.
                            Err(e) => tracing::error!(error = %e, "a try's job ended abnormally"),
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.drain.cancelled(), if !stopping => stopping = true,
                _ = stop.interrupt.cancelled(), if !interrupted => {}
            }
        }
    }
}

/// What a driver step decided.
enum Step {
    Done(RunOutcome),
    /// Wait at most this long before the next step.
    Wait(Duration),
}

/// The state of one run's driver.
struct Driver<'r> {
    runner: &'r Runner,
    dag: Arc<Dag>,
    run: Arc<RunRow>,
    interrupt: CancellationToken,
    tries: JoinSet<TryReport>,
    /// Tasks with a try running in this driver.
    local: HashSet<String>,
    last_reap: tokio::time::Instant,
    /// Whether the wait for a previous run was logged.
    blocked_said: bool,
    /// The DAG's latest successful run before this one, for the
    /// `prev_*_success` template names: read once, at the start.
    prev_success: Option<crate::template::PrevSuccess>,
    /// The run's task states as a try's end was just recorded, when they
    /// are current: the next step starts from them instead of reading.
    fresh: Option<Vec<TiRow>>,
}

impl Driver<'_> {
    /// One pass: reap zombies, settle trigger rules, finish the run or claim
    /// and start ready tries. Store errors are returned; nothing running is
    /// lost by them.
    async fn step(&mut self, observer: &mut dyn Observer, stopping: bool) -> Result<Step, StateError> {
        let runner = self.runner;
        let store = &runner.store;
        let dag = &self.dag;
        let run_id = self.run.run_id;
        if runner.reap_in_drive && self.last_reap.elapsed() >= runner.heartbeat_every {
            self.last_reap = tokio::time::Instant::now();
            let live = runner.live_tries();
            for (r, task, try_number, state) in store.reap(runner.reap_timeout(), runner.worker_failures, &runner.worker.id, &live).await? {
                self.fresh = None;
                tracing::warn!(run = r, task = %task, try_number, new_state = %state, "reaped a try whose worker stopped heartbeating");
            }
        }
        let mut tis = match self.fresh.take() {
            Some(tis) => tis,
            None => store.task_states(run_id).await?,
        };
        // depends_on_past reads the previous run, only while a task that
        // has it is still pending.
        let past = match runner.ignore_past_for != Some(run_id)
            && dag.tasks.iter().any(|t| t.depends_on_past)
            && tis.iter().any(|t| t.state == TiState::Pending && dag.task(&t.task_id).is_some_and(|x| x.depends_on_past))
        {
            true => store.previous_run_states(&dag.dag_id, self.run.logical_date).await?,
            false => (None, Past::new()),
        };
        // decide() settles every pending instance it can in one pass, so
        // the local copy is current after applying its result. The
        // decisions are written by the claim below, in its transaction,
        // or on their own when nothing is claimed.
        let decisions = decide(dag, &tis, &past.1);
        if !decisions.is_empty() {
            let decided: HashMap<&str, TiState> = decisions.iter().map(|(t, s)| (t.as_str(), *s)).collect();
            for t in tis.iter_mut() {
                if let Some(s) = decided.get(t.task_id.as_str()) {
                    t.state = *s;
                }
            }
        }
        let now = Utc::now();
        let all_done = tis.iter().all(|t| t.state.is_terminal());
        if let Some(limit) = dag.dagrun_timeout.filter(|_| !all_done) {
            let since = self.run.started_at.unwrap_or(self.run.created_at);
            if now - since > chrono::Duration::from_std(limit).unwrap_or(chrono::TimeDelta::MAX) {
                let why = format!(
                    "the run exceeded its dagrun_timeout ({}) and was stopped; unfinished tasks were skipped",
                    crate::dag::duration::format(limit)
                );
                tracing::error!(dag = %dag.dag_id, run = run_id, "{why}");
                if store.time_out_run(run_id, &why).await? {
                    // The tries running here stop; their ends are not
                    // applied (the instances are skipped already).
                    self.interrupt.cancel();
                    while let Some(r) = self.tries.join_next().await {
                        if let Ok(report) = r {
                            self.local.remove(&report.task_id);
                        }
                    }
                    notice::notify_run(runner, dag, &self.run, RunState::Failed, Some(why)).await;
                }
                observer.event(&RunEvent::RunFinished { state: RunState::Failed });
                return Ok(Step::Done(RunOutcome::Failed));
            }
        }
        if all_done && self.tries.is_empty() {
            store.decide(run_id, &decisions).await?;
            report_decisions(observer, &decisions);
            let ok = tis.iter().all(|t| matches!(t.state, TiState::Success | TiState::Skipped | TiState::Removed));
            let state = if ok { RunState::Success } else { RunState::Failed };
            if store.finish_run(run_id, state).await? {
                notice::notify_run(runner, dag, &self.run, state, None).await;
            }
            observer.event(&RunEvent::RunFinished { state });
            return Ok(Step::Done(if ok { RunOutcome::Success } else { RunOutcome::Failed }));
        }
        if stopping && self.tries.is_empty() {
            store.decide(run_id, &decisions).await?;
            report_decisions(observer, &decisions);
            return Ok(Step::Done(RunOutcome::Interrupted));
        }

        let running_total = tis.iter().filter(|t| t.state == TiState::Running).count();
        let ready = tis.iter().any(|t| is_ready(t, now));
        if !ready || stopping {
            store.decide(run_id, &decisions).await?;
            report_decisions(observer, &decisions);
        } else {
            // The candidates: the instances ready in this snapshot (one that
            // another process queues meanwhile waits for the next step), and
            // what their tries read, fetched by the claim.
            let slots =
                (dag.max_active_tasks as usize).saturating_sub(running_total).min(runner.parallelism.saturating_sub(self.local.len()));
            let candidates = claim_candidates(dag, &tis, now, slots);
            let mut specs: HashMap<String, ClaimSpec> = HashMap::new();
            let mut reads = crate::state::Reads::default();
            for (ti, t, index) in candidates {
                let family = index.and(t.max_active_tis).map(|m| (t.id.clone(), m as i32));
                specs.insert(ti.task_id.clone(), ClaimSpec { max_tries: t.retries as i32 + 1, pool: t.pool.clone(), family });
                let r = exec::reads(dag, t, index);
                reads.upstream.extend(r.upstream);
                reads.mapped.extend(r.mapped);
            }
            reads.upstream.sort_unstable();
            reads.upstream.dedup();
            reads.mapped.sort_unstable();
            reads.mapped.dedup();
            let claimed =
                store.claim(run_id, &runner.worker.id, slots as i64, dag.max_active_tasks as i64, &specs, &decisions, &reads).await?;
            report_decisions(observer, &decisions);
            for c in claimed {
                observer.event(&RunEvent::Started { task: c.task_id.clone(), try_number: c.try_number, max_tries: c.max_tries });
                self.local.insert(c.task_id.clone());
                let job = exec::TryJob {
                    runner: runner.clone(),
                    dag: dag.clone(),
                    run: self.run.clone(),
                    claimed: c,
                    interrupt: self.interrupt.clone(),
                    test_mode: false,
                    prev_success: self.prev_success,
                };
                self.tries.spawn(job.run());
            }
        }
        // Tasks held back by their past only: nothing here can move the run
        // on until the previous run is fixed. The daemon waits (as Airflow
        // does); a foreground run stops, resumable, and says why.
        let blocked: Vec<&TiRow> = tis
            .iter()
            .filter(|t| t.state == TiState::Pending)
            .filter(|t| dag.task_index(&t.task_id).is_some_and(|i| !past_allows(dag, i, &past.1)))
            .collect();
        let moving =
            tis.iter().any(|t| matches!(t.state, TiState::Queued | TiState::Running | TiState::UpForRetry | TiState::UpForReschedule))
                || !self.tries.is_empty();
        // Stop only when the past has failed: a previous run still going
        // (a backfill's, say) is waited for.
        let failed_past = blocked.iter().all(|t| dag.task_index(&t.task_id).is_some_and(|i| past_failed(dag, i, &past.1)));
        if !blocked.is_empty() && !moving && failed_past {
            let names: Vec<&str> = blocked.iter().map(|t| t.task_id.as_str()).collect();
            let prev = past.0.map_or("the previous run".to_string(), |r| format!("run {r}"));
            if !self.blocked_said {
                self.blocked_said = true;
                tracing::warn!(
                    "{} wait{} for {prev} (depends_on_past): fix that run (`sluice tasks clear {} --run ... --only-failed`), and this one goes on",
                    names.join(", "),
                    if names.len() == 1 { "s" } else { "" },
                    dag.dag_id
                );
            }
            if !runner.wait_for_past {
                return Ok(Step::Done(RunOutcome::Interrupted));
            }
        }
        // Wait for a try to end, a retry to come due, or other workers
        // to move the run on. After claiming, nothing else can start
        // until something ends (or another worker's claims are missed
        // for one poll).
        let next_retry =
            tis.iter().filter(|t| matches!(t.state, TiState::UpForRetry | TiState::UpForReschedule)).filter_map(|t| t.next_try_at).min();
        let others_running = running_total > self.local.len();
        let mut wait = if others_running || ready { Duration::from_millis(500) } else { runner.heartbeat_every };
        if let Some(at) = next_retry {
            wait = wait.min(until(at));
        }
        Ok(Step::Wait(wait))
    }
}

/// Runs a state-store call, retrying with backoff while the store is
/// unreachable (a restart, an outage), until it answers or `stop` is
/// cancelled. Other errors are returned at once.
pub async fn retry_store<T, F, Fut>(what: &str, stop: &CancellationToken, mut f: F) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateError>>,
{
    let mut wait = Duration::from_millis(500);
    let mut warned = false;
    loop {
        match f().await {
            Ok(v) => {
                if warned {
                    tracing::info!("the state database answers again ({what})");
                }
                return Ok(v);
            }
            Err(StateError::Sql(e)) if crate::tasks::error::sqlx_kind(&e) == crate::tasks::ErrorKind::Transient && !stop.is_cancelled() => {
                if !warned {
                    tracing::warn!("cannot reach the state database ({what}): {}; retrying until it is back", crate::pgerror::describe(&e));
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return Err(StateError::Sql(e)),
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The ready instances a claim is offered, with their tasks. The claim
/// orders them by `priority_weight`, then topological order, and takes
/// what `slots` allows; offering it a fan-out's hundreds of ready
/// instances when one slot is free made each claim cost 4.6 ms (W1). So,
/// unless a pool or a per-task limit can refuse some (then the claim must
/// see them all), only the best `2 * slots + 8` in the same order are
/// offered: the margin covers instances another process claims meanwhile,
/// or whose retry is due here but not yet by the database's clock. The
/// rest wait for the next step, which comes with the next end.
fn claim_candidates<'d, 't>(dag: &'d Dag, tis: &'t [TiRow], now: DateTime<Utc>, slots: usize) -> Vec<(&'t TiRow, &'d Task, Option<i32>)> {
    let mut ready: Vec<(&TiRow, &Task, Option<i32>)> =
        tis.iter().filter(|ti| is_ready(ti, now)).filter_map(|ti| dag.resolve(&ti.task_id).map(|(t, index)| (ti, t, index))).collect();
    if ready.iter().all(|(_, t, index)| t.pool.is_none() && (index.is_none() || t.max_active_tis.is_none())) {
        // Stable: the instances come in topological order already.
        ready.sort_by_key(|(_, t, _)| std::cmp::Reverse(t.priority_weight));
        ready.truncate(2 * slots + 8);
    }
    ready
}

/// Tells the observer about skips and upstream failures once they are written.
fn report_decisions(observer: &mut dyn Observer, decisions: &[(String, TiState)]) {
    for (task, state) in decisions {
        if *state != TiState::Queued {
            observer.event(&RunEvent::Decided { task: task.clone(), state: *state });
        }
    }
}

fn until(t: DateTime<Utc>) -> Duration {
    (t - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

fn is_ready(t: &TiRow, now: DateTime<Utc>) -> bool {
    match t.state {
        TiState::Queued => true,
        TiState::UpForRetry | TiState::UpForReschedule => t.next_try_at.is_none_or(|at| at <= now),
        _ => false,
    }
}

/// The previous run's task states, for `depends_on_past`.
pub type Past = HashMap<String, TiState>;

/// Whether `depends_on_past` (and `wait_for_downstream`) let task `i` run:
/// its instance in the previous run (and with `wait_for_downstream`, those
/// of the tasks right after it) succeeded or were skipped. A task the
/// previous run did not have, or no previous run, passes.
pub fn past_allows(dag: &Dag, i: usize, past: &Past) -> bool {
    let task = &dag.tasks[i];
    if !task.depends_on_past {
        return true;
    }
    let ok = |id: &str| past.get(id).is_none_or(|s| matches!(s, TiState::Success | TiState::Skipped | TiState::Removed));
    ok(&task.id) && (!task.wait_for_downstream || task.downstream.iter().all(|&d| ok(&dag.tasks[d].id)))
}

/// Whether what holds task `i` back in the previous run has failed for
/// good (failed or upstream_failed), rather than still being under way.
fn past_failed(dag: &Dag, i: usize, past: &Past) -> bool {
    let task = &dag.tasks[i];
    let failed = |id: &str| past.get(id).is_some_and(|s| matches!(s, TiState::Failed | TiState::UpstreamFailed));
    failed(&task.id) || (task.wait_for_downstream && task.downstream.iter().any(|&d| failed(&dag.tasks[d].id)))
}

/// Trigger-rule decisions for pending instances, applied in topological
/// order so that a skip or failure propagates down the graph in one pass.
/// A task that may run but whose past does not allow it yet stays pending.
pub fn decide(dag: &Dag, tis: &[TiRow], past: &Past) -> Vec<(String, TiState)> {
    let by_id: HashMap<&str, TiState> = tis.iter().map(|t| (t.task_id.as_str(), t.state)).collect();
    let mut state: Vec<Option<TiState>> = dag.tasks.iter().map(|t| by_id.get(t.id.as_str()).copied()).collect();
    // A mapped task that expanded counts as its instances, each an upstream.
    let mut instances: HashMap<&str, Vec<TiState>> = HashMap::new();
    for t in tis {
        if let Some((name, _)) = crate::dag::split_map_id(&t.task_id) {
            instances.entry(name).or_default().push(t.state);
        }
    }
    let mut out = Vec::new();
    for &i in &dag.topo {
        if state[i] != Some(TiState::Pending) {
            continue;
        }
        let task = &dag.tasks[i];
        let mut c = UpstreamCounts::default();
        for &u in &task.upstream {
            if state[u] == Some(TiState::Success)
                && let Some(states) = instances.get(dag.tasks[u].id.as_str())
            {
                for s in states {
                    match s {
                        TiState::Removed => continue,
                        TiState::Success => c.success += 1,
                        TiState::Skipped => c.skipped += 1,
                        TiState::Failed => c.failed += 1,
                        TiState::UpstreamFailed => c.upstream_failed += 1,
                        _ => {}
                    }
                    c.total += 1;
                }
                continue;
            }
            match state[u] {
                Some(TiState::Removed) | None => continue,
                Some(TiState::Success) => c.success += 1,
                Some(TiState::Skipped) => c.skipped += 1,
                Some(TiState::Failed) => c.failed += 1,
                Some(TiState::UpstreamFailed) => c.upstream_failed += 1,
                Some(_) => {}
            }
            c.total += 1;
        }
        let new = match evaluate(task.trigger_rule, c) {
            Decision::Wait => continue,
            Decision::Run if !past_allows(dag, i, past) => continue,
            Decision::Run => TiState::Queued,
            Decision::Skip => TiState::Skipped,
            Decision::UpstreamFailed => TiState::UpstreamFailed,
        };
        state[i] = Some(new);
        out.push((task.id.clone(), new));
    }
    // A mapped task's instances wait until its expansion's success (and
    // the list in its output) is recorded; an expansion that did not end
    // well leaves them out of the run.
    for t in tis.iter().filter(|t| t.state == TiState::Pending) {
        let Some((name, _)) = crate::dag::split_map_id(&t.task_id) else { continue };
        match by_id.get(name) {
            Some(TiState::Success) => out.push((t.task_id.clone(), TiState::Queued)),
            Some(s) if s.is_terminal() => out.push((t.task_id.clone(), TiState::Removed)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ti(task_id: &str, state: TiState) -> TiRow {
        TiRow {
            task_id: task_id.into(),
            state,
            try_number: 0,
            max_tries: 1,
            worker_id: None,
            next_try_at: None,
            started_at: None,
            ended_at: None,
            error: None,
            error_kind: None,
            output: None,
            notice: None,
        }
    }

    /// The decisions for a DAG whose instances have the given states.
    fn decisions(yaml: &str, states: &[(&str, TiState)]) -> Vec<(String, TiState)> {
        let dag = crate::dag::from_yaml(yaml);
        let tis: Vec<TiRow> = states.iter().map(|(t, s)| ti(t, *s)).collect();
        decide(&dag, &tis, &Past::new())
    }

    #[test]
    fn mapped_instances_wait_for_their_expansion_and_count_each_downstream() {
        use TiState::*;
        const MAPPED: &str = "tasks:
  - { id: m, type: shell, command: 'true', expand: [1, 2] }
  - { id: after, type: shell, command: 'true', depends_on: [m] }
";
        // The expansion is still recording its end: its instances wait.
        assert!(decisions(MAPPED, &[("m", Running), ("m[0]", Pending), ("m[1]", Pending), ("after", Pending)]).is_empty());
        // Recorded: they are queued; `after` waits for both.
        let got = decisions(MAPPED, &[("m", Success), ("m[0]", Pending), ("m[1]", Pending), ("after", Pending)]);
        assert_eq!(got, vec![("m[0]".to_string(), Queued), ("m[1]".to_string(), Queued)]);
        assert!(decisions(MAPPED, &[("m", Success), ("m[0]", Success), ("m[1]", Running), ("after", Pending)]).is_empty());
        // One failed instance fails `after` (all_success), as in Airflow.
        let got = decisions(MAPPED, &[("m", Success), ("m[0]", Success), ("m[1]", Failed), ("after", Pending)]);
        assert_eq!(got, vec![("after".to_string(), UpstreamFailed)]);
    }

    /// A fan-out offers the claim only the best few of its ready
    /// instances, in the claim's own order; with a pool, all of them.
    #[test]
    fn a_claim_is_offered_the_best_ready_instances_unless_a_pool_can_refuse_some() {
        use std::fmt::Write;
        let fan_out = |pool: &str| {
            let mut y = "tasks:\n  - { id: start, type: shell, command: 'true' }\n".to_string();
            for i in 0..40 {
                let weight = if i == 37 { ", priority_weight: 5" } else { "" };
                writeln!(y, "  - {{ id: t{i:02}, type: shell, command: 'true', depends_on: [start]{weight}{pool} }}").unwrap();
            }
            crate::dag::from_yaml(&y)
        };
        let mut tis = vec![ti("start", TiState::Success)];
        tis.extend((0..40).map(|i| ti(&format!("t{i:02}"), TiState::Queued)));
        tis[4].state = TiState::Running;
        let now = Utc::now();
        let dag = fan_out("");
        let offered: Vec<&str> = claim_candidates(&dag, &tis, now, 1).iter().map(|c| c.0.task_id.as_str()).collect();
        assert_eq!(offered, ["t37", "t00", "t01", "t02", "t04", "t05", "t06", "t07", "t08", "t09"]);
        assert_eq!(claim_candidates(&dag, &tis, now, 32).len(), 39, "all, when the slots allow");
        let pooled = fan_out(", pool: small");
        assert_eq!(claim_candidates(&pooled, &tis, now, 1).len(), 39, "a pool may refuse the best: all are offered");
    }

    const DIAMOND: &str = "tasks:
  - { id: a, type: shell, command: 'true' }
  - { id: b, type: shell, command: 'true', depends_on: [a] }
  - { id: c, type: shell, command: 'true', depends_on: [a] }
  - { id: d, type: shell, command: 'true', depends_on: [b, c] }
  - { id: cleanup, type: shell, command: 'true', depends_on: [d], trigger_rule: all_done }
";

    #[test]
    fn a_failure_propagates_down_the_graph_in_one_pass() {
        use TiState::*;
        let got = decisions(DIAMOND, &[("a", Failed), ("b", Pending), ("c", Pending), ("d", Pending), ("cleanup", Pending)]);
        assert_eq!(
            got,
            vec![("b".into(), UpstreamFailed), ("c".into(), UpstreamFailed), ("d".into(), UpstreamFailed), ("cleanup".into(), Queued),]
        );
    }

    #[test]
    fn a_skip_propagates_and_waiting_tasks_are_left_alone() {
        use TiState::*;
        let got = decisions(DIAMOND, &[("a", Success), ("b", Skipped), ("c", Running), ("d", Pending), ("cleanup", Pending)]);
        // d is skipped at once (eager, as Airflow); cleanup then runs.
        assert_eq!(got, vec![("d".into(), Skipped), ("cleanup".into(), Queued)]);
        let got = decisions(DIAMOND, &[("a", Success), ("b", Success), ("c", UpForRetry), ("d", Pending), ("cleanup", Pending)]);
        assert_eq!(got, vec![], "d waits for c's retry");
    }

    #[test]
    fn depends_on_past_holds_a_task_until_its_previous_run_succeeded() {
        use TiState::*;
        let dag = crate::dag::from_yaml(
            "tasks:
  - { id: a, type: shell, command: 'true', depends_on_past: true }
  - { id: b, type: shell, command: 'true', depends_on: [a] }
  - { id: c, type: shell, command: 'true', wait_for_downstream: true }
  - { id: d, type: shell, command: 'true', depends_on: [c] }
",
        );
        let tis: Vec<TiRow> = ["a", "b", "c", "d"].iter().map(|t| ti(t, Pending)).collect();
        let past = |states: &[(&str, TiState)]| -> Past { states.iter().map(|(t, s)| (t.to_string(), *s)).collect() };
        // The first run (no previous one) passes.
        assert_eq!(decide(&dag, &tis, &Past::new()), vec![("a".into(), Queued), ("c".into(), Queued)]);
        // a failed last time: a waits. d failed last time: c waits too
        // (wait_for_downstream), although c itself succeeded.
        assert_eq!(decide(&dag, &tis, &past(&[("a", Failed), ("b", Success), ("c", Success), ("d", Failed)])), vec![]);
        assert_eq!(
            decide(&dag, &tis, &past(&[("a", Success), ("b", UpstreamFailed), ("c", Success), ("d", Skipped)])),
            vec![("a".into(), Queued), ("c".into(), Queued)]
        );
        // A task the previous run did not have passes; a running one holds.
        assert_eq!(decide(&dag, &tis, &past(&[("c", Running)])), vec![("a".into(), Queued)]);
    }

    #[test]
    fn removed_and_unknown_upstreams_do_not_count() {
        use TiState::*;
        // c was removed from the DAG file's run (state `removed`): d counts b only.
        let got = decisions(DIAMOND, &[("a", Success), ("b", Success), ("c", Removed), ("d", Pending)]);
        assert_eq!(got, vec![("d".into(), Queued)]);
    }
}

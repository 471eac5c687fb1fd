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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dag::Dag;
use crate::resources::Resources;
use crate::state::{RunRow, RunState, StateError, Store, TiState, Worker};
use crate::tasks::TryLog;

pub mod backfill;
mod decide;
mod driver;
pub mod exec;
pub mod expand;
pub mod notice;
pub use decide::{Past, decide, past_allows};
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
        let mut d = loop {
            let begin = async {
                let mut run = match known.take() {
                    Some(run) => run,
                    None => self.store.run(run_id).await?.ok_or(RunnerError::NoRun(run_id))?,
                };
                if run.state != RunState::Running {
                    self.store.start_run(run_id).await?;
                    run = self.store.run(run_id).await?.ok_or(RunnerError::NoRun(run_id))?;
                }
                // Always syncs the instances: a file edited and edited back
                // has the run's original hash, but instances of the edit to
                // remove.
                let mut d = driver::Driver::new(self, dag.clone(), run, stop.drain.clone());
                d.open(observer).await?;
                Ok::<_, RunnerError>(d)
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
                d.interrupt();
            }
            // A failing state store never drops the tries running here: they
            // keep running and record their ends when the store is back.
            let wait = match d.step(observer, stopping).await {
                Ok(driver::Step::Done(outcome)) => return Ok(outcome),
                Ok(driver::Step::Wait(w)) => {
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
                    if stopping && d.idle() {
                        return Ok(RunOutcome::Interrupted);
                    }
                    w
                }
            };
            tokio::select! {
                r = d.next_end(), if !d.idle() => d.ended(r, observer).await,
                _ = tokio::time::sleep(wait) => {}
                _ = stop.drain.cancelled(), if !stopping => stopping = true,
                _ = stop.interrupt.cancelled(), if !interrupted => {}
            }
        }
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

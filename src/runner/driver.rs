//! The driver of one run in this process: each step reads the run's
//! states (or takes those its last recorded end returned), writes the
//! trigger-rule decisions, claims ready tries and starts them, and
//! finishes the run when every instance is terminal.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::decide::{Past, decide, past_allows, past_failed};
use super::{Observer, RunEvent, RunOutcome, Runner, TryReport, exec, notice};
use crate::dag::{Dag, Task};
use crate::state::chain::ForeseenClaim;
use crate::state::open::OpenStart;
use crate::state::{ClaimSpec, Claimed, RunRow, RunState, StateError, TiRow, TiState};

/// How long a driver waits after a try's end for more ends before its next
/// step, when at least [`GATHER_FROM`] other tries are running here.
const GATHER: Duration = Duration::from_millis(1);
const GATHER_FROM: usize = 2;

/// What a driver step decided.
pub(super) enum Step {
    Done(RunOutcome),
    /// Wait at most this long before the next step.
    Wait(Duration),
}

/// The state of one run's driver.
pub(super) struct Driver<'r> {
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
    /// Cancelled when the run is to start nothing new (a drain): a try's
    /// end then claims nothing either.
    drain: CancellationToken,
    /// The state a try's end finished the run in ([`Chained`]): the step
    /// that sees every instance done records nothing more.
    finished: Option<RunState>,
}

/// What a try's success will lead to, worked out when the try starts,
/// for a try that is the only one running in its run (a chain's step):
/// its end and this claim then go to the state store in one round trip
/// ([`crate::state::Store::finish_and_claim`]), and the next try starts
/// without a driver step in between.
pub struct Ahead {
    pub claim: ForeseenClaim,
    /// The run's states after the success and its decisions.
    tis: Vec<TiRow>,
    pub drain: CancellationToken,
}

/// A try's end recorded with the claim it led to.
#[derive(Debug, Clone)]
pub struct Chained {
    pub decisions: Vec<(String, TiState)>,
    pub claimed: Vec<Claimed>,
    /// The run's states after the end and the decisions (before the claim).
    tis: Vec<TiRow>,
    /// The state the run was finished in with the end.
    finished: Option<RunState>,
}

impl Ahead {
    /// What the driver is told when the claim was made as foreseen.
    pub fn chained(self, claimed: Vec<Claimed>) -> Chained {
        Chained { decisions: self.claim.decisions, claimed, tis: self.tis, finished: None }
    }

    /// What the driver is told when the run was finished with the end.
    pub fn finished(self) -> Chained {
        Chained { decisions: self.claim.decisions, claimed: Vec::new(), tis: self.tis, finished: self.claim.finish }
    }
}

impl<'r> Driver<'r> {
    pub(super) fn new(runner: &'r Runner, dag: Arc<Dag>, run: RunRow, drain: CancellationToken) -> Self {
        Driver {
            runner,
            dag,
            run: Arc::new(run),
            interrupt: CancellationToken::new(),
            tries: JoinSet::new(),
            local: HashSet::new(),
            last_reap: tokio::time::Instant::now() - runner.heartbeat_every,
            blocked_said: false,
            prev_success: None,
            fresh: None,
            drain,
            finished: None,
        }
    }

    /// Opens the run in one statement ([`crate::state::Store::open_run`]):
    /// syncs its instances with the DAG and reads the DAG's previous
    /// success; claims and starts the first tries when the run is as a run
    /// nothing has touched yet (every task pending), else reads its states
    /// for the first step.
    pub(super) async fn open(&mut self, observer: &mut dyn Observer) -> Result<(), StateError> {
        let first = self.foresee_open();
        let run = &self.run;
        let opened = self
            .runner
            .store
            .open_run(run.run_id, &self.dag, run.logical_date, &self.runner.worker.id, first.as_ref().map(|a| &a.claim))
            .await?;
        self.prev_success = opened.prev_success;
        match (opened.start, first) {
            (OpenStart::States(tis), _) => self.fresh = Some(tis),
            (OpenStart::Claimed(claimed), Some(Ahead { claim, tis, .. })) => {
                report_decisions(observer, &claim.decisions);
                self.fresh = self.start(observer, claimed, Some(tis));
            }
            (OpenStart::Decided, Some(Ahead { claim, .. })) => report_decisions(observer, &claim.decisions),
            // Claims are only made when foreseen.
            (OpenStart::Claimed(_) | OpenStart::Decided, None) => {}
        }
        Ok(())
    }

    /// Stops the tries running here (they are requeued).
    pub(super) fn interrupt(&self) {
        self.interrupt.cancel();
    }

    /// Whether no try of this driver is running.
    pub(super) fn idle(&self) -> bool {
        self.tries.is_empty()
    }

    /// Waits for the next try of this driver to end (never, when none runs).
    pub(super) async fn next_end(&mut self) -> Option<Result<TryReport, tokio::task::JoinError>> {
        self.tries.join_next().await
    }

    /// Takes in the ends of tries: `first`, and any others already over.
    /// In a fan-out (other tries still running here), also those that end
    /// within [`GATHER`] of it: each step after ends reads the run's states
    /// and claims, so one step for several ends costs the state store less.
    pub(super) async fn ended(&mut self, first: Option<Result<TryReport, tokio::task::JoinError>>, observer: &mut dyn Observer) {
        let mut results = vec![first];
        if self.tries.len() >= GATHER_FROM {
            let until = tokio::time::Instant::now() + GATHER;
            while let Ok(Some(more)) = tokio::time::timeout_at(until, self.tries.join_next()).await {
                results.push(Some(more));
            }
        }
        while let Some(more) = self.tries.try_join_next() {
            results.push(Some(more));
        }
        let one = results.len() == 1;
        for r in results.into_iter().flatten() {
            match r {
                Ok(mut report) => {
                    self.local.remove(&report.task_id);
                    // The states the end was recorded with (only given when
                    // nothing else of the run was running) serve the next
                    // step when no other end came with it and none is
                    // running here.
                    let current = one && self.tries.is_empty();
                    self.fresh = report.states.take().filter(|_| current);
                    let chained = report.chained.take();
                    observer.event(&RunEvent::Finished(report));
                    // Its end claimed what it led to: start that now.
                    if let Some(chained) = chained {
                        let Chained { decisions, claimed, tis, finished } = *chained;
                        self.finished = self.finished.or(finished);
                        report_decisions(observer, &decisions);
                        let tis = self.start(observer, claimed, Some(tis));
                        self.fresh = tis.filter(|_| current);
                    }
                }
                // TryJob::run catches panics and records them; this is
                // only reached if the runtime aborts it.
                Err(e) => tracing::error!(error = %e, "a try's job ended abnormally"),
            }
        }
    }

    /// One pass: reap zombies, settle trigger rules, finish the run or claim
    /// and start ready tries. Store errors are returned; nothing running is
    /// lost by them.
    pub(super) async fn step(&mut self, observer: &mut dyn Observer, stopping: bool) -> Result<Step, StateError> {
        self.reap().await?;
        let store = &self.runner.store;
        let run_id = self.run.run_id;
        let mut tis = match self.fresh.take() {
            Some(tis) => tis,
            None => store.task_states(run_id).await?,
        };
        let past = self.past(&tis).await?;
        // decide() settles every pending instance it can in one pass, so
        // the local copy is current after applying its result. The
        // decisions are written by the claim below, in its transaction,
        // or on their own when nothing is claimed.
        let decisions = decide(&self.dag, &tis, &past.1);
        apply_locally(&mut tis, &decisions);
        let now = Utc::now();
        let all_done = tis.iter().all(|t| t.state.is_terminal());
        if !all_done && let Some(limit) = self.over_time(now) {
            return self.time_out(limit, observer).await;
        }
        if all_done && self.tries.is_empty() {
            self.write_decisions(&decisions, observer).await?;
            let ok = run_succeeds(&tis);
            let state = if ok { RunState::Success } else { RunState::Failed };
            // Finished with its last try's end, or now.
            let finished_here = match self.finished.take() {
                Some(_) => true,
                None => store.finish_run(run_id, state).await?,
            };
            if finished_here {
                notice::notify_run(self.runner, &self.dag, &self.run, state, None).await;
            }
            observer.event(&RunEvent::RunFinished { state });
            return Ok(Step::Done(if ok { RunOutcome::Success } else { RunOutcome::Failed }));
        }
        if stopping && self.tries.is_empty() {
            self.write_decisions(&decisions, observer).await?;
            return Ok(Step::Done(RunOutcome::Interrupted));
        }

        let running_total = tis.iter().filter(|t| t.state == TiState::Running).count();
        let ready = tis.iter().any(|t| is_ready(t, now));
        if !ready || stopping {
            self.write_decisions(&decisions, observer).await?;
        } else {
            self.claim_and_start(observer, &tis, running_total, now, &decisions).await?;
        }
        if self.held_by_failed_past(&tis, &past) && !self.runner.wait_for_past {
            return Ok(Step::Done(RunOutcome::Interrupted));
        }
        // Wait for a try to end, a retry to come due, or other workers
        // to move the run on. After claiming, nothing else can start
        // until something ends (or another worker's claims are missed
        // for one poll).
        let next_retry =
            tis.iter().filter(|t| matches!(t.state, TiState::UpForRetry | TiState::UpForReschedule)).filter_map(|t| t.next_try_at).min();
        let others_running = running_total > self.local.len();
        let mut wait = if others_running || ready { Duration::from_millis(500) } else { self.runner.heartbeat_every };
        if let Some(at) = next_retry {
            wait = wait.min(until(at));
        }
        Ok(Step::Wait(wait))
    }

    /// Writes the decisions on their own (when no claim writes them) and
    /// tells the observer.
    async fn write_decisions(&self, decisions: &[(String, TiState)], observer: &mut dyn Observer) -> Result<(), StateError> {
        self.runner.store.decide(self.run.run_id, decisions).await?;
        report_decisions(observer, decisions);
        Ok(())
    }

    /// Reaps the tries of workers that stopped heartbeating, once per
    /// heartbeat period (unless the daemon's reaper does it).
    async fn reap(&mut self) -> Result<(), StateError> {
        let runner = self.runner;
        if !runner.reap_in_drive || self.last_reap.elapsed() < runner.heartbeat_every {
            return Ok(());
        }
        self.last_reap = tokio::time::Instant::now();
        let live = runner.live_tries();
        for (r, task, try_number, state) in
            runner.store.reap(runner.reap_timeout(), runner.worker_failures, &runner.worker.id, &live).await?
        {
            self.fresh = None;
            tracing::warn!(run = r, task = %task, try_number, new_state = %state, "reaped a try whose worker stopped heartbeating");
        }
        Ok(())
    }

    /// The previous run and its states, for `depends_on_past`: read only
    /// while a task that has it is still pending.
    async fn past(&self, tis: &[TiRow]) -> Result<(Option<i64>, Past), StateError> {
        let dag = &self.dag;
        let needed = self.runner.ignore_past_for != Some(self.run.run_id)
            && dag.depends_on_past()
            && tis.iter().any(|t| t.state == TiState::Pending && dag.task(&t.task_id).is_some_and(|x| x.depends_on_past));
        match needed {
            true => self.runner.store.previous_run_states(&dag.dag_id, self.run.logical_date).await,
            false => Ok((None, Past::new())),
        }
    }

    /// The run's `dagrun_timeout`, when the run has exceeded it.
    fn over_time(&self, now: DateTime<Utc>) -> Option<Duration> {
        let limit = self.dag.dagrun_timeout?;
        let since = self.run.started_at.unwrap_or(self.run.created_at);
        (now - since > chrono::Duration::from_std(limit).unwrap_or(chrono::TimeDelta::MAX)).then_some(limit)
    }

    /// Fails the run for exceeding its `dagrun_timeout`: unfinished tasks
    /// are skipped and the tries running here stopped.
    async fn time_out(&mut self, limit: Duration, observer: &mut dyn Observer) -> Result<Step, StateError> {
        let why = format!(
            "the run exceeded its dagrun_timeout ({}) and was stopped; unfinished tasks were skipped",
            crate::dag::duration::format(limit)
        );
        tracing::error!(dag = %self.dag.dag_id, run = self.run.run_id, "{why}");
        if self.runner.store.time_out_run(self.run.run_id, &why).await? {
            // The tries running here stop; their ends are not applied (the
            // instances are skipped already).
            self.interrupt.cancel();
            while let Some(r) = self.tries.join_next().await {
                if let Ok(report) = r {
                    self.local.remove(&report.task_id);
                }
            }
            notice::notify_run(self.runner, &self.dag, &self.run, RunState::Failed, Some(why)).await;
        }
        observer.event(&RunEvent::RunFinished { state: RunState::Failed });
        Ok(Step::Done(RunOutcome::Failed))
    }

    /// Writes the decisions, claims ready tries within the DAG's and this
    /// process's limits (one transaction), and starts those claimed.
    async fn claim_and_start(
        &mut self,
        observer: &mut dyn Observer,
        tis: &[TiRow],
        running_total: usize,
        now: DateTime<Utc>,
        decisions: &[(String, TiState)],
    ) -> Result<(), StateError> {
        let runner = self.runner;
        let dag = &self.dag;
        // The candidates: the instances ready in this snapshot (one that
        // another process queues meanwhile waits for the next step), and
        // what their tries read, fetched by the claim.
        let slots = (dag.max_active_tasks as usize).saturating_sub(running_total).min(runner.parallelism.saturating_sub(self.local.len()));
        let (specs, reads) = claim_specs(dag, &claim_candidates(dag, tis, now, slots));
        let claimed = runner
            .store
            .claim(self.run.run_id, &runner.worker.id, slots as i64, dag.max_active_tasks as i64, &specs, decisions, &reads)
            .await?;
        report_decisions(observer, decisions);
        // The states are copied only for a try that may chain.
        let tis = (claimed.len() == 1 && self.local.is_empty()).then(|| tis.to_vec());
        self.start(observer, claimed, tis);
        Ok(())
    }

    /// Starts the tries claimed; `tis`, the run's states before the claim
    /// when known, are returned with the claimed instances running. A try
    /// left the only one running in the run is given what its success
    /// will lead to.
    fn start(&mut self, observer: &mut dyn Observer, claimed: Vec<Claimed>, mut tis: Option<Vec<TiRow>>) -> Option<Vec<TiRow>> {
        for t in tis.iter_mut().flatten() {
            if claimed.iter().any(|c| c.task_id == t.task_id) {
                t.state = TiState::Running;
            }
        }
        let single = claimed.len() == 1 && self.local.is_empty();
        for c in claimed {
            observer.event(&RunEvent::Started { task: c.task_id.clone(), try_number: c.try_number, max_tries: c.max_tries });
            self.local.insert(c.task_id.clone());
            let next = match (&tis, single) {
                (Some(tis), true) => self.foresee(tis, &c.task_id),
                _ => None,
            };
            let job = exec::TryJob {
                runner: self.runner.clone(),
                dag: self.dag.clone(),
                run: self.run.clone(),
                claimed: c,
                interrupt: self.interrupt.clone(),
                prev_success: self.prev_success,
                next,
            };
            self.tries.spawn(job.run());
        }
        tis
    }

    /// What the success of `task_id`, the only try running in the run
    /// (`tis`), will decide and claim; none when the next step could
    /// decide otherwise than from the run's states alone (a timeout,
    /// `depends_on_past`, pools, retries waiting), when the success sends
    /// notices, or when it claims nothing.
    fn foresee(&self, tis: &[TiRow], task_id: &str) -> Option<Ahead> {
        let dag = &self.dag;
        if !self.may_foresee() {
            return None;
        }
        // Notices are sent after the end is recorded: the tries claimed
        // with it would wait for them, unheartbeated.
        if dag.resolve(task_id).is_none_or(|(t, _)| !t.on_success.is_empty()) {
            return None;
        }
        if tis.iter().any(|t| t.task_id != task_id && t.state != TiState::Pending && !t.state.is_terminal()) {
            return None;
        }
        let mut after = tis.to_vec();
        after.iter_mut().find(|t| t.task_id == task_id)?.state = TiState::Success;
        self.ahead(after)
    }

    /// The first claim of a run nothing has touched yet: every task of the
    /// DAG pending.
    fn foresee_open(&self) -> Option<Ahead> {
        if !self.may_foresee() {
            return None;
        }
        let dag = &self.dag;
        let fresh =
            dag.topo.iter().map(|&i| TiRow::untried(dag.tasks[i].id.clone(), TiState::Pending, dag.tasks[i].retries as i32 + 1)).collect();
        // (A run opened is never finished by its opening.)
        self.ahead(fresh).filter(|a| a.claim.finish.is_none())
    }

    /// Whether a claim may be worked out ahead: not for a run with a
    /// deadline or waiting for its predecessors, nor while draining.
    fn may_foresee(&self) -> bool {
        !(self.dag.dagrun_timeout.is_some() || self.dag.depends_on_past() || self.drain.is_cancelled())
    }

    /// The claim that the run's states `after` lead to, if one can be made
    /// without the pools' choice; nothing of the run may be running.
    fn ahead(&self, mut after: Vec<TiRow>) -> Option<Ahead> {
        let dag = &self.dag;
        let expect: Vec<(String, TiState)> = after.iter().map(|t| (t.task_id.clone(), t.state)).collect();
        let decisions = decide(dag, &after, &Past::new());
        apply_locally(&mut after, &decisions);
        // The last end of the run: it finishes the run.
        if after.iter().all(|t| t.state.is_terminal()) {
            let finish = Some(if run_succeeds(&after) { RunState::Success } else { RunState::Failed });
            let claim = ForeseenClaim {
                expect,
                decisions,
                limit: 0,
                max_active: 0,
                tasks: HashMap::new(),
                upstream: Vec::new(),
                mapped: Vec::new(),
                finish,
            };
            return Some(Ahead { claim, tis: after, drain: self.drain.clone() });
        }
        let slots = (dag.max_active_tasks as usize).min(self.runner.parallelism);
        let candidates = claim_candidates(dag, &after, Utc::now(), slots);
        if slots == 0
            || candidates.is_empty()
            || candidates.iter().any(|(_, t, index)| t.pool.is_some() || (index.is_some() && t.max_active_tis.is_some()))
        {
            return None;
        }
        let (tasks, reads) = claim_specs(dag, &candidates);
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
        let claim = ForeseenClaim {
            expect,
            decisions,
            limit: slots as i64,
            max_active: dag.max_active_tasks as i64,
            tasks,
            upstream: owned(reads.upstream),
            mapped: owned(reads.mapped),
            finish: None,
        };
        Some(Ahead { claim, tis: after, drain: self.drain.clone() })
    }

    /// Whether the run is held only by tasks whose previous run failed
    /// (`depends_on_past`): nothing here can move it on until that run is
    /// fixed. Says so once. The daemon waits (as Airflow does); a
    /// foreground run stops, resumable. A previous run still going (a
    /// backfill's, say) is waited for.
    fn held_by_failed_past(&mut self, tis: &[TiRow], past: &(Option<i64>, Past)) -> bool {
        let dag = &self.dag;
        let blocked: Vec<&TiRow> = tis
            .iter()
            .filter(|t| t.state == TiState::Pending)
            .filter(|t| dag.task_index(&t.task_id).is_some_and(|i| !past_allows(dag, i, &past.1)))
            .collect();
        let moving =
            tis.iter().any(|t| matches!(t.state, TiState::Queued | TiState::Running | TiState::UpForRetry | TiState::UpForReschedule))
                || !self.tries.is_empty();
        let failed_past = blocked.iter().all(|t| dag.task_index(&t.task_id).is_some_and(|i| past_failed(dag, i, &past.1)));
        if blocked.is_empty() || moving || !failed_past {
            return false;
        }
        if !self.blocked_said {
            self.blocked_said = true;
            let names: Vec<&str> = blocked.iter().map(|t| t.task_id.as_str()).collect();
            let prev = past.0.map_or("the previous run".to_string(), |r| format!("run {r}"));
            tracing::warn!(
                "{} wait{} for {prev} (depends_on_past): fix that run (`sluice tasks clear {} --run ... --only-failed`), and this one goes on",
                names.join(", "),
                if names.len() == 1 { "s" } else { "" },
                dag.dag_id
            );
        }
        true
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

/// What a claim of `candidates` needs: each task's limits from the DAG
/// file, and the outputs their tries read.
fn claim_specs<'d>(dag: &'d Dag, candidates: &[(&TiRow, &'d Task, Option<i32>)]) -> (HashMap<String, ClaimSpec>, crate::state::Reads<'d>) {
    let mut specs: HashMap<String, ClaimSpec> = HashMap::new();
    let mut reads = crate::state::Reads::default();
    for &(ti, t, index) in candidates {
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
    (specs, reads)
}

/// Applies decisions to a local copy of the run's states.
fn apply_locally(tis: &mut [TiRow], decisions: &[(String, TiState)]) {
    if decisions.is_empty() {
        return;
    }
    let decided: HashMap<&str, TiState> = decisions.iter().map(|(t, s)| (t.as_str(), *s)).collect();
    for t in tis.iter_mut() {
        if let Some(s) = decided.get(t.task_id.as_str()) {
            t.state = *s;
        }
    }
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

/// Whether a run whose instances are all done succeeded.
fn run_succeeds(tis: &[TiRow]) -> bool {
    tis.iter().all(|t| matches!(t.state, TiState::Success | TiState::Skipped | TiState::Removed))
}

fn is_ready(t: &TiRow, now: DateTime<Utc>) -> bool {
    match t.state {
        TiState::Queued => true,
        TiState::UpForRetry | TiState::UpForReschedule => t.next_try_at.is_none_or(|at| at <= now),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::ti;
    use super::*;

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
}

//! One try of one task: render, build, run under the timeout, record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use chrono::Utc;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Runner;
use super::driver::{Ahead, Chained};
use crate::dag::{Dag, Task};
use crate::datasets::DatasetRef;
use crate::state::{Claimed, RunRow, TiRow, TiState, TryEnd};
use crate::tasks::{Outcome, TaskConfig, TaskCtx, TaskError, TryLog};
use crate::template::RenderVars;

/// How a try ended, for observers.
#[derive(Debug, Clone)]
pub struct TryReport {
    pub task_id: String,
    pub try_number: i32,
    pub max_tries: i32,
    /// The instance's state after the try (up_for_retry when it will be retried).
    pub state: TiState,
    pub elapsed: Duration,
    pub note: Option<String>,
    pub error: Option<String>,
    pub retry_in: Option<Duration>,
    pub warnings: Vec<String>,
    /// True when the try was interrupted and put back in the queue.
    pub interrupted: bool,
    /// What became of the notices sent after the try (`on_failure`...).
    pub notices: Vec<super::notice::Notice>,
    /// The run's task states as the end of the try was recorded, if it was.
    pub states: Option<Vec<TiRow>>,
    /// The claim the end was recorded with, when it was foreseen.
    pub chained: Option<Box<Chained>>,
}

pub struct TryJob {
    pub runner: Runner,
    pub dag: Arc<Dag>,
    pub run: Arc<RunRow>,
    pub claimed: Claimed,
    pub interrupt: CancellationToken,
    /// The DAG's latest successful run before this one (read once per run).
    pub prev_success: Option<crate::template::PrevSuccess>,
    /// What a success leads to, when the driver could work it out ahead.
    pub next: Option<Ahead>,
}

impl TryJob {
    /// Runs the try and records how it ended. Whatever happens inside (an
    /// error, a panic in the task or in blocking work it spawned), the try
    /// ends in a recorded state: success, failed, up_for_retry or requeued.
    pub async fn run(self) -> TryReport {
        let TryJob { runner, dag, run, claimed, interrupt, prev_success, next } = self;
        let log = if runner.echo_logs { TryLog::echoing() } else { TryLog::new() };
        if claimed.poking_since.is_some() {
            // A rescheduled sensor's try goes on with its log so far.
            if let Ok(Some((_, _, text))) = runner.store.try_log(run.run_id, &claimed.task_id, Some(claimed.try_number)).await {
                log.seed(&text);
            }
        }
        let key = (run.run_id, claimed.task_id.clone(), claimed.try_number);
        // Registered tries are heartbeated; a try leaves the registry only
        // when its end is recorded (or given up on at shutdown).
        runner.live_logs.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), log.clone());
        let guard = crate::logging::capture(&log);
        // WARN level so that every layer's filter keeps the span and can
        // tell that an event happened inside a try (see logging.rs).
        let span = tracing::warn_span!(
            "try",
            log_key = guard.0,
            dag = %dag.dag_id,
            run = run.run_id,
            task = %claimed.task_id,
            try_number = claimed.try_number
        );
        let started = Instant::now();
        let body = async {
            // Claims only take tasks of this process's DAG (see Store::claim).
            let Some((task, map_index)) = dag.resolve(&claimed.task_id) else {
                return Err(TaskError::Panic(format!("claimed task `{}` is not in DAG `{}`", claimed.task_id, dag.dag_id)));
            };
            tracing::info!(
                "starting try {}/{} of {} (run {}, worker {})",
                claimed.try_number,
                claimed.max_tries,
                claimed.task_id,
                run.run_id,
                runner.worker.id
            );
            let outputs = match &claimed.outputs {
                Some(o) => o.as_ref().clone(),
                None => {
                    let r = reads(&dag, task, map_index);
                    runner.store.outputs_of(run.run_id, &r.upstream, &r.mapped).await.map_err(|e| match e {
                        crate::state::StateError::Sql(e) => TaskError::sql("cannot read upstream outputs", &e),
                        other => TaskError::transient(format!("cannot read upstream outputs: {other}")),
                    })?
                }
            };
            let map = match map_index {
                Some(n) => Some((n, super::expand::item_of(&outputs, &task.id, n)?)),
                None => None,
            };
            let upstream = upstream_of(task, &dag, &outputs);
            let inputs = datasets_of(task, &dag, outputs);
            let mut ctx = task_ctx(
                runner.res.clone(),
                &dag,
                task,
                &run,
                claimed.try_number,
                inputs,
                upstream,
                log.clone(),
                false,
                prev_success,
                map,
            )?;
            ctx.poking_since = claimed.poking_since;
            // A mapped task's own instance expands it; its instances run it.
            let work = async {
                match (&task.expand, map_index) {
                    (Some(spec), None) => super::expand::expand(&runner, task, spec, &ctx).await,
                    _ => run_with_timeout(&dag, task, &ctx).await,
                }
            };
            tokio::select! {
                r = work => r,
                _ = interrupt.cancelled() => Err(TaskError::Cancelled("interrupted".into())),
            }
        };
        let result = match AssertUnwindSafe(body).catch_unwind().instrument(span.clone()).await {
            Ok(r) => r,
            Err(panic) => Err(TaskError::Panic(crate::tasks::error::panic_message(panic.as_ref()))),
        };
        let elapsed = started.elapsed();
        // Whether another try of the run is running here (registered and
        // not recorded yet): if so, the end does not ask for the run's states.
        let alone = !runner.live_logs.lock().unwrap_or_else(|e| e.into_inner()).keys().any(|k| k.0 == key.0 && *k != key);
        // Instrumented, not entered: a guard held across an await would
        // leave the span entered on whatever thread runs other tasks meanwhile.
        let recorded =
            AssertUnwindSafe(record(&runner, &dag, &run, &claimed, result, elapsed, &log, &interrupt, next, alone)).catch_unwind();
        let report = match recorded.instrument(span).await {
            Ok(r) => r,
            Err(panic) => {
                // Recording itself panicked: record a plain failure instead.
                let msg = format!(
                    "sluice panicked while recording the try (a bug in sluice): {}",
                    crate::tasks::error::panic_message(panic.as_ref())
                );
                tracing::error!("{msg}");
                let end = TryEnd {
                    state: TiState::Failed,
                    error: Some(msg.clone()),
                    output: None,
                    exit_code: None,
                    next_try_at: None,
                    error_kind: Some(crate::tasks::ErrorKind::Internal),
                    log: log.text(),
                    assets: Vec::new(),
                };
                store_end(&runner, &run, &claimed, &end, &interrupt, alone).await;
                TryReport::new(&claimed, TiState::Failed, elapsed).with_error(msg)
            }
        };
        runner.live_logs.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        drop(guard);
        report
    }
}

impl TryReport {
    fn new(claimed: &Claimed, state: TiState, elapsed: Duration) -> TryReport {
        TryReport {
            task_id: claimed.task_id.clone(),
            try_number: claimed.try_number,
            max_tries: claimed.max_tries,
            state,
            elapsed,
            note: None,
            error: None,
            retry_in: None,
            warnings: Vec::new(),
            interrupted: false,
            notices: Vec::new(),
            states: None,
            chained: None,
        }
    }

    fn with_error(mut self, e: String) -> TryReport {
        self.error = Some(e);
        self
    }
}

const CLAIM_LOST: &str = "this try's claim was lost meanwhile (cleared, or declared a zombie and retried); its result was not applied";

/// Records a success with the claim it was foreseen to lead to, in one
/// round trip. `None` when that could not be done (the store failed): the
/// end is then recorded on its own, retried as any end (if the failed call
/// did commit, its claimed tries are found by their stale heartbeat).
async fn store_end_and_claim(runner: &Runner, run: &RunRow, claimed: &Claimed, end: &TryEnd, next: Ahead) -> Option<Recorded> {
    use crate::state::chain::ChainEnd;
    match runner.store.finish_and_claim(run.run_id, &claimed.task_id, claimed.try_number, &runner.worker.id, end, &next.claim).await {
        Ok(ChainEnd::Claimed(tries)) => Some(Recorded::Chained(next.chained(tries))),
        Ok(ChainEnd::Decided) => Some(Recorded::Chained(next.chained(Vec::new()))),
        Ok(ChainEnd::Finished) => Some(Recorded::Chained(next.finished())),
        Ok(ChainEnd::Ended) => Some(Recorded::States(None)),
        Ok(ChainEnd::Lost) => {
            tracing::warn!("{CLAIM_LOST}");
            Some(Recorded::States(None))
        }
        Err(e) => {
            tracing::debug!(error = %e, "recording the end with the next claim failed; recording the end alone");
            None
        }
    }
}

/// How an end was recorded: alone (with the run's states when nothing
/// else was running), or with the claim it led to.
enum Recorded {
    States(Option<Vec<TiRow>>),
    Chained(Chained),
}

/// Records the end of a try in the state store, retrying with backoff while
/// the store is unreachable: the outcome is kept here until it is written,
/// and the try keeps its heartbeat meanwhile. Gives up only when `give_up`
/// is cancelled (shutdown); the try is then found by its stale heartbeat.
/// Returns the run's task states after the end, when it was applied and
/// nothing else of the run was running (looked for only when `alone`: no
/// other try of the run runs in this process).
async fn store_end(
    runner: &Runner,
    run: &RunRow,
    claimed: &Claimed,
    end: &TryEnd,
    give_up: &CancellationToken,
    alone: bool,
) -> Option<Vec<TiRow>> {
    let mut wait = Duration::from_millis(250);
    let mut logged = false;
    loop {
        match runner.store.finish_try(run.run_id, &claimed.task_id, claimed.try_number, &runner.worker.id, end, alone).await {
            Ok(Some(states)) => {
                if logged {
                    tracing::info!("the end of the try is recorded now");
                }
                return states;
            }
            Ok(None) => {
                tracing::warn!("{CLAIM_LOST}");
                return None;
            }
            Err(e) => {
                if !logged {
                    tracing::error!(error = %e, "could not record the end of the try; retrying until the state database accepts it");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = give_up.cancelled() => {
                tracing::error!("stopping before the end of the try could be recorded; the next worker will find it by its stale heartbeat");
                return None;
            }
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

async fn record(
    runner: &Runner,
    dag: &Dag,
    run: &RunRow,
    claimed: &Claimed,
    result: Result<Outcome, TaskError>,
    elapsed: Duration,
    log: &TryLog,
    give_up: &CancellationToken,
    next: Option<Ahead>,
    alone: bool,
) -> TryReport {
    let mut report = TryReport::new(claimed, TiState::Success, elapsed);
    let task = dag.resolve(&claimed.task_id).map(|(t, _)| t);
    let took = crate::dag::duration::format_elapsed(elapsed);
    let end = match result {
        Ok(Outcome { reschedule_at: Some(at), .. }) => rescheduled(&mut report, at),
        Ok(outcome) => succeeded(&mut report, task, outcome, &took),
        Err(TaskError::Cancelled(why)) => {
            tracing::warn!("try interrupted ({why}) after {took}; it will run again when the run resumes");
            requeue(runner, run, claimed).await;
            report.state = TiState::Queued;
            report.interrupted = true;
            report.error = Some(format!("interrupted ({why})"));
            return report;
        }
        Err(e) => failed(&mut report, dag, run, task, claimed, e, &took),
    };
    let end = TryEnd { log: log.text(), ..end };
    let next = next.filter(|n| end.state == TiState::Success && !n.drain.is_cancelled() && !give_up.is_cancelled());
    let chained = match next {
        Some(next) => store_end_and_claim(runner, run, claimed, &end, next).await,
        None => None,
    };
    match chained {
        Some(Recorded::Chained(c)) => report.chained = Some(Box::new(c)),
        Some(Recorded::States(s)) => report.states = s,
        None => report.states = store_end(runner, run, claimed, &end, give_up, alone).await,
    }
    let Some(task) = task else { return report };
    let notifiers = match end.state {
        TiState::Failed => &task.on_failure,
        TiState::UpForRetry => &task.on_retry,
        TiState::Success => &task.on_success,
        _ => return report,
    };
    if !notifiers.is_empty() {
        report.notices = super::notice::notify_try(runner, dag, run, task, claimed, &report, notifiers, log).await;
    }
    report
}

/// A sensor in reschedule mode gives its slot back until `at`.
fn rescheduled(report: &mut TryReport, at: chrono::DateTime<Utc>) -> TryEnd {
    report.state = TiState::UpForReschedule;
    report.retry_in = Some((at - Utc::now()).to_std().unwrap_or_default());
    TryEnd {
        state: TiState::UpForReschedule,
        error: None,
        output: None,
        exit_code: None,
        next_try_at: Some(at),
        error_kind: None,
        log: String::new(),
        assets: Vec::new(),
    }
}

/// A success (or a skip): its output, and the assets a success updates.
fn succeeded(report: &mut TryReport, task: Option<&Task>, outcome: Outcome, took: &str) -> TryEnd {
    let state = if outcome.skipped { TiState::Skipped } else { TiState::Success };
    for w in &outcome.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("{} in {took}{}", state, outcome.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default());
    report.state = state;
    report.note = outcome.note.clone();
    report.warnings = outcome.warnings.clone();
    // A success updates the task's assets (a skip does not).
    let mut assets: Vec<String> = match (state, task) {
        (TiState::Success, Some(t)) => t.outlets.iter().chain(&outcome.assets).cloned().collect(),
        _ => Vec::new(),
    };
    assets.sort();
    assets.dedup();
    if !assets.is_empty() {
        tracing::info!("updated asset(s): {}", assets.join(", "));
    }
    TryEnd {
        assets,
        state,
        error: None,
        output: serde_json::to_value(&outcome).ok(),
        exit_code: outcome.metrics.get("exit_code").and_then(|v| v.as_i64()).map(|c| c as i32),
        next_try_at: None,
        error_kind: None,
        log: String::new(),
    }
}

/// Puts an interrupted try back in the queue without using up a retry,
/// retrying for a few seconds; if the store stays unreachable, the next
/// worker finds the try by its stale heartbeat.
async fn requeue(runner: &Runner, run: &RunRow, claimed: &Claimed) {
    let mut wait = Duration::from_millis(250);
    let sensor = claimed.poking_since.is_some();
    loop {
        match runner.store.requeue_interrupted(run.run_id, &claimed.task_id, claimed.try_number, &runner.worker.id, sensor).await {
            Ok(()) => break,
            Err(e) if wait < Duration::from_secs(5) => {
                tracing::warn!(error = %e, "could not requeue the interrupted try; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not requeue the interrupted try; the next worker will find it by its stale heartbeat");
                break;
            }
        }
    }
}

/// A failure: retried when tries are left and its kind is worth retrying,
/// failed otherwise. The message is masked before it is logged or stored.
fn failed(report: &mut TryReport, dag: &Dag, run: &RunRow, task: Option<&Task>, claimed: &Claimed, e: TaskError, took: &str) -> TryEnd {
    let kind = e.kind();
    let msg = crate::secrets::mask(&e.to_string());
    let retryable = kind.retryable();
    let will_retry = claimed.try_number < claimed.max_tries && retryable;
    let (state, next) = match task.filter(|_| will_retry) {
        Some(task) => {
            let wait = task.retry_wait(&dag.dag_id, run.logical_date, claimed.try_number);
            report.retry_in = Some(wait);
            (TiState::UpForRetry, Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default()))
        }
        None => (TiState::Failed, None),
    };
    match report.retry_in {
        Some(w) => tracing::error!(
            kind = %kind,
            "try {}/{} failed after {took}: {msg}; retrying in {}",
            claimed.try_number,
            claimed.max_tries,
            crate::dag::duration::format(w)
        ),
        None if !retryable && claimed.try_number < claimed.max_tries => tracing::error!(
            kind = %kind,
            "try {}/{} failed after {took}: {msg}; not retried: a {kind} error would happen again",
            claimed.try_number,
            claimed.max_tries
        ),
        None => tracing::error!(kind = %kind, "try {}/{} failed after {took}: {msg}", claimed.try_number, claimed.max_tries),
    }
    report.state = state;
    report.error = Some(msg.clone());
    TryEnd {
        state,
        error: Some(msg),
        output: None,
        error_kind: Some(kind),
        exit_code: match &e {
            TaskError::Exit { code, .. } => Some(*code),
            _ => None,
        },
        next_try_at: next,
        log: String::new(),
        assets: Vec::new(),
    }
}

/// The recorded outputs a try of `task` reads: its upstream tasks' (a
/// mapped upstream's instances), and for a mapped instance its own task's
/// (the expansion's list holds its element).
pub fn reads<'d>(dag: &'d Dag, task: &'d Task, map_index: Option<i32>) -> crate::state::Reads<'d> {
    let mut upstream: Vec<&str> = task.upstream.iter().map(|&u| dag.tasks[u].id.as_str()).collect();
    if map_index.is_some() {
        upstream.push(task.id.as_str());
    }
    let mapped = task.upstream.iter().map(|&u| &dag.tasks[u]).filter(|t| t.expand.is_some()).map(|t| t.id.as_str()).collect();
    crate::state::Reads { upstream, mapped }
}

/// Outputs of the task's upstream tasks, for templates (`upstream.TASK`).
/// A mapped upstream task's outputs are a list, in map index order.
pub fn upstream_of(
    task: &Task,
    dag: &Dag,
    outputs: &std::collections::HashMap<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    task.upstream
        .iter()
        .filter_map(|&u| {
            let up = &dag.tasks[u];
            if up.expand.is_some() {
                let mut items: Vec<(i32, serde_json::Value)> = outputs
                    .iter()
                    .filter_map(|(k, v)| crate::dag::split_map_id(k).filter(|(name, _)| *name == up.id).map(|(_, n)| (n, v.clone())))
                    .collect();
                items.sort_by_key(|(n, _)| *n);
                return Some((up.id.clone(), serde_json::Value::Array(items.into_iter().map(|(_, v)| v).collect())));
            }
            outputs.get(&up.id).map(|o| (up.id.clone(), o.clone()))
        })
        .collect()
}

/// Datasets of the task's upstream tasks, from their recorded outputs.
pub fn datasets_of(task: &Task, dag: &Dag, outputs: std::collections::HashMap<String, serde_json::Value>) -> BTreeMap<String, DatasetRef> {
    let mut out = BTreeMap::new();
    for &u in &task.upstream {
        let id = &dag.tasks[u].id;
        let Some(o) = outputs.get(id) else { continue };
        if let Some(ds) = o.get("dataset").and_then(|d| serde_json::from_value(d.clone()).ok()) {
            out.insert(id.clone(), ds);
        }
        if let Some(ds) = o.pointer("/rejects/dataset").and_then(|d| serde_json::from_value(d.clone()).ok()) {
            out.insert(format!("{id}_rejects"), ds);
        }
    }
    out
}

/// The context of one try. In test mode (`sluice tasks test`) nothing is
/// recorded and `run_id` renders as `test`.
pub fn task_ctx(
    res: Arc<crate::resources::Resources>,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    try_number: i32,
    inputs: BTreeMap<String, DatasetRef>,
    upstream: serde_json::Map<String, serde_json::Value>,
    log: TryLog,
    test_mode: bool,
    prev_success: Option<crate::template::PrevSuccess>,
    map: Option<(i32, serde_json::Value)>,
) -> Result<TaskCtx, TaskError> {
    let mut vars = render_vars(&res, dag, task, run, try_number, upstream.clone(), test_mode, prev_success);
    vars.map = map;
    Ok(TaskCtx {
        dag_id: dag.dag_id.clone(),
        task_id: task.id.clone(),
        run_id: run.run_id,
        try_number,
        logical_date: run.logical_date,
        interval: run.interval(),
        tz: dag.timezone,
        vars: vars.to_value(),
        res,
        inputs,
        upstream,
        deadline: task.execution_timeout.map(|t| tokio::time::Instant::now() + t),
        log,
        test_mode,
        scratch: Arc::new(crate::tasks::scratch::Scratch::new()),
        poking_since: None,
    })
}

/// The variables a try's templates see.
fn render_vars(
    res: &crate::resources::Resources,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    try_number: i32,
    upstream: serde_json::Map<String, serde_json::Value>,
    test_mode: bool,
    prev_success: Option<crate::template::PrevSuccess>,
) -> RenderVars {
    RenderVars {
        dag_id: dag.dag_id.clone(),
        task_id: task.id.clone(),
        run_id: if test_mode { "test".into() } else { run.run_id.to_string() },
        try_number,
        tz: dag.timezone,
        logical_date: run.logical_date,
        interval_start: run.data_interval_start,
        interval_end: run.data_interval_end,
        params: run.conf.as_object().cloned().unwrap_or_default(),
        connections: res.connections.clone(),
        upstream,
        prev_success,
        map: None,
    }
}

/// A task's config with its templates rendered for a run, as the try saw it
/// (or will see it), with secrets masked: what the web UI shows.
pub fn rendered_config_text(
    res: &crate::resources::Resources,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    try_number: i32,
    outputs: &std::collections::HashMap<String, serde_json::Value>,
) -> Result<String, TaskError> {
    let upstream = upstream_of(task, dag, outputs);
    let vars = render_vars(res, dag, task, run, try_number.max(1), upstream, false, None).to_value();
    let (rendered, _) = render_mapping(task, &res.templates, &vars)?;
    // Masked value by value before YAML quotes anything, then as text.
    fn masked(v: serde_yaml::Value) -> serde_yaml::Value {
        use serde_yaml::Value as Y;
        match v {
            Y::String(s) => Y::String(crate::secrets::mask(&s)),
            Y::Sequence(items) => Y::Sequence(items.into_iter().map(masked).collect()),
            Y::Mapping(m) => Y::Mapping(m.into_iter().map(|(k, v)| (k, masked(v))).collect()),
            other => other,
        }
    }
    let text = serde_yaml::to_string(&masked(serde_yaml::Value::Mapping(rendered)))
        .map_err(|e| TaskError::Panic(format!("cannot print the rendered config: {e}")))?;
    Ok(crate::secrets::mask(&text))
}

/// The pages a report task would render for `run`, as SVG, with nothing
/// recorded or written (None for a task that renders no report): the web
/// dashboard. The same context, rendering and queries as a try.
pub async fn preview(
    res: Arc<crate::resources::Resources>,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
) -> Result<Option<Vec<String>>, TaskError> {
    let ctx = task_ctx(res, dag, task, run, 1, BTreeMap::new(), serde_json::Map::new(), TryLog::new(), true, None, None)?;
    let config = render_config(dag, task, &ctx)?;
    crate::tasks::report::preview(config, &ctx).await
}

/// Renders the templated keys of a task's config.
/// Returns the mapping and whether any template changed a value.
fn render_mapping(
    task: &Task,
    templates: &crate::template::Templates,
    vars: &minijinja::Value,
) -> Result<(serde_yaml::Mapping, bool), TaskError> {
    let raw_keys = TaskConfig::raw_keys(task.kind);
    let serde_yaml::Value::Mapping(map) = &task.raw else {
        return Err(TaskError::Config("the task's config is not a mapping".into()));
    };
    let mut rendered = serde_yaml::Mapping::new();
    let mut templated = false;
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        let v = if raw_keys.contains(&key) {
            v.clone()
        } else {
            let r = templates.render_yaml(v, vars, key)?;
            templated |= r != *v;
            r
        };
        rendered.insert(k.clone(), v);
    }
    Ok((rendered, templated))
}

/// Removes what killed workers on this machine left behind: their tries'
/// scratch folders and half-written staging files (`.NAME.tmp-PID-...`).
/// Returns the number of entries removed.
pub fn clean_leftovers(staging: &crate::datasets::Staging) -> usize {
    let dead = |name: &str, marker: &str| -> bool {
        let Some(rest) = name.split(marker).nth(1) else { return false };
        let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        pid > 0 && pid as u32 != std::process::id() && !crate::state::worker::pid_alive(pid)
    };
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::tasks::scratch::PREFIX)
                && dead(&name, crate::tasks::scratch::PREFIX)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    if let crate::datasets::Staging::Local(root) = staging {
        // {root}/{dag}/{run}/.{name}.tmp-PID-...
        for dag in std::fs::read_dir(root).into_iter().flatten().flatten() {
            for run in std::fs::read_dir(dag.path()).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(run.path()).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && dead(&name, ".tmp-") && std::fs::remove_file(f.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!("removed {removed} temporary files and folders left by killed workers");
    }
    removed
}

/// Renders the task's config, checks it again, and runs it under its
/// execution_timeout. Dropping the future (timeout, interruption) cancels
/// the task; task types clean up on drop (e.g. kill their process group).
pub async fn run_with_timeout(dag: &Dag, task: &Task, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
    let fut = render_and_execute(dag, task, ctx);
    match task.execution_timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(TaskError::Timeout(crate::dag::duration::format(t))),
        },
        None => fut.await,
    }
}

/// Whether a rendered `when` condition means "run".
pub fn truthy(s: &str) -> bool {
    !matches!(s.trim().to_ascii_lowercase().as_str(), "" | "false" | "no" | "0" | "none" | "off")
}

async fn render_and_execute(dag: &Dag, task: &Task, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
    if let Some(w) = &task.when {
        let v = ctx.render(w).map_err(|e| TaskError::Config(format!("when: {e}")))?;
        if !truthy(&v) {
            tracing::info!("`when` rendered to `{}`: skipping the task", v.trim());
            return Ok(Outcome { skipped: true, ..Outcome::note(format!("skipped: `when` is `{}`", v.trim())) });
        }
    }
    let config = render_config(dag, task, ctx)?;
    #[cfg(debug_assertions)]
    debug_panic(task).await?;
    let assets = config.assets();
    let mut outcome = config.execute(ctx).await?;
    outcome.assets.extend(assets);
    Ok(outcome)
}

/// A fault-injection hook for the tests, in debug builds only:
/// `SLUICE_DEBUG_PANIC=TASK` panics in the try's future,
/// `SLUICE_DEBUG_PANIC=blocking:TASK` in blocking work the try spawns.
#[cfg(debug_assertions)]
async fn debug_panic(task: &Task) -> Result<(), TaskError> {
    let Ok(spec) = std::env::var("SLUICE_DEBUG_PANIC") else { return Ok(()) };
    if spec == task.id {
        panic!("SLUICE_DEBUG_PANIC in the future of {}", task.id);
    }
    if spec.strip_prefix("blocking:") == Some(task.id.as_str()) {
        let id = task.id.clone();
        tokio::task::spawn_blocking(move || panic!("SLUICE_DEBUG_PANIC in blocking work of {id}"))
            .await
            .map_err(|e| TaskError::from_join("blocking work", e))?;
    }
    Ok(())
}

/// Renders a task's templated keys with the try's variables and checks the
/// result with the same validators as `sluice dags validate`: a template
/// that renders to an empty connection, an `s3://` source without an S3
/// connection or an unknown mode is a configuration error naming the key.
pub fn render_config(dag: &Dag, task: &Task, ctx: &TaskCtx) -> Result<TaskConfig, TaskError> {
    let (rendered, templated) = render_mapping(task, &ctx.res.templates, &ctx.vars)?;
    let parsed = TaskConfig::parse(task.kind, serde_yaml::Value::Mapping(rendered))
        .ok_or_else(|| TaskError::Panic(format!("task type `{}` is not registered", task.kind)))?;
    let config = parsed.map_err(|e| {
        TaskError::Config(format!(
            "{}.{}: {}",
            task.path,
            e.path(),
            crate::dag::parse::friendly_serde_message(&crate::connections::strip_location(&e.inner().to_string()))
        ))
    })?;
    // Values written without templates were checked when the DAG loaded.
    if templated {
        let env = crate::loader::FsEnv { root: &ctx.res.project_root, connections: &ctx.res.connections };
        let diags = crate::dag::parse::validate_rendered(dag, task, &config, &env, &ctx.res.templates);
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}:{}: {}: {}", d.file.display(), d.pos.line, d.pos.col, d.path, d.message))
            .collect();
        for w in diags.iter().filter(|d| !d.is_error()) {
            tracing::warn!("{w}");
        }
        if !errors.is_empty() {
            return Err(TaskError::Config(format!("after rendering its templates: {}", errors.join("; "))));
        }
    }
    Ok(config)
}

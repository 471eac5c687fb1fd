//! The state store: DAGs, runs, task instances and their tries, in
//! PostgreSQL.
//!
//! Designed for several worker processes on several machines sharing one
//! database:
//!
//! * a run is unique per DAG and logical date (a constraint, not a check);
//! * a task try is *claimed* with `SELECT ... FOR UPDATE SKIP LOCKED` and a
//!   conditional `UPDATE`, so two workers never start the same try;
//! * a claim carries a worker id and a heartbeat; tries whose worker stopped
//!   heartbeating are failed (and retried by their retry rules) by whoever
//!   notices;
//! * every state change is a conditional `UPDATE` (`WHERE state = ...`), so
//!   stale views only delay decisions, never duplicate work.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::dag::Dag;
use crate::dag::schedule::DataInterval;

use types::from_row;

pub mod assets;
pub mod chain;
pub mod daemon;
mod migrate;
pub mod open;
pub mod pools;
pub mod types;
mod warm;
pub mod web;
pub mod worker;
pub use worker::Worker;

pub const DEFAULT_SCHEMA: &str = "sluice";
/// A state-store connection idle for longer than this is pinged before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// The daemon's state connections, all kept open and warm.
const DAEMON_POOL_SIZE: u32 = 10;

/// The state connections of the other commands (`sluice run`, `tasks
/// test`, the web UI): two per core of this machine, from 4 to 10. Their
/// statements are short (a try's end, a claim: under a millisecond), and
/// each connection a command opens is a backend that starts up (7 to 10 ms
/// of the server's CPU: catalogs, the claim's functions): on two cores,
/// W1's 502 tasks took 0.66 and 0.71 s with 4 connections against 0.72
/// and 0.76 s with 10 (BENCHMARKS.md, W1 and W2). The daemon keeps its
/// connections for its life, so it pays that once.
fn pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (2 * cores).clamp(4, DAEMON_POOL_SIZE)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot connect to the state database ({target}): {reason}")]
    Connect { target: String, reason: String },
    #[error("migrating the state database failed: {0}")]
    Migrate(String),
    #[error("{}", describe_sqlx(.0))]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

pub use crate::pgerror::describe as describe_sqlx;

pub use types::{Role, RunState, RunType, TiState};

/// A DAG run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub run_id: i64,
    pub dag_id: String,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: Value,
    pub state: RunState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}
from_row!(RunRow {
    run_id,
    dag_id,
    run_type,
    logical_date,
    data_interval_start,
    data_interval_end,
    conf,
    state,
    created_at,
    started_at,
    ended_at
});

impl RunRow {
    /// A run that is never recorded (run id 0, manual, running): the
    /// context of `sluice tasks test` and of the web dashboard's preview.
    pub fn unrecorded(dag_id: &str, logical_date: DateTime<Utc>, interval: DataInterval, conf: serde_json::Map<String, Value>) -> RunRow {
        RunRow {
            run_id: 0,
            dag_id: dag_id.to_string(),
            run_type: RunType::Manual,
            logical_date,
            data_interval_start: interval.start,
            data_interval_end: interval.end,
            conf: Value::Object(conf),
            state: RunState::Running,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
        }
    }

    pub fn interval(&self) -> DataInterval {
        DataInterval { start: self.data_interval_start, end: self.data_interval_end }
    }
}

/// A task instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TiRow {
    pub task_id: String,
    pub state: TiState,
    pub try_number: i32,
    pub max_tries: i32,
    pub worker_id: Option<String>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The kind of the last try's error: config, permanent, transient,
    /// failed, timeout, internal.
    pub error_kind: Option<String>,
    pub output: Option<Value>,
    /// What became of the failure notice of the last failed try.
    pub notice: Option<String>,
}
from_row!(TiRow { task_id, state, try_number, max_tries, worker_id, next_try_at, started_at, ended_at, error, error_kind, output, notice });

impl TiRow {
    /// An instance in `state` that no try has touched.
    pub fn untried(task_id: impl Into<String>, state: TiState, max_tries: i32) -> TiRow {
        TiRow {
            task_id: task_id.into(),
            state,
            try_number: 0,
            max_tries,
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
}

/// What the tries of a claim read: the outputs of these tasks, and of the
/// instances of these mapped tasks.
#[derive(Debug, Default)]
pub struct Reads<'a> {
    pub upstream: Vec<&'a str>,
    pub mapped: Vec<&'a str>,
}

/// A row of [`Store::finish_try`]'s answer.
struct FinishRow {
    ti: TiRow,
    /// Whether the answer is the whole run (nothing else was running).
    full: bool,
}
from_row!(FinishRow { full } flatten { ti });

/// One try of a task instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TryRow {
    pub task_id: String,
    pub try_number: i32,
    pub worker_id: String,
    pub state: TiState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}
from_row!(TryRow { task_id, try_number, worker_id, state, started_at, ended_at, exit_code, error });

/// What the claim needs to know of a task from the DAG file.
#[derive(Debug, Clone)]
pub struct ClaimSpec {
    /// retries + 1.
    pub max_tries: i32,
    pub pool: Option<crate::pools::PoolUse>,
    /// A mapped task's instance: the task and how many of its instances
    /// may run at once (`max_active_tis_per_dagrun`).
    pub family: Option<(String, i32)>,
}

/// A try this worker claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task_id: String,
    pub try_number: i32,
    pub max_tries: i32,
    /// A rescheduled sensor's try resuming: when it first poked.
    pub poking_since: Option<DateTime<Utc>>,
    /// The recorded outputs the claim was asked to read (upstream tasks'),
    /// shared by the tries of one claim.
    pub outputs: Option<Arc<HashMap<String, Value>>>,
}

/// How a try ended.
#[derive(Debug, Clone)]
pub struct TryEnd {
    pub state: TiState,
    pub error: Option<String>,
    /// The kind of the error, for failed tries.
    pub error_kind: Option<crate::tasks::ErrorKind>,
    pub output: Option<Value>,
    pub exit_code: Option<i32>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub log: String,
    /// Assets the try updated: one event each, recorded with the end.
    pub assets: Vec<String>,
}

/// A run that already exists for the DAG and logical date.
#[derive(Debug)]
pub struct RunExists(pub RunRow);

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
    /// Whether a DAG the store has not seen yet starts paused (Airflow's
    /// `dags_are_paused_at_creation`).
    paused_at_creation: bool,
}

impl Store {
    /// Connects, creates the schema and applies migrations (safe to call from
    /// several processes at once: migrations hold an advisory lock).
    pub async fn connect(url: &str, schema: &str) -> Result<Store, StateError> {
        Store::connect_keeping(url, schema, pool_size(), 1, false).await
    }

    /// [`Store::connect`] for the daemon: its pool keeps every connection
    /// open while idle. A boundary that starts a hundred runs at once then
    /// does not first wait for new backends to be opened, which sqlx's
    /// pool would otherwise do at each boundary after ten idle minutes
    /// (every hour for hourly DAGs).
    ///
    /// Its connections are also warmed (`state/warm.rs`): each runs the
    /// claim's functions once when opened, before a boundary needs them.
    pub async fn connect_warm(url: &str, schema: &str) -> Result<Store, StateError> {
        Store::connect_keeping(url, schema, DAEMON_POOL_SIZE, DAEMON_POOL_SIZE, true).await
    }

    /// Connects with a pool of `size` connections that keeps `idle` of them
    /// open, and warms each as it opens it when `warm`.
    async fn connect_keeping(url: &str, schema: &str, size: u32, idle: u32, warm: bool) -> Result<Store, StateError> {
        crate::secrets::register_uri(url);
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || schema.is_empty() {
            return Err(StateError::Invalid(format!("invalid state schema name `{schema}`: use letters, digits and `_`")));
        }
        let target = describe_target(url);
        let connect_err = |e: sqlx::Error| StateError::Connect { target: target.clone(), reason: describe_sqlx(&e) };
        let base = PgConnectOptions::from_str(url).map_err(connect_err)?;
        // Generic plans: the state store's statements look rows up by key,
        // and planning them for each call's values costs more than running
        // them (W2's end-of-try statement: 0.4 ms to plan, 0.25 to run).
        let opts = base.options([("search_path", schema), ("plan_cache_mode", "force_generic_plan")]);
        // Create the schema (the migrations table is created in it) and
        // migrate it first, on a connection of its own: the pool's
        // connections then all open on the migrated schema.
        {
            let mut conn = sqlx::PgConnection::connect_with(&opts).await.map_err(connect_err)?;
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sluice-schema'))").execute(&mut *tx).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))).execute(&mut *tx).await?;
            tx.commit().await?;
            migrate::MIGRATOR.run(&mut conn).await.map_err(|e| StateError::Migrate(e.to_string()))?;
            conn.close().await.ok();
        }
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .min_connections(idle)
            // Short: while the database is down, callers retry and say so
            // rather than wait silently in the pool.
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out: a round trip before
            // each statement. A connection used within the last second is
            // taken as alive (a statement on a dead one fails as any store
            // error, and its callers retry); one idle for longer (the
            // database may have restarted meanwhile) is still tried first.
            .test_before_acquire(false)
            // The daemon's connections each run the claim's functions once
            // when opened. Only a cost if it fails: the claims compile what
            // they need.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if warm && let Err(e) = warm::warm_up(conn).await {
                        tracing::warn!(error = %describe_sqlx(&e), "could not warm a state connection; its first claim will be slower");
                    }
                    Ok(())
                })
            })
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(opts)
            .await
            .map_err(connect_err)?;
        Ok(Store { pool, schema: schema.to_string(), paused_at_creation: false })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    // ---- DAGs ----

    /// New DAGs start paused (`true`) or active (`false`, the default).
    pub fn with_paused_at_creation(mut self, paused: bool) -> Store {
        self.paused_at_creation = paused;
        self
    }

    /// Records the DAGs seen in the DAG folder (file and hash); a DAG seen
    /// for the first time starts paused when the store says so.
    pub async fn sync_dags(&self, dags: &[&Dag]) -> Result<(), StateError> {
        let ids: Vec<&str> = dags.iter().map(|d| d.dag_id.as_str()).collect();
        let files: Vec<String> = dags.iter().map(|d| d.file.display().to_string()).collect();
        let hashes: Vec<&str> = dags.iter().map(|d| d.file_hash.as_str()).collect();
        sqlx::query(
            "INSERT INTO dags (dag_id, fileloc, file_hash, is_paused)
             SELECT u.*, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u
             ON CONFLICT (dag_id) DO UPDATE SET fileloc = EXCLUDED.fileloc, file_hash = EXCLUDED.file_hash, last_seen_at = now()",
        )
        .bind(&ids)
        .bind(&files)
        .bind(&hashes)
        .bind(self.paused_at_creation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn paused_dags(&self) -> Result<HashMap<String, bool>, StateError> {
        let rows = sqlx::query("SELECT dag_id, is_paused FROM dags").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| (r.get("dag_id"), r.get("is_paused"))).collect())
    }

    pub async fn set_paused(&self, dag: &Dag, paused: bool) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO dags (dag_id, fileloc, file_hash, is_paused) VALUES ($1, $2, $3, $4)
             ON CONFLICT (dag_id) DO UPDATE SET is_paused = EXCLUDED.is_paused",
        )
        .bind(&dag.dag_id)
        .bind(dag.file.display().to_string())
        .bind(&dag.file_hash)
        .bind(paused)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the flag on a DAG the store already knows; false when it does not.
    pub async fn set_paused_by_id(&self, dag_id: &str, paused: bool) -> Result<bool, StateError> {
        let r = sqlx::query("UPDATE dags SET is_paused = $2 WHERE dag_id = $1").bind(dag_id).bind(paused).execute(&self.pool).await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- runs ----

    /// Creates a run and its task instances in one transaction. Fails with
    /// [`RunExists`] when the DAG already has a run for this logical date.
    pub async fn create_run(
        &self,
        dag: &Dag,
        run_type: RunType,
        logical_date: DateTime<Utc>,
        interval: DataInterval,
        conf: &serde_json::Map<String, Value>,
        state: RunState,
    ) -> Result<Result<RunRow, RunExists>, StateError> {
        let mut tx = self.pool.begin().await?;
        let Some(run) = insert_run(&mut tx, dag, run_type, logical_date, interval, conf, state).await? else {
            tx.rollback().await.ok();
            let existing = self
                .find_run(&dag.dag_id, logical_date)
                .await?
                .ok_or_else(|| StateError::Invalid("a run conflicted and then vanished; try again".into()))?;
            return Ok(Err(RunExists(existing)));
        };
        tx.commit().await?;
        Ok(Ok(run))
    }

    /// The task states of the DAG's previous run (the latest with an
    /// earlier logical date): what `depends_on_past` reads. Empty when
    /// there is none.
    pub async fn previous_run_states(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<(Option<i64>, HashMap<String, TiState>), StateError> {
        let prev: Option<i64> =
            sqlx::query_scalar("SELECT run_id FROM dag_runs WHERE dag_id = $1 AND logical_date < $2 ORDER BY logical_date DESC LIMIT 1")
                .bind(dag_id)
                .bind(logical_date)
                .fetch_optional(&self.pool)
                .await?;
        let Some(prev) = prev else { return Ok((None, HashMap::new())) };
        let rows: Vec<(String, TiState)> =
            sqlx::query_as("SELECT task_id, state FROM task_instances WHERE run_id = $1").bind(prev).fetch_all(&self.pool).await?;
        Ok((Some(prev), rows.into_iter().collect()))
    }

    /// The version of its DAG file a run was created with: (hash, text).
    /// The text is None for runs made before versions were kept.
    pub async fn run_dag_version(&self, run_id: i64) -> Result<Option<(String, Option<String>)>, StateError> {
        let row = sqlx::query(
            "SELECT r.dag_hash, v.source FROM dag_runs r LEFT JOIN dag_versions v ON v.dag_id = r.dag_id AND v.file_hash = r.dag_hash
             WHERE r.run_id = $1 AND r.dag_hash IS NOT NULL",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get("dag_hash"), r.get("source"))))
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<RunRow>, StateError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE run_id = $1"))).bind(run_id).fetch_optional(&self.pool).await?)
    }

    pub async fn find_run(&self, dag_id: &str, logical_date: DateTime<Utc>) -> Result<Option<RunRow>, StateError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE dag_id = $1 AND logical_date = $2")))
            .bind(dag_id)
            .bind(logical_date)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_runs(&self, dag_id: Option<&str>, state: Option<RunState>, limit: i64) -> Result<Vec<RunRow>, StateError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{RUN_SELECT} WHERE ($1::text IS NULL OR dag_id = $1) AND ($2::text IS NULL OR state = $2)
             ORDER BY logical_date DESC, run_id DESC LIMIT $3"
        )))
        .bind(dag_id)
        .bind(state)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces a run's conf (its resolved params), for `sluice run --rerun`.
    pub async fn set_run_conf(&self, run_id: i64, conf: &serde_json::Map<String, Value>) -> Result<(), StateError> {
        sqlx::query("UPDATE dag_runs SET conf = $2 WHERE run_id = $1")
            .bind(run_id)
            .bind(Value::Object(conf.clone()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a run running (again).
    pub async fn start_run(&self, run_id: i64) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE dag_runs SET state = 'running', started_at = COALESCE(started_at, now()), ended_at = NULL
             WHERE run_id = $1 AND state <> 'running'",
        )
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a finished run's state, once.
    pub async fn finish_run(&self, run_id: i64, state: RunState) -> Result<bool, StateError> {
        let r = sqlx::query("UPDATE dag_runs SET state = $2, ended_at = now() WHERE run_id = $1 AND state IN ('running', 'queued')")
            .bind(run_id)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Creates (or, after a clear, resets) the `n` instances of a mapped
    /// task, `TASK[0]` to `TASK[n-1]`, pending (the runner queues them once
    /// the expansion's success, with its list, is recorded), with the task's priority and
    /// pool; instances past `n` from an earlier, longer expansion are
    /// removed.
    pub async fn expand_task(&self, run_id: i64, task_id: &str, n: usize, max_tries: i32) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM task_instances WHERE run_id = $1 AND task_id LIKE '%]' AND split_part(task_id, '[', 1) = $2
                 AND substring(task_id FROM '\\[(\\d+)\\]$')::int >= $3 AND state <> 'running'",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(n as i32)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO task_instances (run_id, task_id, state, priority, max_tries, pool, pool_slots, priority_weight)
             SELECT p.run_id, p.task_id || '[' || i || ']', 'pending', p.priority, $4, p.pool, p.pool_slots, p.priority_weight
             FROM task_instances p, generate_series(0, $3 - 1) AS i
             WHERE p.run_id = $1 AND p.task_id = $2
             ON CONFLICT (run_id, task_id) DO UPDATE SET state = 'pending', max_tries = task_instances.try_number + $4,
                 next_try_at = NULL, error = NULL, error_kind = NULL, notice = NULL, output = NULL, worker_id = NULL,
                 heartbeat_at = NULL, started_at = NULL, ended_at = NULL, worker_failures = 0
             WHERE task_instances.state <> 'running'",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(n as i32)
        .bind(max_tries)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records what became of a run's notices.
    pub async fn record_run_notice(&self, run_id: i64, text: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE dag_runs SET notice = $2 WHERE run_id = $1").bind(run_id).bind(text).execute(&self.pool).await?;
        Ok(())
    }

    /// What became of a run's notices, if it sent any.
    pub async fn run_notice(&self, run_id: i64) -> Result<Option<String>, StateError> {
        Ok(sqlx::query_scalar("SELECT notice FROM dag_runs WHERE run_id = $1").bind(run_id).fetch_optional(&self.pool).await?.flatten())
    }

    /// Ends a run that exceeded its `dagrun_timeout`: every unfinished
    /// instance is skipped with `why` as its error (a running try's end is
    /// then not applied: its claim is gone) and the run failed. Returns
    /// false when the run had finished meanwhile.
    pub async fn time_out_run(&self, run_id: i64, why: &str) -> Result<bool, StateError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE dag_runs SET state = 'failed', ended_at = now() WHERE run_id = $1 AND state IN ('running', 'queued')")
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE task_instances SET state = 'skipped', error = $2, ended_at = now(), next_try_at = NULL, heartbeat_at = NULL
             WHERE run_id = $1 AND state NOT IN ('success', 'failed', 'skipped', 'upstream_failed', 'removed')",
        )
        .bind(run_id)
        .bind(why)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE task_tries SET state = 'failed', ended_at = now(), error = $2, error_kind = 'timeout'
             WHERE run_id = $1 AND state IN ('running', 'up_for_reschedule')",
        )
        .bind(run_id)
        .bind(why)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- task instances ----

    pub async fn task_instances(&self, run_id: i64) -> Result<Vec<TiRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT task_id, state, try_number, max_tries, worker_id, next_try_at, started_at, ended_at, error, error_kind, output, notice
             FROM task_instances WHERE run_id = $1 ORDER BY priority, task_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records what became of a try's failure notice: with the instance,
    /// and as the last line of the try's log.
    pub async fn record_notice(&self, run_id: i64, task_id: &str, try_number: i32, text: &str) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE task_instances SET notice = $3 WHERE run_id = $1 AND task_id = $2")
            .bind(run_id)
            .bind(task_id)
            .bind(text)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE task_tries SET log = log || CASE WHEN log = '' OR right(log, 1) = E'\\n' THEN '' ELSE E'\\n' END || $4 || E'\\n'
             WHERE run_id = $1 AND task_id = $2 AND try_number = $3",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .bind(text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The states of a run's instances, without their outputs and errors:
    /// what the runner polls.
    pub async fn task_states(&self, run_id: i64) -> Result<Vec<TiRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT task_id, state, try_number, max_tries, worker_id, next_try_at, started_at, ended_at,
                    NULL::text AS error, NULL::text AS error_kind, NULL::jsonb AS output, NULL::text AS notice
             FROM task_instances WHERE run_id = $1 ORDER BY priority, task_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies trigger-rule decisions to pending instances.
    pub async fn decide(&self, run_id: i64, decisions: &[(String, TiState)]) -> Result<(), StateError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        apply_decisions(&mut conn, run_id, decisions).await
    }

    /// Applies `decisions` (as [`Store::decide`]), then claims up to `limit`
    /// ready tries of a run for `worker`, in one transaction: in a chain, the
    /// task just queued is claimed with one commit fewer. A try is ready
    /// when its instance is queued, or up for retry (or reschedule) and its
    /// wait is over; higher `priority_weight` first, then topological order.
    /// `tasks` gives each task's current retries + 1 from the DAG file and
    /// its pool.
    pub async fn claim(
        &self,
        run_id: i64,
        worker: &str,
        limit: i64,
        max_active: i64,
        tasks: &HashMap<String, ClaimSpec>,
        decisions: &[(String, TiState)],
        reads: &Reads<'_>,
    ) -> Result<Vec<Claimed>, StateError> {
        if limit <= 0 {
            self.decide(run_id, decisions).await?;
            return Ok(Vec::new());
        }
        let ClaimArrays { ids, maxes, pool_names, pool_slots } = ClaimArrays::of(tasks);
        let (decided, states) = split_decisions(decisions);
        // claim_tries (migration 0008) locks the run's row, applies the
        // decisions, claims and opens the try rows in one round trip: each
        // round trip is per-task overhead. With pools or per-task limits,
        // the choice is made first, in a transaction under the same lock.
        let claim = sqlx::query(
            "SELECT task_id, try_number, max_tries, poking_since, outputs
             FROM claim_tries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(run_id)
        .bind(limit)
        .bind(worker)
        .bind(max_active)
        .bind(&ids)
        .bind(&maxes)
        .bind(&pool_names)
        .bind(&pool_slots);
        let rows = if tasks.values().any(|t| t.pool.is_some() || t.family.is_some()) {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT 1 FROM dag_runs WHERE run_id = $1 FOR UPDATE").bind(run_id).execute(&mut *tx).await?;
            apply_decisions(&mut tx, run_id, decisions).await?;
            let chosen = pools::choose(&mut tx, run_id, limit, max_active, tasks, &ids).await?;
            let rows = match chosen.is_empty() {
                true => Vec::new(),
                false => {
                    claim
                        .bind(&chosen)
                        .bind(Vec::<&str>::new())
                        .bind(Vec::<&str>::new())
                        .bind(&reads.upstream)
                        .bind(&reads.mapped)
                        .fetch_all(&mut *tx)
                        .await?
                }
            };
            tx.commit().await?;
            rows
        } else {
            claim
                .bind(None::<Vec<String>>)
                .bind(&decided)
                .bind(&states)
                .bind(&reads.upstream)
                .bind(&reads.mapped)
                .fetch_all(&self.pool)
                .await?
        };
        Ok(claimed_of(rows))
    }

    /// Records the end of a try. Returns None when the claim was lost
    /// meanwhile (the try was declared a zombie, or cleared): the instance
    /// is then left as the other party set it, and only the try row is
    /// written. Else, when `states_wanted` and no other try of the run was
    /// running, the run's task states with this end applied (what the
    /// driver's next step starts from: in a chain, one read fewer per task).
    /// A caller that knows other tries of the run are running says so with
    /// `states_wanted` false: the statement then does not look for them.
    pub async fn finish_try(
        &self,
        run_id: i64,
        task_id: &str,
        try_number: i32,
        worker: &str,
        end: &TryEnd,
        states_wanted: bool,
    ) -> Result<Option<Option<Vec<TiRow>>>, StateError> {
        // One statement, so atomic without a transaction of its own. Its
        // final SELECT reads the snapshot from before the updates, so this
        // instance's new values are put in by hand; it returns only this
        // instance while others are running (a fan-out would read the whole
        // run at each end). Looking for the others reads the run's
        // instances: a fan-out's end that knows they run ($14 false) skips
        // it ($14 is tested first, and the lookups run only when needed).
        let query = sqlx::query(
            "WITH ti AS (
                 UPDATE task_instances SET state = $5, ended_at = now(), error = $6, output = $7, next_try_at = $8, heartbeat_at = NULL,
                     error_kind = $12
                 WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4 AND state = 'running'
                 RETURNING 1
             ),
             tr AS (
                 UPDATE task_tries SET state = $9, ended_at = now(), error = $6, output = $7, exit_code = $10, log = $11, error_kind = $12
                 WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4 AND state = 'running'
             ),
             -- The try's asset updates, only if its end is the one applied.
             ev AS (
                 INSERT INTO asset_events (asset, dag_id, run_id, task_id)
                 SELECT a.asset, r.dag_id, $1, $2 FROM UNNEST($13::text[]) AS a(asset), dag_runs r
                 WHERE r.run_id = $1 AND EXISTS (SELECT 1 FROM ti)
             )
             -- This instance, as the update leaves it.
             SELECT i.task_id, $5 AS state, i.try_number, i.max_tries, i.worker_id, $8 AS next_try_at, i.started_at, now() AS ended_at,
                    NULL::text AS error, NULL::text AS error_kind, NULL::jsonb AS output, NULL::text AS notice, i.priority,
                    $14 AND NOT EXISTS (SELECT 1 FROM task_instances o WHERE o.run_id = $1 AND o.state = 'running' AND o.task_id <> $2) AS full
             FROM task_instances i WHERE i.run_id = $1 AND i.task_id = $2 AND EXISTS (SELECT 1 FROM ti)
             UNION ALL
             -- The others, only when none is running (a one-time filter).
             SELECT i.task_id, i.state, i.try_number, i.max_tries, i.worker_id, i.next_try_at, i.started_at, i.ended_at,
                    NULL, NULL, NULL, NULL, i.priority, true
             FROM task_instances i WHERE $14 AND i.run_id = $1 AND i.task_id <> $2 AND EXISTS (SELECT 1 FROM ti)
                 AND NOT EXISTS (SELECT 1 FROM task_instances o WHERE o.run_id = $1 AND o.state = 'running' AND o.task_id <> $2)
             ORDER BY priority, task_id",
        );
        let rows = bind_end(query, run_id, task_id, try_number, worker, end).bind(states_wanted).fetch_all(&self.pool).await?;
        let rows: Vec<FinishRow> = rows.iter().map(sqlx::FromRow::from_row).collect::<Result<_, _>>()?;
        Ok(match rows.first() {
            None => None,
            Some(r) if r.full => Some(Some(rows.into_iter().map(|r| r.ti).collect())),
            Some(_) => Some(None),
        })
    }

    /// Puts tries interrupted by this worker (Ctrl-C, shutdown) back in the
    /// queue without using up a retry. A rescheduled sensor's resumed try
    /// goes back to waiting for its next poke, now, keeping its try row.
    pub async fn requeue_interrupted(
        &self,
        run_id: i64,
        task_id: &str,
        try_number: i32,
        worker: &str,
        resumed: bool,
    ) -> Result<(), StateError> {
        if resumed {
            sqlx::query(
                "WITH ti AS (
                     UPDATE task_instances SET state = 'up_for_reschedule', next_try_at = now(), heartbeat_at = NULL
                     WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4 AND state = 'running'
                     RETURNING 1
                 )
                 UPDATE task_tries SET state = 'up_for_reschedule'
                 WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4 AND EXISTS (SELECT 1 FROM ti)",
            )
            .bind(run_id)
            .bind(task_id)
            .bind(try_number)
            .bind(worker)
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE task_instances SET state = 'queued', try_number = try_number - 1, worker_id = NULL, heartbeat_at = NULL, started_at = NULL
             WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4 AND state = 'running'",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM task_tries WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND worker_id = $4")
            .bind(run_id)
            .bind(task_id)
            .bind(try_number)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a running try's log so far.
    pub async fn update_try_log(&self, run_id: i64, task_id: &str, try_number: i32, log: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE task_tries SET log = $4 WHERE run_id = $1 AND task_id = $2 AND try_number = $3")
            .bind(run_id)
            .bind(task_id)
            .bind(try_number)
            .bind(log)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn tries(&self, run_id: i64) -> Result<Vec<TryRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT task_id, try_number, worker_id, state, started_at, ended_at, exit_code, error
             FROM task_tries WHERE run_id = $1 ORDER BY started_at, task_id, try_number",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A try's log; the latest try when `try_number` is None.
    pub async fn try_log(&self, run_id: i64, task_id: &str, try_number: Option<i32>) -> Result<Option<(i32, String, String)>, StateError> {
        let row = sqlx::query(
            "SELECT try_number, state, log FROM task_tries
             WHERE run_id = $1 AND task_id = $2 AND ($3::int IS NULL OR try_number = $3)
             ORDER BY try_number DESC LIMIT 1",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get("try_number"), r.get("state"), r.get("log"))))
    }

    /// Outputs (dataset summaries...) of finished tasks of a run.
    /// The recorded outputs of some of a run's tasks.
    /// With `mapped`, also the outputs of those tasks' instances (`TASK[N]`).
    pub async fn outputs_of(&self, run_id: i64, tasks: &[&str], mapped: &[&str]) -> Result<HashMap<String, Value>, StateError> {
        if tasks.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT task_id, output FROM task_instances WHERE run_id = $1 AND output IS NOT NULL
                 AND (task_id = ANY($2) OR (cardinality($3::text[]) > 0 AND task_id LIKE '%]' AND split_part(task_id, '[', 1) = ANY($3)))",
        )
        .bind(run_id)
        .bind(tasks)
        .bind(mapped)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get("task_id"), r.get("output"))).collect())
    }

    pub async fn outputs(&self, run_id: i64) -> Result<HashMap<String, Value>, StateError> {
        let rows = sqlx::query("SELECT task_id, output FROM task_instances WHERE run_id = $1 AND output IS NOT NULL")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get("task_id"), r.get("output"))).collect())
    }

    /// Resets task instances so that they run again: state pending, and one
    /// more full set of retries. Running instances are left alone and
    /// returned as the second list, unless their worker is known to be dead
    /// (killed on this host, or stopped): their try is recorded as lost
    /// (`worker_lost`) and the instance cleared like the others.
    pub async fn clear(&self, run_id: i64, tasks: &[(String, i32)]) -> Result<(Vec<String>, Vec<String>), StateError> {
        let ids: Vec<&str> = tasks.iter().map(|(t, _)| t.as_str()).collect();
        let retries: Vec<i32> = tasks.iter().map(|(_, r)| *r).collect();
        let dead = self.dead_workers().await?;
        let mut tx = self.pool.begin().await?;
        if !dead.is_empty() {
            sqlx::query(
                "UPDATE task_tries SET state = 'failed', ended_at = now(), error_kind = 'worker_lost',
                     error = 'the worker running this try (' || worker_id || ') is gone; the task was cleared'
                 WHERE run_id = $1 AND task_id = ANY($2) AND state = 'running' AND worker_id = ANY($3)",
            )
            .bind(run_id)
            .bind(&ids)
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
        }
        let cleared: Vec<String> = sqlx::query_scalar(
            "UPDATE task_instances t SET state = 'pending', max_tries = t.try_number + u.retries + 1, next_try_at = NULL,
                 error = NULL, error_kind = NULL, notice = NULL, worker_id = NULL, heartbeat_at = NULL, started_at = NULL, ended_at = NULL, output = NULL,
                 worker_failures = 0
             FROM UNNEST($2::text[], $3::int[]) AS u(task_id, retries)
             WHERE t.run_id = $1 AND t.task_id = u.task_id AND (t.state <> 'running' OR t.worker_id = ANY($4))
             RETURNING t.task_id",
        )
        .bind(run_id)
        .bind(&ids)
        .bind(&retries)
        .bind(&dead)
        .fetch_all(&mut *tx)
        .await?;
        if !cleared.is_empty() {
            sqlx::query("UPDATE dag_runs SET state = 'queued', ended_at = NULL WHERE run_id = $1 AND state IN ('success', 'failed')")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let running: Vec<String> = ids.iter().filter(|i| !cleared.iter().any(|c| c == *i)).map(|s| s.to_string()).collect();
        Ok((cleared, running))
    }

    /// Sets a task instance's state by hand. Returns the state before, or
    /// None when the run has no such instance; a running instance is left
    /// alone (and `Running` returned). A finished run is queued again so
    /// that its driver works its state out anew.
    pub async fn mark(&self, run_id: i64, task_id: &str, state: TiState) -> Result<Option<TiState>, StateError> {
        let mut tx = self.pool.begin().await?;
        let before: Option<TiState> = sqlx::query_scalar("SELECT state FROM task_instances WHERE run_id = $1 AND task_id = $2 FOR UPDATE")
            .bind(run_id)
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
        if before.is_none() || before == Some(TiState::Running) {
            return Ok(before);
        }
        sqlx::query(
            "UPDATE task_instances SET state = $3, next_try_at = NULL, worker_id = NULL, heartbeat_at = NULL,
                 ended_at = coalesce(ended_at, now()), error = CASE WHEN $3 = 'success' THEN NULL ELSE coalesce(error, 'marked failed by hand') END,
                 error_kind = CASE WHEN $3 = 'success' THEN NULL ELSE error_kind END
             WHERE run_id = $1 AND task_id = $2",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE dag_runs SET state = 'queued', ended_at = NULL WHERE run_id = $1 AND state IN ('success', 'failed')")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(before)
    }

    // ---- workers and zombies ----

    /// Finds tries whose worker stopped heartbeating for longer than
    /// `timeout` (a NULL heartbeat counts from the claim), or whose worker
    /// is known dead. The death of a worker is not the task's fault: such a
    /// try is requeued without using a retry, as long as the instance has
    /// lost fewer than `worker_failures` tries this way; past that budget it
    /// becomes up_for_retry or failed by its retry rules, so that a task
    /// that keeps killing its worker still stops.
    /// Returns (run_id, task_id, try_number, new state).
    pub async fn reap_zombies(
        &self,
        timeout: Duration,
        dead_workers: &[String],
        worker_failures: i32,
        me: &str,
        live: &[(i64, String, i32)],
    ) -> Result<Vec<(i64, String, i32, String)>, StateError> {
        let runs: Vec<i64> = live.iter().map(|t| t.0).collect();
        let tasks: Vec<&str> = live.iter().map(|t| t.1.as_str()).collect();
        let numbers: Vec<i32> = live.iter().map(|t| t.2).collect();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE task_instances SET
                 state = CASE WHEN worker_failures < $3 THEN 'queued'
                              WHEN try_number < max_tries THEN 'up_for_retry' ELSE 'failed' END,
                 max_tries = CASE WHEN worker_failures < $3 THEN max_tries + 1 ELSE max_tries END,
                 next_try_at = CASE WHEN worker_failures >= $3 AND try_number < max_tries THEN now() END,
                 ended_at = CASE WHEN worker_failures < $3 THEN NULL ELSE now() END,
                 error = 'the worker running try ' || try_number || ' (' || worker_id || ') stopped heartbeating' ||
                     CASE WHEN worker_failures < $3
                          THEN '; requeued without using a retry (worker failure ' || (worker_failures + 1) || ' of ' || $3 || ')'
                          ELSE '; the budget of ' || $3 || ' worker failures is used up, so it counts as a failed try' END,
                 error_kind = 'worker_lost',
                 worker_failures = worker_failures + 1,
                 heartbeat_at = NULL
             WHERE state = 'running'
               AND (COALESCE(heartbeat_at, claimed_at) < now() - make_interval(secs => $1) OR worker_id = ANY($2))
               AND NOT (worker_id = $4 AND (run_id, task_id, try_number) IN (SELECT * FROM UNNEST($5::bigint[], $6::text[], $7::int[])))
             RETURNING run_id, task_id, try_number, state, error",
        )
        .bind(timeout.as_secs_f64())
        .bind(dead_workers)
        .bind(worker_failures)
        .bind(me)
        .bind(&runs)
        .bind(&tasks)
        .bind(&numbers)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (run_id, task_id, try_number, state, error): (i64, String, i32, String, String) =
                (r.get("run_id"), r.get("task_id"), r.get("try_number"), r.get("state"), r.get("error"));
            sqlx::query(
                "UPDATE task_tries SET state = 'failed', ended_at = now(), error = $4, error_kind = 'worker_lost'
                 WHERE run_id = $1 AND task_id = $2 AND try_number = $3 AND state = 'running'",
            )
            .bind(run_id)
            .bind(&task_id)
            .bind(try_number)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            out.push((run_id, task_id, try_number, state));
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The columns of a [`RunRow`].
macro_rules! run_columns {
    () => {
        "run_id, dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf, state, created_at, started_at, ended_at"
    };
}
const RUN_COLUMNS: &str = run_columns!();
const RUN_SELECT: &str = concat!("SELECT ", run_columns!(), " FROM dag_runs");

/// Inserts a run with its task instances and its DAG file's version, in
/// the caller's transaction; None when the DAG has a run at that logical
/// date already.
async fn insert_run(
    tx: &mut sqlx::PgConnection,
    dag: &Dag,
    run_type: RunType,
    logical_date: DateTime<Utc>,
    interval: DataInterval,
    conf: &serde_json::Map<String, Value>,
    state: RunState,
) -> Result<Option<RunRow>, StateError> {
    let row: Option<RunRow> = sqlx::query_as(concat!(
        "INSERT INTO dag_runs (dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf, state, dag_hash, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $7 = 'running' THEN now() END)
         ON CONFLICT (dag_id, logical_date) DO NOTHING
         RETURNING ",
        run_columns!()
    ))
    .bind(&dag.dag_id)
    .bind(run_type)
    .bind(logical_date)
    .bind(interval.start)
    .bind(interval.end)
    .bind(Value::Object(conf.clone()))
    .bind(state)
    .bind(&dag.file_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run) = row else { return Ok(None) };
    insert_task_instances(&mut *tx, &[(run.run_id, dag)]).await?;
    insert_dag_versions(&mut *tx, &[dag]).await?;
    Ok(Some(run))
}

/// A DAG's task instances as the state store's columns: in topological
/// order, which is their claim priority.
#[derive(Default)]
struct InstanceArrays<'a> {
    ids: Vec<&'a str>,
    prio: Vec<i32>,
    max: Vec<i32>,
    pool: Vec<Option<&'a str>>,
    pool_slots: Vec<i32>,
    weight: Vec<i32>,
}

impl<'a> InstanceArrays<'a> {
    fn push(&mut self, dag: &'a Dag) {
        for (pos, &i) in dag.topo.iter().enumerate() {
            let t = &dag.tasks[i];
            self.ids.push(t.id.as_str());
            self.prio.push(pos as i32);
            self.max.push(t.retries as i32 + 1);
            self.pool.push(t.pool.as_ref().map(|p| p.pool.as_str()));
            self.pool_slots.push(t.pool.as_ref().map_or(1, |p| p.slots));
            self.weight.push(t.priority_weight);
        }
    }
}

/// Inserts the missing task instances of runs, pending, each from its DAG.
async fn insert_task_instances(tx: &mut sqlx::PgConnection, runs: &[(i64, &Dag)]) -> Result<(), StateError> {
    let n: usize = runs.iter().map(|(_, d)| d.tasks.len()).sum();
    if n == 0 {
        return Ok(());
    }
    let mut run_ids = Vec::with_capacity(n);
    let mut all = InstanceArrays::default();
    for (run_id, dag) in runs {
        run_ids.extend(std::iter::repeat_n(*run_id, dag.tasks.len()));
        all.push(dag);
    }
    let InstanceArrays { ids, prio, max, pool, pool_slots, weight } = all;
    sqlx::query(
        "INSERT INTO task_instances (run_id, task_id, state, priority, max_tries, pool, pool_slots, priority_weight)
         SELECT u.run_id, u.task_id, 'pending', u.priority, u.max_tries, u.pool, u.pool_slots, u.priority_weight
         FROM UNNEST($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::int[], $7::int[])
             AS u(run_id, task_id, priority, max_tries, pool, pool_slots, priority_weight)
         ON CONFLICT (run_id, task_id) DO NOTHING",
    )
    .bind(&run_ids)
    .bind(&ids)
    .bind(&prio)
    .bind(&max)
    .bind(&pool)
    .bind(&pool_slots)
    .bind(&weight)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Keeps the text of the DAG files runs are created with (the web UI shows
/// a run's version).
async fn insert_dag_versions(tx: &mut sqlx::PgConnection, dags: &[&Dag]) -> Result<(), StateError> {
    sqlx::query(
        "INSERT INTO dag_versions (dag_id, file_hash, source)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(dags.iter().map(|d| d.dag_id.as_str()).collect::<Vec<_>>())
    .bind(dags.iter().map(|d| d.file_hash.as_str()).collect::<Vec<_>>())
    .bind(dags.iter().map(|d| &*d.source).collect::<Vec<&str>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `user@host:port/db`, for messages: never the password.
pub fn describe_target(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}{}:{}{}",
            if u.username().is_empty() { String::new() } else { format!("{}@", u.username()) },
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "an invalid URL".into(),
    }
}

/// Binds the end of a try as `$1`..`$13`: run, task, try number, worker,
/// the instance's state, error, output, next try, the try's state, exit
/// code, log, error kind, assets (the statements of
/// [`Store::finish_try`] and [`Store::finish_and_claim`]).
fn bind_end<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    run_id: i64,
    task_id: &'q str,
    try_number: i32,
    worker: &'q str,
    end: &'q TryEnd,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    // A failed try whose instance will be retried is itself failed.
    let try_state = if end.state == TiState::UpForRetry { TiState::Failed } else { end.state };
    query
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .bind(worker)
        .bind(end.state.as_str())
        .bind(&end.error)
        .bind(&end.output)
        .bind(end.next_try_at)
        .bind(try_state.as_str())
        .bind(end.exit_code)
        .bind(&end.log)
        .bind(end.error_kind.map(|k| k.as_str()))
        .bind(&end.assets)
}

/// A claim's candidate tasks as the arrays `claim_tries` takes.
struct ClaimArrays<'a> {
    ids: Vec<&'a str>,
    maxes: Vec<i32>,
    pool_names: Vec<Option<&'a str>>,
    pool_slots: Vec<i32>,
}

impl<'a> ClaimArrays<'a> {
    fn of(tasks: &'a HashMap<String, ClaimSpec>) -> ClaimArrays<'a> {
        let mut a = ClaimArrays { ids: Vec::new(), maxes: Vec::new(), pool_names: Vec::new(), pool_slots: Vec::new() };
        for (id, t) in tasks {
            a.ids.push(id);
            a.maxes.push(t.max_tries);
            a.pool_names.push(t.pool.as_ref().map(|p| p.pool.as_str()));
            a.pool_slots.push(t.pool.as_ref().map_or(1, |p| p.slots));
        }
        a
    }
}

/// Decisions as the two arrays the SQL functions take.
fn split_decisions(decisions: &[(String, TiState)]) -> (Vec<&str>, Vec<&str>) {
    decisions.iter().map(|(t, s)| (t.as_str(), s.as_str())).unzip()
}

/// A foreseen run's states as `run_as_foreseen` (migration 0013) compares
/// them: sorted by task id, byte by byte (`COLLATE "C"`).
fn sorted_expectation(expect: &[(String, TiState)]) -> (Vec<&str>, Vec<&str>) {
    let mut pairs: Vec<(&str, &str)> = expect.iter().map(|(t, s)| (t.as_str(), s.as_str())).collect();
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    pairs.into_iter().unzip()
}

/// The tries of a claim's rows; they carry the same outputs, parsed once.
fn claimed_of(rows: Vec<sqlx::postgres::PgRow>) -> Vec<Claimed> {
    let outputs: Option<Arc<HashMap<String, Value>>> = match rows.first().and_then(|r| r.get::<Option<Value>, _>("outputs")) {
        Some(Value::Object(m)) => Some(Arc::new(m.into_iter().collect())),
        _ => None,
    };
    rows.into_iter()
        .map(|r| Claimed {
            task_id: r.get("task_id"),
            try_number: r.get("try_number"),
            max_tries: r.get("max_tries"),
            poking_since: r.get("poking_since"),
            outputs: outputs.clone(),
        })
        .collect()
}

/// Writes trigger-rule decisions; an instance that is no longer pending
/// (another worker decided it first) is left alone.
async fn apply_decisions(conn: &mut PgConnection, run_id: i64, decisions: &[(String, TiState)]) -> Result<(), StateError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let (ids, states) = split_decisions(decisions);
    // The SQL function (migrations 0008, 0009) that claim_tries applies too.
    sqlx::query("SELECT apply_decisions($1, $2, $3)").bind(run_id).bind(&ids).bind(&states).execute(&mut *conn).await?;
    Ok(())
}

//! State-store queries of the scheduler daemon and `sluice status`.

use super::types::from_row;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use serde_json::Value;

use super::{RUN_COLUMNS, RUN_SELECT, RunRow, StateError, Store, insert_dag_versions, insert_task_instances};
use crate::dag::Dag;
use crate::dag::schedule::DataInterval;

/// A worker, for `sluice status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerRow {
    pub worker_id: String,
    pub hostname: String,
    pub pid: i32,
    pub kind: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}
from_row!(WorkerRow { worker_id, hostname, pid, kind, version, started_at, heartbeat_at, stopped_at });

/// A running try, for `sluice status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningTry {
    pub run_id: i64,
    pub dag_id: String,
    pub task_id: String,
    pub try_number: i32,
    pub worker_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}
from_row!(RunningTry { run_id, dag_id, task_id, try_number, worker_id, started_at, heartbeat_at });

/// A queued run the daemon would start, with what its DAG's limit needs.
#[derive(Clone)]
pub struct QueuedRun<'a> {
    pub dag_id: &'a str,
    pub max_active_runs: i64,
    /// Whether the DAG's runs wait for their predecessors
    /// ([`crate::dag::Dag::depends_on_past`]).
    pub depends_on_past: bool,
    pub run_id: i64,
}

impl Store {
    /// The logical date of the latest scheduled run of each of `dags` that
    /// has one. Each is read from the end of its DAG's runs by key: a
    /// grouping of every scheduled run, as this was, reads the whole run
    /// history at every pass (180 ms a pass after ten days of 100 DAGs
    /// every minute, against 1 ms).
    pub async fn last_scheduled(&self, dags: &[&str]) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        let rows = sqlx::query(
            "SELECT d.dag_id, r.last FROM UNNEST($1::text[]) AS d(dag_id)
             CROSS JOIN LATERAL (SELECT max(logical_date) AS last FROM dag_runs
                                 WHERE dag_id = d.dag_id AND run_type = 'scheduled') AS r
             WHERE r.last IS NOT NULL",
        )
        .bind(dags)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.get("dag_id"), r.get("last"))).collect())
    }

    /// Queued and running runs of every DAG.
    pub async fn active_runs(&self) -> Result<Vec<RunRow>, StateError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE state IN ('queued', 'running') ORDER BY logical_date, run_id")))
            .fetch_all(self.pool())
            .await?)
    }

    /// One daemon pass's writes, in one transaction: creates the due
    /// scheduled runs, queued, with their task instances (a pass after a
    /// minute boundary may have a hundred), then starts them and the
    /// `queued` runs, each while its DAG has fewer than its
    /// `max_active_runs` running, oldest first. An interval that has a run
    /// already (another daemon's, a backfill's) is skipped: one run per
    /// interval. Returns the runs created and the runs started.
    pub async fn create_and_start_runs(
        &self,
        due: &[(&Dag, DataInterval, Value)],
        queued: &[QueuedRun<'_>],
    ) -> Result<(Vec<RunRow>, Vec<RunRow>), StateError> {
        if due.is_empty() && queued.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut tx = self.pool().begin().await?;
        let created = create_scheduled_runs(&mut tx, due).await?;
        let dag_of: HashMap<&str, &Dag> = due.iter().map(|(d, _, _)| (d.dag_id.as_str(), *d)).collect();
        let mut to_start: Vec<QueuedRun> = queued.to_vec();
        to_start.extend(created.iter().filter_map(|r| {
            let d = dag_of.get(r.dag_id.as_str())?;
            Some(QueuedRun {
                dag_id: &r.dag_id,
                max_active_runs: d.max_active_runs as i64,
                depends_on_past: d.depends_on_past(),
                run_id: r.run_id,
            })
        }));
        let started = start_queued_runs(&mut tx, &to_start).await?;
        tx.commit().await?;
        Ok((created, started))
    }

    /// Run and task counts for `/metrics`.
    pub async fn metrics_snapshot(&self) -> Result<Vec<(String, String, i64)>, StateError> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT state, count(*) AS n FROM dag_runs GROUP BY state ORDER BY state").fetch_all(self.pool()).await? {
            out.push(("sluice_dag_runs".to_string(), format!("{{state=\"{}\"}}", r.get::<String, _>("state")), r.get("n")));
        }
        for r in sqlx::query(
            "SELECT t.state, count(*) AS n FROM task_instances t JOIN dag_runs r ON r.run_id = t.run_id
             WHERE r.state IN ('queued', 'running') GROUP BY t.state ORDER BY t.state",
        )
        .fetch_all(self.pool())
        .await?
        {
            out.push(("sluice_task_instances".to_string(), format!("{{state=\"{}\"}}", r.get::<String, _>("state")), r.get("n")));
        }
        let ready: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_instances WHERE state = 'queued' OR (state IN ('up_for_retry', 'up_for_reschedule') AND next_try_at <= now())",
        )
        .fetch_one(self.pool())
        .await?;
        out.push(("sluice_queue_depth".to_string(), String::new(), ready));
        Ok(out)
    }

    /// Workers for `sluice status`: running ones, and stopped or silent ones
    /// for ten minutes after they stopped or fell silent. Rows of workers
    /// gone for a week are forgotten.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>, StateError> {
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - interval '7 days' AND worker_id NOT IN (SELECT worker_id FROM task_instances WHERE state = 'running' AND worker_id IS NOT NULL)")
            .execute(self.pool())
            .await?;
        Ok(sqlx::query_as(
            "SELECT worker_id, hostname, pid, kind, version, started_at, heartbeat_at, stopped_at FROM workers
             WHERE coalesce(stopped_at, heartbeat_at) > now() - interval '10 minutes'
                OR worker_id IN (SELECT worker_id FROM task_instances WHERE state = 'running' AND worker_id IS NOT NULL)
             ORDER BY kind, started_at",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn running_tries(&self) -> Result<Vec<RunningTry>, StateError> {
        Ok(sqlx::query_as(
            "SELECT t.run_id, r.dag_id, t.task_id, t.try_number, t.worker_id, t.started_at, t.heartbeat_at
             FROM task_instances t JOIN dag_runs r ON r.run_id = t.run_id
             WHERE t.state = 'running' ORDER BY t.started_at",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

impl crate::resources::PipelineView for Store {
    fn dag_run_stats(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        exclude: Option<i64>,
    ) -> futures::future::BoxFuture<'_, Result<Vec<crate::resources::DagRunStats>, String>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT d.dag_id,
                        count(r.run_id) AS runs,
                        count(r.run_id) FILTER (WHERE r.state = 'success') AS succeeded,
                        count(r.run_id) FILTER (WHERE r.state = 'failed') AS failed,
                        count(r.run_id) FILTER (WHERE r.state IN ('queued', 'running')) AS unfinished
                 FROM dags d
                 LEFT JOIN dag_runs r ON r.dag_id = d.dag_id AND r.logical_date >= $1 AND r.logical_date < $2
                      AND r.run_id IS DISTINCT FROM $3
                 GROUP BY d.dag_id
                 ORDER BY d.dag_id",
            )
            .bind(from)
            .bind(to)
            .bind(exclude)
            .fetch_all(self.pool())
            .await
            .map_err(|e| super::describe_sqlx(&e))?;
            Ok(rows
                .into_iter()
                .map(|r| crate::resources::DagRunStats {
                    dag_id: r.get("dag_id"),
                    runs: r.get("runs"),
                    succeeded: r.get("succeeded"),
                    failed: r.get("failed"),
                    unfinished: r.get("unfinished"),
                })
                .collect())
        })
    }
}

/// Creates the due scheduled runs, queued, with their task instances and
/// DAG versions.
async fn create_scheduled_runs(tx: &mut sqlx::PgConnection, due: &[(&Dag, DataInterval, Value)]) -> Result<Vec<RunRow>, StateError> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let created: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO dag_runs (dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf, state, dag_hash)
         SELECT u.dag_id, 'scheduled', u.start_at, u.start_at, u.end_at, u.conf, 'queued', u.dag_hash
         FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::jsonb[], $5::text[]) AS u(dag_id, start_at, end_at, conf, dag_hash)
         ON CONFLICT (dag_id, logical_date) DO NOTHING
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(due.iter().map(|(d, _, _)| d.dag_id.as_str()).collect::<Vec<_>>())
    .bind(due.iter().map(|(_, iv, _)| iv.start).collect::<Vec<_>>())
    .bind(due.iter().map(|(_, iv, _)| iv.end).collect::<Vec<_>>())
    .bind(due.iter().map(|(_, _, c)| c).collect::<Vec<_>>())
    .bind(due.iter().map(|(d, _, _)| d.file_hash.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let dag_of: HashMap<&str, &Dag> = due.iter().map(|(d, _, _)| (d.dag_id.as_str(), *d)).collect();
    let runs: Vec<(i64, &Dag)> = created.iter().filter_map(|r| Some((r.run_id, *dag_of.get(r.dag_id.as_str())?))).collect();
    insert_task_instances(&mut *tx, &runs).await?;
    let mut versions: Vec<&Dag> = runs.iter().map(|(_, d)| *d).collect();
    versions.sort_by(|a, b| a.dag_id.cmp(&b.dag_id));
    versions.dedup_by(|a, b| a.dag_id == b.dag_id);
    insert_dag_versions(&mut *tx, &versions).await?;
    Ok(created)
}

/// Moves queued runs to running, each while its DAG has fewer than its
/// `max_active_runs` running, oldest first. Serialized per DAG by advisory
/// locks (taken in name order), so several daemons never exceed a limit.
/// Returns the runs started.
///
/// One exception to the limit: in a DAG whose runs wait for their
/// predecessors, a queued run older than every running run starts at once.
/// It is a run cleared after the later ones started, and they may all be
/// waiting for it: holding it back for a free slot would hold the DAG
/// forever.
async fn start_queued_runs(tx: &mut sqlx::PgConnection, queued: &[QueuedRun<'_>]) -> Result<Vec<RunRow>, StateError> {
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    let mut limits: Vec<(&str, i64, bool)> = queued.iter().map(|q| (q.dag_id, q.max_active_runs, q.depends_on_past)).collect();
    limits.sort();
    limits.dedup_by(|a, b| a.0 == b.0);
    let dags: Vec<&str> = limits.iter().map(|(d, _, _)| *d).collect();
    // Its own statement: the next one's snapshot sees every start
    // committed before the locks were granted.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('sluice-run-start:' || d)) FROM UNNEST($1::text[]) WITH ORDINALITY AS u(d, n) ORDER BY n",
    )
    .bind(&dags)
    .execute(&mut *tx)
    .await?;
    let returning: Vec<String> = RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect();
    let started: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH lim AS (SELECT * FROM UNNEST($1::text[], $2::bigint[], $4::bool[]) AS l(dag_id, max_active, depends_on_past)),
         running AS (
             SELECT dag_id, count(*) AS n, min(logical_date) AS oldest FROM dag_runs
             WHERE state = 'running' AND dag_id = ANY($1) GROUP BY dag_id
         ),
         cand AS (
             SELECT r.run_id, r.dag_id, r.logical_date, row_number() OVER (PARTITION BY r.dag_id ORDER BY r.logical_date, r.run_id) AS k
             FROM dag_runs r WHERE r.run_id = ANY($3) AND r.state = 'queued'
         )
         UPDATE dag_runs r SET state = 'running', started_at = COALESCE(r.started_at, now())
         FROM cand JOIN lim USING (dag_id) LEFT JOIN running USING (dag_id)
         WHERE r.run_id = cand.run_id
           AND (cand.k <= lim.max_active - coalesce(running.n, 0) OR (lim.depends_on_past AND cand.logical_date < running.oldest))
         RETURNING {}",
        returning.join(", ")
    )))
    .bind(&dags)
    .bind(limits.iter().map(|(_, m, _)| *m).collect::<Vec<_>>())
    .bind(queued.iter().map(|q| q.run_id).collect::<Vec<_>>())
    .bind(limits.iter().map(|(_, _, o)| *o).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(started)
}

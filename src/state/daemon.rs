//! State-store queries of the scheduler daemon and `sluice status`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{RUN_SELECT, RunRow, StateError, Store};

/// A worker, for `sluice status`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
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

/// A running try, for `sluice status`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RunningTry {
    pub run_id: i64,
    pub dag_id: String,
    pub task_id: String,
    pub try_number: i32,
    pub worker_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The logical date of each DAG's latest scheduled run.
    pub async fn last_scheduled(&self) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        let rows = sqlx::query("SELECT dag_id, max(logical_date) AS last FROM dag_runs WHERE run_type = 'scheduled' GROUP BY dag_id")
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

    /// Moves a queued run to running if its DAG has fewer than
    /// `max_active_runs` running; serialized per DAG by an advisory lock, so
    /// several daemons never exceed the limit.
    pub async fn start_queued_run(&self, dag_id: &str, run_id: i64, max_active_runs: i64) -> Result<bool, StateError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sluice-run-start:' || $1))").bind(dag_id).execute(&mut *tx).await?;
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_runs WHERE dag_id = $1 AND state = 'running'")
            .bind(dag_id)
            .fetch_one(&mut *tx)
            .await?;
        if running >= max_active_runs {
            tx.rollback().await.ok();
            return Ok(false);
        }
        let r = sqlx::query(
            "UPDATE dag_runs SET state = 'running', started_at = COALESCE(started_at, now()) WHERE run_id = $1 AND state = 'queued'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
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

//! What the web UI reads and keeps in the state store: users, the signing
//! key, and the few batch reads its pages need (runs of many DAGs, task
//! instances of many runs) in one query each.

use super::types::from_row;
use chrono::{DateTime, Utc};

use super::{RunRow, StateError, Store, TiRow};
use crate::state::Role;

/// A web UI user.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}
from_row!(UserRow { name, role, password_hash, created_at });

/// A task instance with its run.
#[derive(Debug, Clone)]
pub struct RunTi {
    pub run_id: i64,
    pub ti: TiRow,
}
from_row!(RunTi { run_id } flatten { ti });

impl Store {
    /// Adds a user or replaces its role and password. Returns whether the
    /// user is new.
    pub async fn put_user(&self, name: &str, role: Role, password_hash: &str) -> Result<bool, StateError> {
        let new: bool = sqlx::query_scalar(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash
             RETURNING (xmax = 0)",
        )
        .bind(name)
        .bind(role)
        .bind(password_hash)
        .fetch_one(self.pool())
        .await?;
        Ok(new)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, StateError> {
        Ok(sqlx::query_as("SELECT name, role, password_hash, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StateError> {
        Ok(sqlx::query_as("SELECT name, role, password_hash, created_at FROM users ORDER BY name").fetch_all(self.pool()).await?)
    }

    /// The key that signs the web UI's cookies: made once (from `fresh`, 32
    /// random bytes from the caller) and shared by every web server on this
    /// store, so that a session survives a restart and works on any of them.
    pub async fn web_key(&self, fresh: &[u8]) -> Result<Vec<u8>, StateError> {
        sqlx::query("INSERT INTO web_keys (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING").bind(fresh).execute(self.pool()).await?;
        Ok(sqlx::query_scalar("SELECT key FROM web_keys WHERE id = 1").fetch_one(self.pool()).await?)
    }

    /// The latest `per_dag` runs of every DAG, newest first within a DAG.
    pub async fn recent_runs(&self, per_dag: i64) -> Result<Vec<RunRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT run_id, dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf, state, created_at, started_at, ended_at
             FROM (SELECT *, row_number() OVER (PARTITION BY dag_id ORDER BY logical_date DESC) AS n FROM dag_runs) r
             WHERE n <= $1 ORDER BY dag_id, logical_date DESC",
        )
        .bind(per_dag)
        .fetch_all(self.pool())
        .await?)
    }

    /// The task instances of several runs in one query.
    pub async fn task_instances_of(&self, run_ids: &[i64]) -> Result<Vec<RunTi>, StateError> {
        Ok(sqlx::query_as(
            "SELECT run_id, task_id, state, try_number, max_tries, worker_id, next_try_at, started_at, ended_at, error, error_kind, output, notice
             FROM task_instances WHERE run_id = ANY($1)",
        )
        .bind(run_ids)
        .fetch_all(self.pool())
        .await?)
    }
}

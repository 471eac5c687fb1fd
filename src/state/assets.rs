//! Assets in the state store: update events, and the runs they create for
//! the DAGs scheduled on them.

use super::types::from_row;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{RunRow, RunState, RunType, StateError, Store};
use crate::dag::Dag;

/// An asset's updates, for `sluice assets list`.
#[derive(Debug, Clone)]
pub struct AssetRow {
    pub asset: String,
    pub events: i64,
    pub last_update: DateTime<Utc>,
    /// The DAG and run of the last update.
    pub last_dag: String,
    pub last_run: Option<i64>,
}
from_row!(AssetRow { asset, events, last_update, last_dag, last_run });

impl Store {
    /// Creates a run of `dag` when the assets it is scheduled on were
    /// updated since its last asset-triggered run (every one of them, or
    /// any with `any`), and moves its cursors past the events it consumes,
    /// in one transaction under a lock on the DAG's row: with several
    /// daemons, an update creates exactly one run. A DAG seen for the first
    /// time starts from the latest events (earlier updates do not trigger
    /// it). The run's data interval spans the consumed events.
    pub async fn create_asset_run(
        &self,
        dag: &Dag,
        conf: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<RunRow>, StateError> {
        let Some(trigger) = &dag.assets else { return Ok(None) };
        let mut tx = self.pool().begin().await?;
        let locked = sqlx::query("SELECT 1 FROM dags WHERE dag_id = $1 FOR UPDATE").bind(&dag.dag_id).fetch_optional(&mut *tx).await?;
        if locked.is_none() {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO asset_cursors (dag_id, asset, last_event_id)
             SELECT $1, a, coalesce((SELECT max(id) FROM asset_events WHERE asset = a), 0) FROM UNNEST($2::text[]) AS a
             ON CONFLICT DO NOTHING",
        )
        .bind(&dag.dag_id)
        .bind(&trigger.assets)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT c.asset, max(e.id) AS newest, min(e.created_at) AS first_at, max(e.created_at) AS last_at
             FROM asset_cursors c LEFT JOIN asset_events e ON e.asset = c.asset AND e.id > c.last_event_id
             WHERE c.dag_id = $1 AND c.asset = ANY($2)
             GROUP BY c.asset",
        )
        .bind(&dag.dag_id)
        .bind(&trigger.assets)
        .fetch_all(&mut *tx)
        .await?;
        let updated: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = rows
            .iter()
            .filter_map(|r| Some((r.get::<String, _>("asset"), r.get::<Option<i64>, _>("newest")?, r.get("first_at"), r.get("last_at"))))
            .collect();
        let due = if trigger.any { !updated.is_empty() } else { updated.len() == trigger.assets.len() };
        if !due {
            tx.commit().await?;
            return Ok(None);
        }
        let start = updated.iter().map(|u| u.2).min().unwrap_or_else(Utc::now);
        let end = updated.iter().map(|u| u.3).max().unwrap_or_else(Utc::now);
        let assets: Vec<&str> = updated.iter().map(|u| u.0.as_str()).collect();
        let newest: Vec<i64> = updated.iter().map(|u| u.1).collect();
        sqlx::query(
            "UPDATE asset_cursors c SET last_event_id = u.newest
             FROM UNNEST($2::text[], $3::bigint[]) AS u(asset, newest) WHERE c.dag_id = $1 AND c.asset = u.asset",
        )
        .bind(&dag.dag_id)
        .bind(&assets)
        .bind(&newest)
        .execute(&mut *tx)
        .await?;
        let interval = crate::dag::schedule::DataInterval { start, end };
        let run = super::insert_run(&mut tx, dag, RunType::AssetTriggered, Utc::now(), interval, conf, RunState::Queued).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Every asset that has been updated, with its last update.
    pub async fn assets(&self) -> Result<Vec<AssetRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT ON (asset) asset, count(*) OVER (PARTITION BY asset) AS events, created_at AS last_update,
                    dag_id AS last_dag, run_id AS last_run
             FROM asset_events ORDER BY asset, id DESC",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

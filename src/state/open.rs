//! A driver's start in one round trip (migration 0011): the run's task
//! instances synced with the DAG, the DAG's previous success, and either
//! the first claim the driver foresaw or the run's states.

use sqlx::Row;

use super::chain::ForeseenClaim;
use super::{ClaimArrays, Claimed, InstanceArrays, StateError, Store, TiRow, claimed_of, sorted_expectation, split_decisions};
use crate::dag::Dag;
use crate::template::PrevSuccess;

/// What a driver starts from.
#[derive(Debug)]
pub struct Opened {
    /// The DAG's latest successful run before this one, for the
    /// `prev_*_success` template names.
    pub prev_success: Option<PrevSuccess>,
    pub start: OpenStart,
}

/// How the run was found.
#[derive(Debug)]
pub enum OpenStart {
    /// As foreseen: its decisions are recorded and these tries claimed.
    Claimed(Vec<Claimed>),
    /// As foreseen, but nothing could be claimed.
    Decided,
    /// Not as foreseen (or nothing was): its states, as
    /// [`Store::task_states`] reads them.
    States(Vec<TiRow>),
}

impl Store {
    /// Adds the instances of tasks added to `dag` since the run was
    /// created, marks those of tasks it no longer has `removed`, reads the
    /// DAG's previous success and, if the run is then exactly as `first`
    /// foresaw, applies its decisions and claims its tries for `worker`;
    /// else reads the run's states. One statement.
    pub async fn open_run(
        &self,
        run_id: i64,
        dag: &Dag,
        logical_date: chrono::DateTime<chrono::Utc>,
        worker: &str,
        first: Option<&ForeseenClaim>,
    ) -> Result<Opened, StateError> {
        let mut a = InstanceArrays::default();
        a.push(dag);
        let (expect_ids, expect_states) = first.map(|f| sorted_expectation(&f.expect)).unzip();
        let (decided, states) = first.map(|f| split_decisions(&f.decisions)).unzip();
        let claim = first.map(|f| ClaimArrays::of(&f.tasks));
        let rows = sqlx::query(
            "SELECT kind, task_id, state, try_number, max_tries, worker_id, next_try_at, started_at, ended_at,
                    poking_since, outputs, prev_interval_start, prev_interval_end, prev_started_at
             FROM open_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
        )
        .bind(run_id)
        .bind(&dag.dag_id)
        .bind(logical_date)
        .bind(worker)
        .bind(&a.ids)
        .bind(&a.prio)
        .bind(&a.max)
        .bind(&a.pool)
        .bind(&a.pool_slots)
        .bind(&a.weight)
        .bind(expect_ids)
        .bind(expect_states)
        .bind(first.map(|f| f.limit))
        .bind(first.map(|f| f.max_active))
        .bind(claim.as_ref().map(|c| &c.ids))
        .bind(claim.as_ref().map(|c| &c.maxes))
        .bind(claim.as_ref().map(|c| &c.pool_names))
        .bind(claim.as_ref().map(|c| &c.pool_slots))
        .bind(decided)
        .bind(states)
        .bind(first.map(|f| &f.upstream))
        .bind(first.map(|f| &f.mapped))
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows.into_iter();
        // The first row is the previous success's.
        let prev_success = rows.next().and_then(|r| {
            Some(PrevSuccess {
                interval_start: r.get::<Option<_>, _>("prev_interval_start")?,
                interval_end: r.get::<Option<_>, _>("prev_interval_end")?,
                started_at: r.get("prev_started_at"),
            })
        });
        let rows: Vec<_> = rows.collect();
        let kind: Option<String> = rows.first().map(|r| r.get("kind"));
        let start = match kind.as_deref() {
            Some("claimed") => OpenStart::Claimed(claimed_of(rows)),
            Some("decided") => OpenStart::Decided,
            _ => OpenStart::States(
                rows.into_iter()
                    .map(|r| {
                        Ok(TiRow {
                            task_id: r.try_get("task_id")?,
                            state: r.try_get("state")?,
                            try_number: r.try_get("try_number")?,
                            max_tries: r.try_get("max_tries")?,
                            worker_id: r.try_get("worker_id")?,
                            next_try_at: r.try_get("next_try_at")?,
                            started_at: r.try_get("started_at")?,
                            ended_at: r.try_get("ended_at")?,
                            error: None,
                            error_kind: None,
                            output: None,
                            notice: None,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?,
            ),
        };
        Ok(Opened { prev_success, start })
    }
}

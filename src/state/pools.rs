//! Pools in the state store: their slots, and how many are taken.

use super::types::from_row;
use std::collections::HashMap;

use super::{ClaimSpec, StateError, Store};

/// A pool with its use now.
#[derive(Debug, Clone)]
pub struct PoolRow {
    pub name: String,
    pub slots: i32,
    pub description: String,
    /// Slots taken by running tries.
    pub running: i64,
    /// Slots wanted by tries waiting for one (queued or due).
    pub waiting: i64,
}
from_row!(PoolRow { name, slots, description, running, waiting });

impl Store {
    /// Adds pools or sets their slots and descriptions.
    pub async fn put_pools(&self, pools: &[(String, i32, String)]) -> Result<(), StateError> {
        if pools.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = pools.iter().map(|p| p.0.as_str()).collect();
        let slots: Vec<i32> = pools.iter().map(|p| p.1).collect();
        let descs: Vec<&str> = pools.iter().map(|p| p.2.as_str()).collect();
        sqlx::query(
            "INSERT INTO pools (name, slots, description)
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[])
             ON CONFLICT (name) DO UPDATE SET slots = EXCLUDED.slots, description = EXCLUDED.description, updated_at = now()
             WHERE pools.slots <> EXCLUDED.slots OR pools.description <> EXCLUDED.description",
        )
        .bind(&names)
        .bind(&slots)
        .bind(&descs)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes a pool; false when there was none.
    pub async fn delete_pool(&self, name: &str) -> Result<bool, StateError> {
        let r = sqlx::query("DELETE FROM pools WHERE name = $1").bind(name).execute(self.pool()).await?;
        Ok(r.rows_affected() > 0)
    }

    /// Every pool with the slots in use and wanted.
    pub async fn pools(&self) -> Result<Vec<PoolRow>, StateError> {
        Ok(sqlx::query_as(
            "SELECT p.name, p.slots, p.description,
                    coalesce(sum(t.pool_slots) FILTER (WHERE t.state = 'running'), 0)::bigint AS running,
                    coalesce(sum(t.pool_slots) FILTER (WHERE t.state <> 'running'), 0)::bigint AS waiting
             FROM pools p LEFT JOIN task_instances t ON t.pool = p.name
                 AND (t.state IN ('running', 'queued') OR (t.state IN ('up_for_retry', 'up_for_reschedule') AND t.next_try_at <= now()))
             GROUP BY p.name ORDER BY p.name",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

/// Picks the ready tries of a run to claim when some of its tasks use
/// pools, inside the claim's transaction: the run's ready instances in
/// claim order, each pooled one taken only while its pool has room once
/// the slots of waiting tries of other runs with a higher
/// `priority_weight` are set aside. The pools' rows are locked until the
/// claim commits, so claims from every process take a pool's slots one
/// after the other. An instance of a pool that does not exist, or that
/// wants more slots than its pool has, fails here with a config error.
pub(super) async fn choose(
    tx: &mut sqlx::PgConnection,
    run_id: i64,
    limit: i64,
    max_active: i64,
    tasks: &HashMap<String, ClaimSpec>,
    ids: &[&str],
) -> Result<Vec<String>, StateError> {
    const READY: &str = "(state = 'queued' OR (state IN ('up_for_retry', 'up_for_reschedule') AND next_try_at <= now()))";
    let candidates: Vec<(String, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT task_id, priority_weight FROM task_instances
         WHERE run_id = $1 AND {READY} AND task_id = ANY($2::text[])
         ORDER BY priority_weight DESC, priority, task_id FOR UPDATE SKIP LOCKED"
    )))
    .bind(run_id)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM task_instances WHERE run_id = $1 AND state = 'running'")
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await?;
    let room = limit.min(max_active - running).max(0) as usize;
    if room == 0 || candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut names: Vec<&str> = candidates.iter().filter_map(|(id, _)| tasks.get(id)?.pool.as_ref().map(|p| p.pool.as_str())).collect();
    names.sort();
    names.dedup();
    // In name order, so that two claims never wait for each other's pools.
    let slots: HashMap<String, i32> = sqlx::query_as("SELECT name, slots FROM pools WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let mut used: HashMap<String, i64> =
        sqlx::query_as("SELECT pool, sum(pool_slots)::bigint FROM task_instances WHERE pool = ANY($1) AND state = 'running' GROUP BY pool")
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let others: Vec<(String, i32, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT pool, priority_weight, pool_slots FROM task_instances WHERE pool = ANY($1) AND run_id <> $2 AND {READY}"
    )))
    .bind(&names)
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    // Running instances of each mapped task with a limit.
    let mut family_running: HashMap<String, i64> = sqlx::query_as(
        "SELECT split_part(task_id, '[', 1), count(*) FROM task_instances
         WHERE run_id = $1 AND state = 'running' AND task_id LIKE '%]' GROUP BY 1",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut chosen = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    for (id, weight) in candidates {
        if chosen.len() >= room {
            break;
        }
        let Some(spec) = tasks.get(&id) else { continue };
        if let Some((family, limit)) = &spec.family {
            let running = family_running.entry(family.clone()).or_default();
            if *running >= *limit as i64 {
                continue;
            }
            // Counted now; a pool may still hold it back below.
            if spec.pool.is_none() {
                *running += 1;
            }
        }
        let Some(want) = &spec.pool else {
            chosen.push(id);
            continue;
        };
        let Some(&total) = slots.get(&want.pool) else {
            let why = format!(
                "pool `{}` does not exist: declare it in {} (`{}: {{ slots: N }}`) or run `sluice pools set {} N`, then clear the task",
                want.pool,
                crate::pools::POOLS_FILE,
                want.pool,
                want.pool
            );
            refused.push((id, why));
            continue;
        };
        if want.slots > total {
            let why = format!(
                "the task takes {} slots of pool `{}`, which has {total}: it could never run; lower its pool_slots or raise the pool's slots, then clear it",
                want.slots, want.pool
            );
            refused.push((id, why));
            continue;
        }
        let ahead: i64 = others.iter().filter(|o| o.0 == want.pool && o.1 > weight).map(|o| o.2 as i64).sum();
        let in_use = used.entry(want.pool.clone()).or_default();
        if *in_use + ahead + want.slots as i64 <= total as i64 {
            *in_use += want.slots as i64;
            if let Some((family, _)) = &spec.family {
                *family_running.entry(family.clone()).or_default() += 1;
            }
            chosen.push(id);
        }
    }
    for (id, why) in refused {
        tracing::error!(run = run_id, task = %id, "{why}");
        sqlx::query(
            "UPDATE task_instances SET state = 'failed', error = $3, error_kind = 'config', ended_at = now(), next_try_at = NULL
             WHERE run_id = $1 AND task_id = $2",
        )
        .bind(run_id)
        .bind(&id)
        .bind(&why)
        .execute(&mut *tx)
        .await?;
    }
    Ok(chosen)
}

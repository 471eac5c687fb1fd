//! A chain's step in one round trip: the end of a try with the claim its
//! success leads to, worked out ahead by the driver (migration 0010), or
//! with the run's end when it is the last (migration 0012).

use std::collections::HashMap;

use super::{
    ClaimArrays, ClaimSpec, Claimed, RunState, StateError, Store, TiState, TryEnd, bind_end, claimed_of, sorted_expectation,
    split_decisions,
};

/// A claim worked out when a try started, for its success.
#[derive(Debug, Clone)]
pub struct ForeseenClaim {
    /// Every instance of the run and its state once the end is applied;
    /// the claim is made only if the run is exactly so.
    pub expect: Vec<(String, TiState)>,
    /// The trigger-rule decisions those states lead to.
    pub decisions: Vec<(String, TiState)>,
    pub limit: i64,
    pub max_active: i64,
    /// The candidates, as [`Store::claim`] takes them (no pools, no
    /// per-task limits: those need the pools' choice).
    pub tasks: HashMap<String, ClaimSpec>,
    /// The outputs the claimed tries read.
    pub upstream: Vec<String>,
    pub mapped: Vec<String>,
    /// The run's state when the success leaves every instance done: the
    /// run is then finished with the end, and nothing claimed.
    pub finish: Option<RunState>,
}

/// What [`Store::finish_and_claim`] did.
#[derive(Debug)]
pub enum ChainEnd {
    /// The try's claim was lost meanwhile: its end was not applied.
    Lost,
    /// The end is recorded; the run was not as foreseen, so nothing else
    /// was done.
    Ended,
    /// The end and the decisions are recorded; nothing could be claimed.
    Decided,
    /// The end and the decisions are recorded, and these tries claimed.
    Claimed(Vec<Claimed>),
    /// The end and the decisions are recorded, and the run finished in
    /// the state foreseen.
    Finished,
}

impl Store {
    /// Records the end of a try (as [`Store::finish_try`]) and, if the
    /// run is then exactly as `next` foresaw, applies its decisions and
    /// claims its tries, in one transaction.
    pub async fn finish_and_claim(
        &self,
        run_id: i64,
        task_id: &str,
        try_number: i32,
        worker: &str,
        end: &TryEnd,
        next: &ForeseenClaim,
    ) -> Result<ChainEnd, StateError> {
        let (expect_ids, expect_states) = sorted_expectation(&next.expect);
        let (decided, states) = split_decisions(&next.decisions);
        let ClaimArrays { ids, maxes, pool_names, pool_slots } = ClaimArrays::of(&next.tasks);
        let query = sqlx::query(
            "SELECT outcome, task_id, try_number, max_tries, poking_since, outputs
             FROM finish_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                   $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)",
        );
        let rows = bind_end(query, run_id, task_id, try_number, worker, end)
            .bind(&expect_ids)
            .bind(&expect_states)
            .bind(next.limit)
            .bind(next.max_active)
            .bind(&ids)
            .bind(&maxes)
            .bind(&pool_names)
            .bind(&pool_slots)
            .bind(&decided)
            .bind(&states)
            .bind(&next.upstream)
            .bind(&next.mapped)
            .bind(next.finish)
            .fetch_all(&self.pool)
            .await?;
        let outcome: Option<String> = rows.first().map(|r| sqlx::Row::get(r, "outcome"));
        Ok(match outcome.as_deref() {
            Some("claimed") => ChainEnd::Claimed(claimed_of(rows)),
            Some("decided") => ChainEnd::Decided,
            Some("finished") => ChainEnd::Finished,
            Some("lost") => ChainEnd::Lost,
            _ => ChainEnd::Ended,
        })
    }
}

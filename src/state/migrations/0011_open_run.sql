-- A driver's start in one round trip (it took seven: the previous success,
-- a transaction syncing the run's instances with its DAG, the states, the
-- first claim).
--
-- Syncs the run's task instances with the DAG the driver runs: adds the
-- tasks the run lacks (pending) and marks 'removed' those the DAG no longer
-- has (not running ones, and not the instances of a mapped task it still
-- has). Then, when the driver foresaw the run's states (p_expect_ids not
-- NULL: a run nothing has touched yet, every task pending), it checks under
-- the run's lock, as finish_and_claim does, that every instance is in the
-- state foreseen, and if so applies the decisions and claims the tries
-- through claim_tries itself, in the same transaction.
--
-- Rows: first the DAG's latest successful run before this one ('prev'; its
-- columns NULL when there is none); then one per claimed try ('claimed',
-- as claim_tries returns them) when the foreseen claim was made, one
-- ('decided') when it was made but nothing could be claimed, else the
-- run's instances ('state'), in the order Store::task_states reads them.
CREATE FUNCTION open_run(
    p_run bigint, p_dag text, p_before timestamptz, p_worker text,
    p_ids text[], p_priority int[], p_max_tries int[], p_pools text[], p_slots int[], p_weights int[],
    p_expect_ids text[], p_expect_states text[],
    p_limit bigint, p_max_active bigint, p_claim_ids text[], p_claim_maxes int[], p_claim_pools text[], p_claim_slots int[],
    p_decided text[], p_states text[], p_upstreams text[], p_mapped text[])
RETURNS TABLE (kind text, task_id text, state text, try_number int, max_tries int, worker_id text,
               next_try_at timestamptz, started_at timestamptz, ended_at timestamptz,
               poking_since timestamptz, outputs jsonb,
               prev_interval_start timestamptz, prev_interval_end timestamptz, prev_started_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    IF p_expect_ids IS NOT NULL THEN
        PERFORM 1 FROM dag_runs WHERE run_id = p_run FOR UPDATE;
    END IF;
    INSERT INTO task_instances (run_id, task_id, state, priority, max_tries, pool, pool_slots, priority_weight)
    SELECT p_run, u.task_id, 'pending', u.priority, u.max_tries, u.pool, u.pool_slots, u.priority_weight
    FROM UNNEST(p_ids, p_priority, p_max_tries, p_pools, p_slots, p_weights)
        AS u(task_id, priority, max_tries, pool, pool_slots, priority_weight)
    ON CONFLICT (run_id, task_id) DO NOTHING;
    UPDATE task_instances SET state = 'removed', ended_at = now()
    WHERE run_id = p_run AND NOT (task_id = ANY(p_ids)) AND state NOT IN ('running', 'removed')
      AND NOT (task_id LIKE '%]' AND split_part(task_id, '[', 1) = ANY(p_ids));
    RETURN QUERY
        SELECT 'prev'::text, NULL::text, NULL::text, NULL::int, NULL::int, NULL::text,
               NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
               p.data_interval_start, p.data_interval_end, p.started_at
        FROM (SELECT 1) AS one
        LEFT JOIN LATERAL (
            SELECT r.data_interval_start, r.data_interval_end, r.started_at FROM dag_runs r
            WHERE r.dag_id = p_dag AND r.logical_date < p_before AND r.state = 'success'
            ORDER BY r.logical_date DESC LIMIT 1
        ) AS p ON true;
    IF p_expect_ids IS NOT NULL
       AND (SELECT count(*) FROM task_instances i WHERE i.run_id = p_run) = cardinality(p_expect_ids)
       AND NOT EXISTS (SELECT 1 FROM UNNEST(p_expect_ids, p_expect_states) AS e(task_id, state)
                       LEFT JOIN task_instances i ON i.run_id = p_run AND i.task_id = e.task_id
                       WHERE i.state IS DISTINCT FROM e.state) THEN
        RETURN QUERY
            SELECT 'claimed'::text, c.task_id, NULL::text, c.try_number, c.max_tries, NULL::text,
                   NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, c.poking_since, c.outputs,
                   NULL::timestamptz, NULL::timestamptz, NULL::timestamptz
            FROM claim_tries(p_run, p_limit, p_worker, p_max_active, p_claim_ids, p_claim_maxes, p_claim_pools, p_claim_slots, NULL,
                             p_decided, p_states, p_upstreams, p_mapped) c;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'decided'::text, NULL::text, NULL::text, NULL::int, NULL::int, NULL::text,
                   NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
                   NULL::timestamptz, NULL::timestamptz, NULL::timestamptz;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'state'::text, i.task_id, i.state, i.try_number, i.max_tries, i.worker_id, i.next_try_at, i.started_at, i.ended_at,
               NULL::timestamptz, NULL::jsonb, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz
        FROM task_instances i WHERE i.run_id = p_run ORDER BY i.priority, i.task_id;
END
$$;

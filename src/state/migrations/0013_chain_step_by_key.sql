-- A claim worked out ahead, cheaper (W2: a chain step's statement 1.1 ms ->
-- 0.56 ms).
--
-- 1. The check that a run is as its driver foresaw (finish_and_claim, and
-- open_run before a new run's first claim) is one function, in one pass:
-- the run's instances, sorted by task id in byte order, compared as two
-- arrays with the expected ones, which the store sends sorted the same way
-- (state::sorted_expectation). The count and the anti-join it replaces read
-- the run's instances twice (about 0.5 ms with 100 instances, the arrays
-- about 0.07 ms). Expected ids sent in another order only make the check
-- fail, which is safe: the end is then recorded alone (the run opened
-- from its states), and the driver reads the states.
--
-- 2. No sequential scans in the functions of a claim. Their plans are
-- generic (plan_cache_mode), costed from the statistics of task_instances;
-- taken while the table held a few runs (a new state store, a benchmark),
-- those say that one run is a large part of the table, and the plans read
-- the whole table at every claim, slower as runs accumulate, until
-- autovacuum analyzes it again. Every statement in them reads one run's
-- rows (or a DAG's runs), which the keys reach directly.
CREATE FUNCTION run_as_foreseen(p_run bigint, p_ids text[], p_states text[]) RETURNS boolean
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    RETURN coalesce((SELECT array_agg(i.task_id ORDER BY i.task_id COLLATE "C") = p_ids
                            AND array_agg(i.state ORDER BY i.task_id COLLATE "C") = p_states
                     FROM task_instances i WHERE i.run_id = p_run), false);
END
$$;

CREATE OR REPLACE FUNCTION finish_and_claim(
    p_run bigint, p_task text, p_try int, p_worker text,
    p_state text, p_error text, p_output jsonb, p_next_try_at timestamptz, p_try_state text,
    p_exit_code int, p_log text, p_error_kind text, p_assets text[],
    p_expect_ids text[], p_expect_states text[],
    p_limit bigint, p_max_active bigint, p_ids text[], p_maxes int[], p_pools text[], p_slots int[],
    p_decided text[], p_states text[], p_upstreams text[], p_mapped text[], p_finish text)
RETURNS TABLE (outcome text, task_id text, try_number int, max_tries int, poking_since timestamptz, outputs jsonb)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_applied boolean;
BEGIN
    PERFORM 1 FROM dag_runs WHERE run_id = p_run FOR UPDATE;
    UPDATE task_instances SET state = p_state, ended_at = now(), error = p_error, output = p_output,
        next_try_at = p_next_try_at, heartbeat_at = NULL, error_kind = p_error_kind
    WHERE run_id = p_run AND task_id = p_task AND try_number = p_try AND worker_id = p_worker AND state = 'running';
    v_applied := FOUND;
    UPDATE task_tries SET state = p_try_state, ended_at = now(), error = p_error, output = p_output,
        exit_code = p_exit_code, log = p_log, error_kind = p_error_kind
    WHERE run_id = p_run AND task_id = p_task AND try_number = p_try AND worker_id = p_worker AND state = 'running';
    IF NOT v_applied THEN
        RETURN QUERY SELECT 'lost'::text, NULL::text, NULL::int, NULL::int, NULL::timestamptz, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO asset_events (asset, dag_id, run_id, task_id)
    SELECT a.asset, r.dag_id, p_run, p_task FROM UNNEST(p_assets) AS a(asset), dag_runs r WHERE r.run_id = p_run;
    IF run_as_foreseen(p_run, p_expect_ids, p_expect_states) THEN
        IF p_finish IS NOT NULL THEN
            PERFORM apply_decisions(p_run, p_decided, p_states);
            UPDATE dag_runs SET state = p_finish, ended_at = now() WHERE run_id = p_run AND state IN ('running', 'queued');
            RETURN QUERY SELECT CASE WHEN FOUND THEN 'finished' ELSE 'decided' END, NULL::text, NULL::int, NULL::int,
                                NULL::timestamptz, NULL::jsonb;
            RETURN;
        END IF;
        RETURN QUERY SELECT 'claimed'::text, c.task_id, c.try_number, c.max_tries, c.poking_since, c.outputs
            FROM claim_tries(p_run, p_limit, p_worker, p_max_active, p_ids, p_maxes, p_pools, p_slots, NULL,
                             p_decided, p_states, p_upstreams, p_mapped) c;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'decided'::text, NULL::text, NULL::int, NULL::int, NULL::timestamptz, NULL::jsonb;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'ended'::text, NULL::text, NULL::int, NULL::int, NULL::timestamptz, NULL::jsonb;
END
$$;

ALTER FUNCTION claim_tries(bigint, bigint, text, bigint, text[], int[], text[], int[], text[], text[], text[], text[], text[])
    SET enable_seqscan = off;
ALTER FUNCTION apply_decisions(bigint, text[], text[]) SET enable_seqscan = off;

CREATE OR REPLACE FUNCTION open_run(
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
SET enable_seqscan = off
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
    IF p_expect_ids IS NOT NULL AND run_as_foreseen(p_run, p_expect_ids, p_expect_states) THEN
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

-- A chain's step in one round trip: the end of a try and the claim of what
-- its success lets run. When a driver starts a try that is the only one
-- running in its run, it works out ahead what the try's success will
-- decide (trigger rules) and claim. At the end, this function records the
-- try's end exactly as Store::finish_try does and then, under the run's
-- lock (taken first, as claim_tries takes it), checks that every instance
-- of the run is in the state the driver foresaw: if one is not (another
-- worker, a user's clear or mark, an expansion changed the run meanwhile),
-- nothing more is done and the driver decides from the states it reads, as
-- after any end. Otherwise the decisions are applied and the tries claimed
-- by claim_tries itself, in the same transaction.
--
-- Rows: one ('lost') when the try's claim was lost (its end is not
-- applied; the try row is written); one ('ended') when the end is recorded
-- but the run was not as foreseen; one ('decided') when the decisions were
-- applied but nothing could be claimed; else one per claimed try
-- ('claimed'), as claim_tries returns them.
CREATE FUNCTION finish_and_claim(
    p_run bigint, p_task text, p_try int, p_worker text,
    p_state text, p_error text, p_output jsonb, p_next_try_at timestamptz, p_try_state text,
    p_exit_code int, p_log text, p_error_kind text, p_assets text[],
    p_expect_ids text[], p_expect_states text[],
    p_limit bigint, p_max_active bigint, p_ids text[], p_maxes int[], p_pools text[], p_slots int[],
    p_decided text[], p_states text[], p_upstreams text[], p_mapped text[])
RETURNS TABLE (outcome text, task_id text, try_number int, max_tries int, poking_since timestamptz, outputs jsonb)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
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
    IF (SELECT count(*) FROM task_instances i WHERE i.run_id = p_run) = cardinality(p_expect_ids)
       AND NOT EXISTS (SELECT 1 FROM UNNEST(p_expect_ids, p_expect_states) AS e(task_id, state)
                       LEFT JOIN task_instances i ON i.run_id = p_run AND i.task_id = e.task_id
                       WHERE i.state IS DISTINCT FROM e.state) THEN
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

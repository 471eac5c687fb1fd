-- apply_decisions in PL/pgSQL: a SQL-language function's UPDATE is planned
-- again at every call (0.23 ms of each claim's 0.74 ms in W2, by
-- auto_explain), where PL/pgSQL keeps the plan for the session. Same
-- statement, same effect.
CREATE OR REPLACE FUNCTION apply_decisions(p_run bigint, p_decided text[], p_states text[]) RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    UPDATE task_instances t SET state = u.state,
        ended_at = CASE WHEN u.state IN ('skipped', 'upstream_failed') THEN now() END
    FROM UNNEST(p_decided, p_states) AS u(task_id, state)
    WHERE t.run_id = p_run AND t.task_id = u.task_id AND t.state = 'pending';
END
$$;

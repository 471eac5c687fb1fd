-- Sensors in reschedule mode: between pokes an instance is
-- `up_for_reschedule` (its slot free, its next poke at next_try_at) and
-- keeps its try number, its try row and its started_at (the sensor's
-- timeout counts from there).
ALTER TABLE task_instances DROP CONSTRAINT task_instances_state_check;
ALTER TABLE task_instances ADD CONSTRAINT task_instances_state_check
    CHECK (state IN ('pending', 'queued', 'running', 'up_for_retry', 'up_for_reschedule', 'success',
                     'failed', 'skipped', 'upstream_failed', 'removed'));
DROP INDEX task_instances_claimable;
CREATE INDEX task_instances_claimable ON task_instances (run_id, priority)
    WHERE state IN ('queued', 'up_for_retry', 'up_for_reschedule');

-- What became of a run's notices (the DAG's on_failure / on_success).
ALTER TABLE dag_runs ADD COLUMN notice text;

-- Pools: slots shared by the tasks of every DAG, enforced by the claim.
CREATE TABLE pools (
    name         text PRIMARY KEY,
    slots        int NOT NULL CHECK (slots >= 0),
    description  text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- What each instance takes from its pool, and its priority_weight (higher
-- is claimed first), as the DAG said when the instance was created.
ALTER TABLE task_instances ADD COLUMN pool text;
ALTER TABLE task_instances ADD COLUMN pool_slots int NOT NULL DEFAULT 1;
ALTER TABLE task_instances ADD COLUMN priority_weight int NOT NULL DEFAULT 1;
CREATE INDEX task_instances_pool ON task_instances (pool, state) WHERE pool IS NOT NULL;

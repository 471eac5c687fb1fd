-- Assets (data-aware scheduling): every update of an asset by a
-- successful try is an event; a DAG scheduled on assets keeps, per asset,
-- the last event its runs have consumed.
CREATE TABLE asset_events (
    id          bigserial PRIMARY KEY,
    asset       text NOT NULL,
    dag_id      text NOT NULL,
    run_id      bigint,
    task_id     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX asset_events_asset ON asset_events (asset, id);

CREATE TABLE asset_cursors (
    dag_id         text NOT NULL,
    asset          text NOT NULL,
    last_event_id  bigint NOT NULL,
    PRIMARY KEY (dag_id, asset)
);

ALTER TABLE dag_runs DROP CONSTRAINT dag_runs_run_type_check;
ALTER TABLE dag_runs ADD CONSTRAINT dag_runs_run_type_check
    CHECK (run_type IN ('manual', 'scheduled', 'backfill', 'asset_triggered'));

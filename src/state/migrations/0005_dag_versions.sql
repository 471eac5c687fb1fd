-- The text of every DAG file version a run was created with, so that a
-- run can be shown as it ran after its file has changed (`dag_runs.dag_hash`
-- names the version).
CREATE TABLE dag_versions (
    dag_id      text NOT NULL,
    file_hash   text NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dag_id, file_hash)
);

-- sluice state store. Tables live in the schema named by SLUICE_SCHEMA
-- (default `sluice`), which is first on the search_path of every connection.

CREATE TABLE dags (
    dag_id        text PRIMARY KEY,
    fileloc       text NOT NULL,
    file_hash     text NOT NULL,
    is_paused     boolean NOT NULL DEFAULT false,
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dag_runs (
    run_id               bigserial PRIMARY KEY,
    dag_id               text NOT NULL,
    run_type             text NOT NULL CHECK (run_type IN ('manual', 'scheduled', 'backfill')),
    logical_date         timestamptz NOT NULL,
    data_interval_start  timestamptz NOT NULL,
    data_interval_end    timestamptz NOT NULL,
    conf                 jsonb NOT NULL DEFAULT '{}',
    state                text NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    dag_hash             text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    ended_at             timestamptz,
    -- One run per DAG and logical date, whoever creates it.
    UNIQUE (dag_id, logical_date)
);
CREATE INDEX dag_runs_state ON dag_runs (state, dag_id);

CREATE TABLE task_instances (
    run_id        bigint NOT NULL REFERENCES dag_runs ON DELETE CASCADE,
    task_id       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'up_for_retry', 'success',
                                                 'failed', 'skipped', 'upstream_failed', 'removed')),
    -- Tries started so far, and how many are allowed (retries + 1, raised by a clear).
    try_number    int NOT NULL DEFAULT 0,
    max_tries     int NOT NULL DEFAULT 1,
    -- Lower runs first among ready tasks (topological position).
    priority      int NOT NULL DEFAULT 0,
    worker_id     text,
    claimed_at    timestamptz,
    heartbeat_at  timestamptz,
    next_try_at   timestamptz,
    started_at    timestamptz,
    ended_at      timestamptz,
    error         text,
    output        jsonb,
    PRIMARY KEY (run_id, task_id)
);
CREATE INDEX task_instances_claimable ON task_instances (run_id, priority)
    WHERE state IN ('queued', 'up_for_retry');
CREATE INDEX task_instances_running ON task_instances (worker_id) WHERE state = 'running';

CREATE TABLE task_tries (
    run_id       bigint NOT NULL,
    task_id      text NOT NULL,
    try_number   int NOT NULL,
    worker_id    text NOT NULL,
    state        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    exit_code    int,
    error        text,
    log          text NOT NULL DEFAULT '',
    output       jsonb,
    PRIMARY KEY (run_id, task_id, try_number),
    FOREIGN KEY (run_id, task_id) REFERENCES task_instances ON DELETE CASCADE
);

CREATE TABLE workers (
    worker_id     text PRIMARY KEY,
    hostname      text NOT NULL,
    pid           int NOT NULL,
    kind          text NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);

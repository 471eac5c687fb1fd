#!/usr/bin/env python3
"""Kill -9 chaos for sluice's daemon (run by bench/chaos.sh).

Each trial runs a daily ETL over several days (an extract, then loads in
every mode: append, replace, upsert, replace_partition, and a shell task)
under `sluice daemon`, kills the daemon with SIGKILL 1 to 8 times at
random moments, restarting it each time, and then checks:

* every run succeeded and no task is left running;
* every table holds exactly the rows of the days loaded: none missing,
  none duplicated (the append table included).

Usage: chaos.py BIN DATABASE_URL [TRIALS] [SEED]
"""

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

BIN, DB = sys.argv[1], sys.argv[2]
TRIALS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
SEED = int(sys.argv[4]) if len(sys.argv) > 4 else 1
DAYS, ROWS = 6, 100_000


def psql(sql, schema=None):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    if schema:
        sql = f"SET search_path TO {schema}; {sql}"
    out = subprocess.run(["psql", DB, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return [l for l in out.stdout.splitlines() if l]


DAG = """
schedule: "@daily"
start_date: 2024-01-01
end_date: 2024-01-{last:02d}
catchup: true
max_active_runs: 2
default_args: {{ retries: 2, retry_delay: 1s }}
tasks:
  - id: rows
    type: extract
    source: "data/{{{{ ds }}}}.csv"
    schema: {{ id: int, day: date, v: int }}
  - {{ id: pause, type: shell, command: "sleep 0.3", depends_on: [rows] }}
  - {{ id: append, type: load, input: rows, conn: warehouse, table: append_t, mode: append, depends_on: [pause] }}
  - {{ id: replace, type: load, input: rows, conn: warehouse, table: "replace_{{{{ ds_nodash }}}}", mode: replace, create: true }}
  - {{ id: upsert, type: load, input: rows, conn: warehouse, table: upsert_t, mode: upsert, key: [id] }}
  - {{ id: partition, type: load, input: rows, conn: warehouse, table: part_t, mode: replace_partition, partition_column: day }}
  - {{ id: done, type: shell, command: "echo {{{{ ds }}}} >> done.txt", depends_on: [append, replace, upsert, partition] }}
"""


def trial(n, rng):
    state, wh = f"chaos_state_{n}", f"chaos_wh_{n}"
    psql(f"DROP SCHEMA IF EXISTS {state} CASCADE; DROP SCHEMA IF EXISTS {wh} CASCADE; CREATE SCHEMA {wh}")
    psql(
        "CREATE TABLE append_t (id bigint, day date, v bigint);"
        "CREATE TABLE upsert_t (id bigint PRIMARY KEY, day date, v bigint);"
        "CREATE TABLE part_t (id bigint, day date, v bigint);",
        wh,
    )
    proj = tempfile.mkdtemp(prefix=f"sluice-chaos-{n}-")
    os.makedirs(f"{proj}/dags")
    os.makedirs(f"{proj}/data")
    with open(f"{proj}/dags/chaos.yaml", "w") as f:
        f.write(DAG.format(last=DAYS))
    for d in range(1, DAYS + 1):
        with open(f"{proj}/data/2024-01-{d:02d}.csv", "w") as f:
            f.write("id,day,v\n")
            f.writelines(f"{d * 10_000_000 + i},2024-01-{d:02d},{i}\n" for i in range(ROWS))
    sep = "&" if "?" in DB else "?"
    env = dict(
        os.environ,
        SLUICE_DATABASE_URL=DB,
        SLUICE_SCHEMA=state,
        SLUICE_CONN_WAREHOUSE=f"{DB}{sep}options=-c%20search_path%3D{wh}",
        NO_COLOR="1",
    )
    log = open(f"{proj}/daemon.log", "ab")

    def start():
        return subprocess.Popen([BIN, "daemon", "--poll", "200ms", "--health-addr", "off", "-v"], cwd=proj, env=env, stdout=log, stderr=log)

    subprocess.run([BIN, "db", "migrate"], cwd=proj, env=env, check=True, capture_output=True)
    kills = rng.randint(1, 8)
    d = start()
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 2.5))
        d.send_signal(signal.SIGKILL)
        d.wait()
        d = start()
    deadline = time.time() + 600
    while time.time() < deadline:
        finished = psql("SELECT count(*) FROM dag_runs WHERE state IN ('success', 'failed')", state)
        if finished and int(finished[0]) == DAYS:
            break
        time.sleep(0.5)
    d.send_signal(signal.SIGTERM)
    d.wait()
    problems = []
    runs = psql("SELECT state, count(*) FROM dag_runs GROUP BY state", state)
    if runs != [f"success|{DAYS}"]:
        problems.append(f"runs: {runs}")
    running = psql("SELECT task_id FROM task_instances WHERE state = 'running'", state)
    if running:
        problems.append(f"left running: {running}")
    want = DAYS * ROWS
    for table in ["append_t", "upsert_t", "part_t"]:
        got = psql(f"SELECT count(*) || '|' || count(DISTINCT id) FROM {table}", wh)
        if got != [f"{want}|{want}"]:
            problems.append(f"{table}: rows|distinct {got}, expected {want}|{want}")
    for day in range(1, DAYS + 1):
        got = psql(f"SELECT count(*) || '|' || count(DISTINCT id) FROM replace_202401{day:02d}", wh)
        if got != [f"{ROWS}|{ROWS}"]:
            problems.append(f"replace_202401{day:02d}: {got}")
    lost = psql("SELECT count(*) FROM task_tries WHERE error_kind = 'worker_lost'", state)
    retried = psql("SELECT count(*) FROM task_tries WHERE state = 'failed' AND error_kind IS DISTINCT FROM 'worker_lost'", state)
    ok = not problems
    print(
        f"trial {n + 1:2d}: {kills} kill(s), {lost[0]} tries lost with their worker and requeued, {retried[0]} other failed tries: "
        + ("ok" if ok else "FAILED: " + "; ".join(problems)),
        flush=True,
    )
    if ok:
        subprocess.run(["rm", "-rf", proj])
        psql(f"DROP SCHEMA {state} CASCADE; DROP SCHEMA {wh} CASCADE")
    else:
        print(f"  kept {proj} and schemas {state}, {wh} for a look", flush=True)
    return ok


def main():
    rng = random.Random(SEED)
    results = [trial(n, rng) for n in range(TRIALS)]
    failed = results.count(False)
    print(f"{TRIALS - failed} of {TRIALS} trials passed")
    sys.exit(1 if failed else 0)


main()

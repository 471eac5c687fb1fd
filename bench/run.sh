#!/usr/bin/env bash
# Benchmarks, on a release build (never run in CI). Prints one JSON line per
# measurement and a summary; BENCHMARKS.md records the figures.
#
#   bench/run.sh            all workloads
#   bench/run.sh w2 w3      some of them
#
# W1 fan-out: 1 start task, 500 parallel `true` shell tasks, 1 join.
# W2 chain:   100 sequential `true` shell tasks.
# W3 load:    a 1,000,000-row orders CSV extracted and loaded into Postgres
#             by a sluice DAG (an extract then a load, and one extract
#             streaming `into` the table), against `psql \copy` of the same
#             file, same server; and the extract alone without a schema
#             (its types inferred in a first pass), and of the same rows as
#             NDJSON.
# grade:      the shipped grade_update DAG over 1,000,000 users and
#             10,000,000 orders (first grading, a rerun of the same interval,
#             the next ten-minute tick, and a tick after a day's orders were
#             reloaded).
# report:     the shipped weekly report (queries + PDF) with 1,000,000 orders
#             in the reported week, and with 1,000,000 orders over 13 weeks;
#             then, untimed, its numbers against the reference queries over
#             the orders (tests/data/kpi_from_orders).
# web:        the web UI's grid of 100 runs x 50 tasks, against its DAGs page
#             and a 404 page on the same server; the report dashboard for a
#             week of the demo's warehouse (runs `sluice demo` first).
# daemon:     100 DAGs scheduled every minute: scheduling delay (interval end
#             to first task start, the claim; and to its recorded end, which
#             bounds the command's start) over DAEMON_MINUTES minutes, then idle RSS
#             and CPU of a daemon holding 100 DAGs with nothing due.
# w1, daemon: also the floor under them: their commands alone, started by a
#             loop that does nothing else (bench/spawn_floor.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_packages
export_cargo_target
REPEAT="${REPEAT:-3}"
workloads=("$@")
[ ${#workloads[@]} -eq 0 ] && workloads=(w1 w2 w3 grade report web daemon)

# PROFILE=lto measures the smallest binary (Cargo.toml) instead; BIN=path
# measures a binary built before (another commit's, to compare two builds
# in turn on the same machine).
PROFILE="${PROFILE:-release}"
if [ -z "${BIN:-}" ]; then
    log "building sluice ($PROFILE)"
    cargo build --profile "$PROFILE" --locked -q --bins
    BIN="$CARGO_TARGET_DIR/$PROFILE/sluice"
fi

start_postgres /var/tmp/sluice-bench-pg  # not under $HOME: as root, postgres could not enter it
export SLUICE_DATABASE_URL="$PG_URL" SLUICE_SCHEMA="bench_state" SLUICE_CONN_WAREHOUSE="$PG_URL"
# The runs' state starts fresh (and migrated by this build).
psql "$PG_URL" -q -c "DROP SCHEMA IF EXISTS bench_state CASCADE" 2>/dev/null
work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
proj="$work/project"
mkdir -p "$proj/dags" "$proj/data"
export SLUICE_DAGS_DIR="$proj/dags"
ROOT="$(pwd)"
measure() { python3 "$ROOT/bench/measure.py" "$@"; }
median() { python3 -c 'import sys,statistics,json; v=[json.loads(l)[sys.argv[1]] for l in sys.stdin]; print(round(statistics.median(v),3))' "$1"; }

echo "# $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"

if [[ " ${workloads[*]} " == *" w1 "* ]]; then
    {
        echo "max_active_tasks: 32"
        echo "tasks:"
        echo "  - { id: start, type: shell, command: \"true\" }"
        for i in $(seq -w 0 499); do echo "  - { id: t$i, type: shell, command: \"true\", depends_on: [start] }"; done
        printf "  - { id: join, type: shell, command: \"true\", depends_on: ["
        seq -w 0 499 | sed 's/^/t/' | paste -sd, | tr -d '\n'
        echo "] }"
    } > "$proj/dags/w1_fanout.yaml"
    for _ in $(seq "$REPEAT"); do measure w1_fanout -- "$BIN" run w1_fanout --parallelism 32; done | tee "$work/w1.json"
    # The floor: W1's 502 commands alone, 32 at a time, nothing recorded.
    python3 bench/spawn_floor.py w1_commands_alone 502 32
fi

if [[ " ${workloads[*]} " == *" w2 "* ]]; then
    {
        echo "tasks:"
        echo "  - { id: t000, type: shell, command: \"true\" }"
        for i in $(seq 1 99); do printf "  - { id: t%03d, type: shell, command: \"true\", depends_on: [t%03d] }\n" "$i" "$((i - 1))"; done
    } > "$proj/dags/w2_chain.yaml"
    # The same run with one task: what a run costs whatever its size
    # (connecting, loading the DAG, creating the run, the summary).
    printf 'tasks:\n  - { id: t000, type: shell, command: "true" }\n' > "$proj/dags/w2_one.yaml"
    for _ in $(seq "$REPEAT"); do measure w2_chain -- "$BIN" run w2_chain; done | tee "$work/w2.json"
    for _ in $(seq "$REPEAT"); do measure w2_one_task -- "$BIN" run w2_one; done | tee "$work/w2_one.json"
    # The same chain with each command forked from the worker itself (no
    # spawner process): what the spawner saves.
    for _ in $(seq "$REPEAT"); do SLUICE_SPAWN=fork measure w2_chain_forked -- "$BIN" run w2_chain; done | tee "$work/w2_fork.json"
    spawn="$(python3 bench/spawn_baseline.py 100)"
    w2="$(median wall_s < "$work/w2.json")"
    one="$(median wall_s < "$work/w2_one.json")"
    # overhead_ms charges the whole run to its 100 tasks; marginal_ms is
    # what each further task in the chain adds, both beyond the spawn.
    python3 -c "import sys; w,o,s=map(float,sys.argv[1:]); print('{\"label\": \"w2_overhead_per_task_ms\", \"spawn_ms\": %.2f, \"overhead_ms\": %.2f, \"marginal_ms\": %.2f}' % (s*1000, (w/100-s)*1000, ((w-o)/99-s)*1000))" "$w2" "$one" "$spawn"
fi

if [[ " ${workloads[*]} " == *" w3 "* ]]; then
    csv="$proj/data/orders_1m.csv"
    log "generating 1,000,000 orders"
    python3 bench/gen_orders.py 1000000 "$csv"
    psql "$PG_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
DROP TABLE IF EXISTS w3_psql, w3_sluice, w3_stream;
-- No autovacuum: a vacuum of the rows one load wrote would run during the next.
CREATE TABLE w3_psql (order_id bigint, user_id bigint, product_id bigint, category text, quantity int,
                      amount numeric(12,2), status text, ordered_at timestamp) WITH (autovacuum_enabled = false);
CREATE TABLE w3_sluice (LIKE w3_psql) WITH (autovacuum_enabled = false);
CREATE TABLE w3_stream (LIKE w3_psql) WITH (autovacuum_enabled = false);
SQL
    cat > "$proj/dags/w3_load.yaml" <<'YAML'
tasks:
  - id: orders
    type: extract
    source: data/orders_1m.csv
    schema:
      order_id: int
      user_id: int
      product_id: int
      category: text
      quantity: int
      amount: decimal(12,2)
      status: text
      ordered_at: timestamp
  - { id: load, type: load, input: orders, conn: warehouse, table: w3_sluice, mode: replace }
YAML
    # The same extract streaming its rows into the table as it reads them.
    sed -e 's/^  - { id: load.*//' -e 's/^      ordered_at: timestamp$/&\n    into: { conn: warehouse, table: w3_stream, mode: replace }/' \
        "$proj/dags/w3_load.yaml" > "$proj/dags/w3_stream.yaml"
    # The extract alone, without a schema: its types inferred in a first pass.
    printf 'tasks:\n  - { id: orders, type: extract, source: data/orders_1m.csv }\n' > "$proj/dags/w3_infer.yaml"
    # The extract alone of the same rows as NDJSON (one object per line).
    python3 -c '
import csv, json, sys
ints = ("order_id", "user_id", "product_id", "quantity")
with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[2], "w", encoding="utf-8") as o:
    for row in csv.DictReader(f):
        o.write(json.dumps({k: int(v) if k in ints else v for k, v in row.items()}, ensure_ascii=False) + "\n")
' "$csv" "$proj/data/orders_1m.ndjson"
    sed -e 's#data/orders_1m.csv#data/orders_1m.ndjson\n    format: ndjson#' -e '/^  - { id: load/d' "$proj/dags/w3_load.yaml" > "$proj/dags/w3_ndjson.yaml"
    for _ in $(seq "$REPEAT"); do
        # Both load into an empty table (replace mode would otherwise pay a
        # DELETE of the previous iteration's million rows).
        psql "$PG_URL" -q -c "TRUNCATE w3_psql, w3_sluice, w3_stream"
        # Each load starts after a checkpoint: the WAL of the one before
        # (about 150 MB) would otherwise trigger one in the middle of a
        # load, whichever comes next.
        psql "$PG_URL" -q -c "CHECKPOINT"
        measure w3_psql_copy -- psql "$PG_URL" -q -c "\\copy w3_psql FROM '$csv' WITH (FORMAT csv, HEADER true)"
        psql "$PG_URL" -q -c "CHECKPOINT"
        measure w3_sluice -- "$BIN" run w3_load
        psql "$PG_URL" -q -c "CHECKPOINT"
        measure w3_stream -- "$BIN" run w3_stream
        measure w3_extract_inferred -- "$BIN" run w3_infer
        measure w3_extract_ndjson -- "$BIN" run w3_ndjson
    done | tee "$work/w3.json"
    # The same rows, value for value, whichever loaded them.
    for t in w3_sluice w3_stream; do
        test "$(psql "$PG_URL" -Atc "SELECT count(*) FROM $t")" = 1000000
        test "$(psql "$PG_URL" -Atc "SELECT (SELECT count(*) FROM (SELECT * FROM $t EXCEPT ALL SELECT * FROM w3_psql) a)
                                       + (SELECT count(*) FROM (SELECT * FROM w3_psql EXCEPT ALL SELECT * FROM $t) b)")" = 0
    done
    p="$(grep w3_psql "$work/w3.json" | median wall_s)"; s="$(grep '"w3_sluice"' "$work/w3.json" | median wall_s)"
    st="$(grep '"w3_stream"' "$work/w3.json" | median wall_s)"; inf="$(grep '"w3_extract_inferred"' "$work/w3.json" | median wall_s)"
    nd="$(grep '"w3_extract_ndjson"' "$work/w3.json" | median wall_s)"
    echo "{\"label\": \"w3_ratio\", \"psql_s\": $p, \"sluice_s\": $s, \"ratio\": $(python3 -c "print(round($s/$p, 2))"), \"stream_s\": $st, \"stream_ratio\": $(python3 -c "print(round($st/$p, 2))"), \"extract_inferred_s\": $inf, \"extract_ndjson_s\": $nd}"
fi

# A database of its own per workload, holding the shop warehouse (schema
# shop), generated by bench/shop_data.sql with the given psql variables. A
# database generated earlier with the same variables is reused (generating
# 10 million orders takes minutes); the grade runs reset what they change.
shop_db() {
    local db="$1"; shift
    SHOP_URL="${PG_URL%/*}/$db"
    local want; want="$( (printf '%s ' "$@"; cat bench/shop_data.sql sql/schema/warehouse.sql) | md5sum | cut -c1-12)"
    if [ "$(psql "$PG_URL" -Atc "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '$db'")" = "$want" ]; then
        log "reusing $db"
        return
    fi
    psql "$PG_URL" -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    log "generating $db: $*"
    psql "$SHOP_URL" -q "$@" -f bench/shop_data.sql >&2
    psql "$PG_URL" -q -c "COMMENT ON DATABASE $db IS '$want'"
}
# A copy of the shipped project (DAGs, SQL, report definition, config).
shipped_project() {
    rm -rf "$1" && mkdir -p "$1" && cp -r dags sql reports config "$1/"
}

if [[ " ${workloads[*]} " == *" grade "* ]]; then
    shop_db bench_grade -v users=1000000 -v orders=10000000 -v days=240 -v end_ts="'2026-11-16'" -v items=0 -v events_days=0
    shipped_project "$work/grade"
    (
        cd "$work/grade"
        export SLUICE_DAGS_DIR="$work/grade/dags" SLUICE_DATABASE_URL="$SHOP_URL" SLUICE_CONN_WAREHOUSE="$SHOP_URL"
        for _ in $(seq "$REPEAT"); do
            # Every round starts from ungraded customers and no grading state
            # (shop.grading: the reset is not a grade set by hand).
            psql "$SHOP_URL" -q -c "SET shop.grading = on" \
                -c "UPDATE shop.users SET grade = 'BRONZE', grade_updated_at = NULL WHERE grade <> 'BRONZE' OR grade_updated_at IS NOT NULL" \
                -c "TRUNCATE shop.grade_history, shop.grade_state, shop.grade_pending, shop.grade_dirty" -c "VACUUM ANALYZE shop.users, shop.orders"
            measure grade_first -- "$BIN" run grade_update --conf "as_of=2026-11-16 00:00:00"
            psql "$SHOP_URL" -Atc "SELECT 'grades after the first run: ' || string_agg(grade || '=' || n, ' ' ORDER BY grade) FROM (SELECT grade, count(*) n FROM shop.users GROUP BY grade) g" >&2
            h1="$(psql "$SHOP_URL" -Atc 'SELECT count(*) FROM shop.grade_history')"
            # What autovacuum does after 446,719 updated users, well inside
            # the ten minutes before the next tick; here it would run during
            # the measurements.
            psql "$SHOP_URL" -q -c "VACUUM ANALYZE shop.users, shop.grade_history"
            measure grade_rerun_same_interval -- "$BIN" run grade_update --conf "as_of=2026-11-16 00:00:00"
            test "$(psql "$SHOP_URL" -Atc 'SELECT count(*) FROM shop.grade_history')" = "$h1"
            measure grade_next_tick -- "$BIN" run grade_update --conf "as_of=2026-11-16 00:10:00"
            # The next tick after the ETL reloaded a day: its triggers mark
            # every customer with an order that day, as here. (Reloading the
            # day itself would also scatter dead rows over the whole table,
            # since the generator does not write orders in time order as an
            # ETL does; the tick would then measure the visibility map.)
            psql "$SHOP_URL" -q -c "INSERT INTO shop.grade_dirty SELECT DISTINCT user_id FROM shop.orders WHERE ordered_at >= '2026-11-15' AND ordered_at < '2026-11-16'"
            echo "customers marked by the reload of a day: $(psql "$SHOP_URL" -Atc 'SELECT count(*) FROM shop.grade_dirty')" >&2
            measure grade_tick_after_a_day_reloaded -- "$BIN" run grade_update --conf "as_of=2026-11-16 00:20:00"
            psql "$SHOP_URL" -Atc "SELECT 'last grading: everyone=' || everyone || ' candidates=' || candidates FROM shop.grade_state" >&2
        done
    ) | tee "$work/grade.json"
fi

if [[ " ${workloads[*]} " == *" report "* ]]; then
    shipped_project "$work/report"
    for shape in week:7:2000000:14 quarter:0:1000000:91; do
        IFS=: read -r name _ orders days <<< "$shape"
        shop_db "bench_report_$name" -v users=200000 -v orders="$orders" -v days="$days" -v end_ts="'2026-11-16'" -v items=1 -v events_days=7
        in_week="$(psql "$SHOP_URL" -Atc "SELECT count(*) FROM shop.orders WHERE ordered_at >= '2026-11-09' AND ordered_at < '2026-11-16'")"
        total="$(psql "$SHOP_URL" -Atc "SELECT count(*) FROM shop.orders")"
        echo "report_$name: $total orders in the warehouse, $in_week in the reported week" >&2
        (
            cd "$work/report"
            export SLUICE_DAGS_DIR="$work/report/dags" SLUICE_DATABASE_URL="$SHOP_URL" SLUICE_CONN_WAREHOUSE="$SHOP_URL"
            for _ in $(seq "$REPEAT"); do measure "report_$name" -- "$BIN" tasks test weekly_report weekly_report --date 2026-11-09; done
        ) | tee -a "$work/report.json"
        pdfinfo "$work/report/reports/out/weekly_kpi_2026-W46.pdf" | grep -E "Pages|File size" >&2
        # The numbers (not timed): the same report from the reference
        # queries over the orders (tests/data/kpi_from_orders, as
        # tests/integration/kpi.rs) must show the same sections.
        (
            cd "$work/report"
            export SLUICE_DAGS_DIR="$work/report/dags" SLUICE_DATABASE_URL="$SHOP_URL" SLUICE_CONN_WAREHOUSE="$SHOP_URL"
            out=reports/out/weekly_kpi_2026-W46.json
            cp "$out" "$work/report_aggregates.json"
            psql "$SHOP_URL" -q -f "$ROOT/tests/data/rfm_at_from_orders.sql"
            cp -r sql/kpi "$work/kpi_shipped"
            cp "$ROOT"/tests/data/kpi_from_orders/* sql/kpi/
            "$BIN" tasks test weekly_report weekly_report --date 2026-11-09 > /dev/null 2>&1
            rm -rf sql/kpi && cp -r "$work/kpi_shipped" sql/kpi && rm -rf "$work/kpi_shipped"
            python3 - "$work/report_aggregates.json" "$out" <<'PY'
import json, sys
def sections(path):
    # The pipeline's section counts the report's own runs.
    return [s for s in json.load(open(path))["sections"] if not str(s.get("title", "")).startswith("파이프라인")]
a, o = sections(sys.argv[1]), sections(sys.argv[2])
bad = [x.get("title") for x, y in zip(a, o) if x != y]
if len(a) != len(o) or bad:
    sys.exit(f"the report's numbers differ from the reference queries' over the orders: {bad or 'section count'}")
print(f"report numbers: {len(a)} sections the same as from the orders", file=sys.stderr)
PY
        )
    done
fi

if [[ " ${workloads[*]} " == *" daemon "* ]]; then
    minutes="${DAEMON_MINUTES:-5}"
    export SLUICE_SCHEMA=bench_daemon
    psql "$PG_URL" -q -c "DROP SCHEMA IF EXISTS bench_daemon CASCADE" 2>/dev/null
    dd="$work/daemon/dags"
    mkdir -p "$dd"
    start="$(date -u +%Y-%m-%dT%H:%M:00Z)"
    for i in $(seq -w 0 99); do
        printf "schedule: '* * * * *'\nstart_date: '%s'\ntasks:\n  - { id: a, type: shell, command: 'true' }\n" "$start" > "$dd/every_minute_$i.yaml"
    done
    log "100 DAGs every minute for $minutes minutes"
    SLUICE_DAGS_DIR="$dd" "$BIN" daemon --health-addr off 2> "$work/daemon.log" &
    pid=$!
    sleep $((minutes * 60 + 5))
    kill -TERM "$pid"; wait "$pid"
    psql "$PG_URL" -At <<'SQL'
SELECT json_build_object('label', 'daemon_scheduling_delay', 'runs', count(*),
       'p50_ms', round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY d)),
       'p99_ms', round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY d)),
       'max_ms', round(1000 * max(d)),
       'ended_p50_ms', round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY e)),
       'ended_p99_ms', round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY e)))
FROM (SELECT extract(epoch FROM min(t.started_at) - r.data_interval_end) AS d,
             extract(epoch FROM min(t.ended_at) - r.data_interval_end) AS e
      FROM bench_daemon.dag_runs r JOIN bench_daemon.task_instances t USING (run_id)
      WHERE r.run_type = 'scheduled' GROUP BY r.run_id, r.data_interval_end) x;
SQL
    # The floor: a minute's 100 commands alone, started at once.
    python3 bench/spawn_floor.py daemon_commands_alone 100 100
    # Idle: the same 100 DAGs on a yearly schedule, nothing due.
    sed -i "s/'\* \* \* \* \*'/'0 0 1 1 *'/" "$dd"/*.yaml
    SLUICE_DAGS_DIR="$dd" "$BIN" daemon --health-addr off 2>> "$work/daemon.log" &
    pid=$!
    sleep 15
    ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
    t0="$(ticks)"; sleep 60; t1="$(ticks)"
    rss="$(awk '/VmRSS/{print $2}' "/proc/$pid/status")"; hwm="$(awk '/VmHWM/{print $2}' "/proc/$pid/status")"
    kill -TERM "$pid"; wait "$pid"
    python3 -c "import sys,os; t0,t1,rss,hwm=map(int,sys.argv[1:]); hz=os.sysconf('SC_CLK_TCK'); print('{\"label\": \"daemon_idle_100_dags\", \"cpu_percent\": %.2f, \"rss_mb\": %.1f, \"peak_rss_mb\": %.1f}' % (100*(t1-t0)/hz/60, rss/1024, hwm/1024))" "$t0" "$t1" "$rss" "$hwm"
fi

if [[ " ${workloads[*]} " == *" web "* ]]; then
    # The grid of a DAG with 100 runs x 50 tasks: runs and task instances
    # written straight into the state store, then the page fetched 20 times
    # by curl (server time ~ total time on loopback); the DAGs page and a
    # 404 page of the same server as references.
    {
        echo "tasks:"
        echo "  - { id: t00, type: shell, command: \"true\" }"
        for i in $(seq -w 1 49); do printf "  - { id: t%s, type: shell, command: \"true\", depends_on: [t%02d] }\n" "$i" $((10#$i - 1)); done
    } > "$proj/dags/web_grid.yaml"
    # A fresh state schema: one migrated by another build of sluice may
    # not match this one's migrations.
    psql "$PG_URL" -q -c "DROP SCHEMA IF EXISTS bench_web CASCADE" 2>/dev/null
    SLUICE_SCHEMA=bench_web "$BIN" db migrate
    psql "$PG_URL" -q <<'SQL'
SET search_path = bench_web;
DELETE FROM dag_runs WHERE dag_id = 'web_grid';
INSERT INTO dag_runs (dag_id, run_type, logical_date, data_interval_start, data_interval_end, state, started_at, ended_at)
SELECT 'web_grid', 'scheduled', d, d, d + interval '1 day', 'success', d + interval '1 day', d + interval '1 day 10 minutes'
FROM generate_series(timestamptz '2024-01-01', timestamptz '2024-01-01' + interval '99 days', interval '1 day') d;
INSERT INTO task_instances (run_id, task_id, state, try_number, max_tries, started_at, ended_at)
SELECT r.run_id, 't' || lpad(i::text, 2, '0'), (ARRAY['success','failed','skipped','upstream_failed'])[1 + (i + r.run_id::int) % 4], 1, 1,
       r.started_at + i * interval '10 seconds', r.started_at + (i + 1) * interval '10 seconds'
FROM dag_runs r CROSS JOIN generate_series(0, 49) i WHERE r.dag_id = 'web_grid';
SQL
    SLUICE_SCHEMA=bench_web "$BIN" web --addr 127.0.0.1:18080 2> "$work/web.log" &
    pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.2; done
    for page in "dags/web_grid/grid?runs=100" "" "no-such-page"; do
        curl -s -o /dev/null "http://127.0.0.1:18080/$page"  # warm
        for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:18080/$page"; done \
            | python3 -c "import sys,statistics,json; v=[float(l) for l in sys.stdin]; print(json.dumps({'label': 'web /$page', 'median_ms': round(1000*statistics.median(v),1), 'max_ms': round(1000*max(v),1)}))"
    done
    kill -TERM "$pid"; wait "$pid" || true

    # The report dashboard for a week of the demo's warehouse: `sluice demo`
    # (90 days of exports through the shipped DAGs) in a database of its
    # own, then the dashboard page of its last full week fetched 5 times,
    # against the DAGs page of the same server.
    demo_url="${PG_URL%/*}/bench_demo"
    psql "$PG_URL" -q -c "DROP DATABASE IF EXISTS bench_demo" -c "CREATE DATABASE bench_demo" 2>/dev/null
    shipped_project "$work/demo"
    (
        cd "$work/demo"
        export SLUICE_DAGS_DIR="$work/demo/dags" SLUICE_DATABASE_URL="$demo_url" SLUICE_CONN_WAREHOUSE="$demo_url" SLUICE_SCHEMA=sluice
        log "sluice demo (for the dashboard)"
        "$BIN" demo > "$work/demo.log" 2>&1
        "$BIN" web --addr 127.0.0.1:18081 2> "$work/web_demo.log" &
        pid=$!
        for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18081/ && break; sleep 0.2; done
        for page in "reports/weekly_report/weekly_report" ""; do
            test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18081/$page")" = 200  # warm, and it works
            for _ in $(seq 5); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:18081/$page"; done \
                | python3 -c "import sys,statistics,json; v=[float(l) for l in sys.stdin]; print(json.dumps({'label': 'web demo /$page', 'median_ms': round(1000*statistics.median(v),1), 'min_ms': round(1000*min(v),1), 'max_ms': round(1000*max(v),1)}))"
        done
        # The page shows the report's numbers (a KPI card's heading).
        curl -s "http://127.0.0.1:18081/reports/weekly_report/weekly_report" | grep -q "<svg"
        kill -TERM "$pid"; wait "$pid" || true
    )
fi

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
#             by a sluice DAG, against `psql \copy` of the same file, same server.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_packages
export_cargo_target
REPEAT="${REPEAT:-3}"
workloads=("$@")
[ ${#workloads[@]} -eq 0 ] && workloads=(w1 w2 w3)

log "building sluice (release)"
cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/sluice"

start_postgres "$SLUICE_CACHE/bench-pg"
export SLUICE_DATABASE_URL="$PG_URL" SLUICE_SCHEMA="bench_state" SLUICE_CONN_WAREHOUSE="$PG_URL"
work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
proj="$work/project"
mkdir -p "$proj/dags" "$proj/data"
export SLUICE_DAGS_DIR="$proj/dags"
measure() { python3 bench/measure.py "$@"; }
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
fi

if [[ " ${workloads[*]} " == *" w2 "* ]]; then
    {
        echo "tasks:"
        echo "  - { id: t000, type: shell, command: \"true\" }"
        for i in $(seq 1 99); do printf "  - { id: t%03d, type: shell, command: \"true\", depends_on: [t%03d] }\n" "$i" "$((i - 1))"; done
    } > "$proj/dags/w2_chain.yaml"
    for _ in $(seq "$REPEAT"); do measure w2_chain -- "$BIN" run w2_chain; done | tee "$work/w2.json"
    spawn="$(python3 bench/spawn_baseline.py 100)"
    w2="$(median wall_s < "$work/w2.json")"
    python3 -c "import sys; w,s=float(sys.argv[1]),float(sys.argv[2]); print('{\"label\": \"w2_overhead_per_task_ms\", \"spawn_ms\": %.2f, \"overhead_ms\": %.2f}' % (s*1000, (w/100-s)*1000))" "$w2" "$spawn"
fi

if [[ " ${workloads[*]} " == *" w3 "* ]]; then
    csv="$proj/data/orders_1m.csv"
    log "generating 1,000,000 orders"
    python3 bench/gen_orders.py 1000000 "$csv"
    psql "$PG_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
DROP TABLE IF EXISTS w3_psql, w3_sluice;
CREATE TABLE w3_psql (order_id bigint, user_id bigint, product_id bigint, category text, quantity int,
                      amount numeric(12,2), status text, ordered_at timestamp);
CREATE TABLE w3_sluice (LIKE w3_psql);
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
    for _ in $(seq "$REPEAT"); do
        psql "$PG_URL" -q -c "TRUNCATE w3_psql"
        measure w3_psql_copy -- psql "$PG_URL" -q -c "\\copy w3_psql FROM '$csv' WITH (FORMAT csv, HEADER true)"
        measure w3_sluice -- "$BIN" run w3_load
    done | tee "$work/w3.json"
    test "$(psql "$PG_URL" -Atc 'SELECT count(*) FROM w3_sluice')" = 1000000
    test "$(psql "$PG_URL" -Atc 'SELECT sum(amount) FROM w3_sluice')" = "$(psql "$PG_URL" -Atc 'SELECT sum(amount) FROM w3_psql')"
    p="$(grep w3_psql "$work/w3.json" | median wall_s)"; s="$(grep w3_sluice "$work/w3.json" | median wall_s)"
    echo "{\"label\": \"w3_ratio\", \"psql_s\": $p, \"sluice_s\": $s, \"ratio\": $(python3 -c "print(round($s/$p, 2))")}"
fi

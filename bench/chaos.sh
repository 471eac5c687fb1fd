#!/usr/bin/env bash
# The kill -9 chaos test: 20 trials (or $1) of a daily ETL in every load
# mode under `sluice daemon`, killed with SIGKILL 1 to 8 times at random
# moments. Every trial must end with every run `success`, no task left
# running, and no row missing or duplicated in any table. Too slow for CI
# (about a minute a trial); a reviewer runs it with:
#
#   bench/chaos.sh [TRIALS] [SEED]
#
# It uses the dev build that scripts/test.sh makes (SLUICE_BIN to choose
# another) and a private PostgreSQL on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_packages
export_cargo_target
if [ -z "${SLUICE_BIN:-}" ]; then
    log "building sluice (dev profile, shared with the tests)"
    cargo build --locked -q
    SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
fi
start_postgres /var/tmp/sluice-chaos-pg "-c fsync=off"
log "PostgreSQL at $PG_URL; $(basename "$SLUICE_BIN") from $SLUICE_BIN"
python3 bench/chaos.py "$SLUICE_BIN" "$PG_URL" "${1:-20}" "${2:-1}"

#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts a private
# PostgreSQL, an S3 server, an SMTP server and ChromeDriver (headless
# Chromium) on loopback, runs every test
# against them (one dev build), and stops them. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh validate`); without them, the code
# is first checked with `cargo fmt --check` and `cargo clippy -D warnings`.
#
# `scripts/test.sh --services` only starts the servers (in /var/tmp/sluice-
# dev-services, kept running) and writes an env file to source before
# running `cargo test` yourself while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

ensure_packages
ensure_python_tools
export_cargo_target

if [ "${1:-}" = "--services" ]; then
    work=/var/tmp/sluice-dev-services  # reachable by the postgres user
    mkdir -p "$work" && chmod 755 "$work"
    start_postgres "$work/pg" "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [ -f "$work/pids" ] && kill $(cat "$work/pids") 2>/dev/null || true
    start_s3 "$work"
    start_smtp "$work"
    start_webdriver "$work"
    echo "$S3_PID $SMTP_PID $WEBDRIVER_PID" > "$work/pids"
    cat > "$work/env" <<ENV
export SLUICE_TEST_DATABASE_URL=$PG_URL
export SLUICE_TEST_S3_ENDPOINT=$S3_ENDPOINT
export SLUICE_TEST_SMTP_PORT=$SMTP_PORT
export SLUICE_TEST_MAILDIR=$work/Maildir
export SLUICE_TEST_PYTHON=$PYVENV/bin/python
export SLUICE_TEST_WEBDRIVER=$WEBDRIVER_URL
export CARGO_TARGET_DIR=$CARGO_TARGET_DIR
ENV
    log "servers running; now: . $work/env && cargo test"
    exit 0
fi

if [ $# -eq 0 ]; then
    ensure_rust_tools
    log "cargo fmt --check"
    cargo fmt --check
    log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --locked --all-targets -- -D warnings
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-test.XXXXXX")"
chmod 755 "$work"
cleanup() {
    stop_postgres "$work/pg"
    [ -n "${S3_PID:-}" ] && kill "$S3_PID" 2>/dev/null
    [ -n "${SMTP_PID:-}" ] && kill "$SMTP_PID" 2>/dev/null
    [ -n "${WEBDRIVER_PID:-}" ] && kill "$WEBDRIVER_PID" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

log "starting PostgreSQL, S3 and SMTP servers under $work"
start_postgres "$work/pg" "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
start_s3 "$work"
start_smtp "$work"
start_webdriver "$work"

export SLUICE_TEST_DATABASE_URL="$PG_URL"
export SLUICE_TEST_S3_ENDPOINT="$S3_ENDPOINT"
export SLUICE_TEST_SMTP_PORT="$SMTP_PORT"
export SLUICE_TEST_MAILDIR="$work/Maildir"
export SLUICE_TEST_PYTHON="$PYVENV/bin/python"
export SLUICE_TEST_WEBDRIVER="$WEBDRIVER_URL"

log "cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --locked "$@"

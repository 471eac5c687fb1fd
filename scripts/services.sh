#!/usr/bin/env bash
# Shared by scripts/test.sh, scripts/demo.sh and bench/: installs what a
# fresh Debian/Ubuntu machine lacks and starts private services on loopback.
# Source it; every function is idempotent.

SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
mkdir -p "$SLUICE_CACHE"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

# Debian packages the tests and the demo need.
ensure_packages() {
    local missing=()
    command -v psql >/dev/null || missing+=(postgresql-client)
    ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v pdftotext >/dev/null || missing+=(poppler-utils)
    command -v dot >/dev/null || missing+=(graphviz)
    [ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || missing+=(fonts-nanum)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    # Headless Chromium and its WebDriver, for the web UI's browser test.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# A Python venv with the S3 and SMTP test servers.
ensure_python_tools() {
    local venv="$SLUICE_CACHE/venv"
    if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/aiosmtpd" ]; then
        log "installing moto (S3 server) and aiosmtpd (SMTP server) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]' aiosmtpd
    fi
    PYVENV="$venv"
}

# rustfmt and clippy, which rustup's minimal profile leaves out.
ensure_rust_tools() {
    for c in rustfmt clippy; do
        if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
            log "installing the $c component (rustup component add $c)"
            rustup component add "$c"
        fi
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

# Starts a private PostgreSQL cluster in $1 (created if missing) on a free
# port, as the postgres user when running as root (initdb refuses root).
# Sets PG_URL and PG_DIR. Pass fsync=off for throwaway test clusters.
start_postgres() {
    local dir="$1" extra="${2:-}" bin; bin="$(pg_bin)"
    local run=()
    if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
        chmod 700 "$dir"
        "${run[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if "${run[@]}" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        PG_PORT="$(sed -n 4p "$dir/postmaster.pid")"
    else
        PG_PORT="$(free_port)"
        "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
            -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 $extra" start >/dev/null
    fi
    PG_DIR="$dir"
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_postgres() {
    local dir="$1" run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$(pg_bin)/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true
}

# moto_server on a free port. Sets S3_ENDPOINT and S3_PID.
start_s3() {
    local port; port="$(free_port)"
    "$PYVENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$1/moto.log" 2>&1 &
    S3_PID=$!
    S3_ENDPOINT="http://127.0.0.1:$port"
    for _ in $(seq 100); do curl -fs "$S3_ENDPOINT" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "the S3 server did not start; see $1/moto.log" >&2; return 1
}

# aiosmtpd saving every message under $1/Maildir/new. Sets SMTP_PORT, SMTP_PID.
start_smtp() {
    local port; port="$(free_port)"
    mkdir -p "$1/Maildir/tmp" "$1/Maildir/new" "$1/Maildir/cur"
    "$PYVENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$port" -c aiosmtpd.handlers.Mailbox "$1/Maildir" >"$1/smtp.log" 2>&1 &
    SMTP_PID=$!
    SMTP_PORT="$port"
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "the SMTP server did not start; see $1/smtp.log" >&2; return 1
}

# ChromeDriver on loopback: the browser test drives headless Chromium
# through it (W3C WebDriver, plain HTTP).
start_webdriver() {
    local port; port="$(free_port)"
    chromedriver --port="$port" --allowed-ips=127.0.0.1 >"$1/chromedriver.log" 2>&1 &
    WEBDRIVER_PID=$!
    WEBDRIVER_URL="http://127.0.0.1:$port"
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "ChromeDriver did not start; see $1/chromedriver.log" >&2; return 1
}

export_cargo_target() {
    # Outside the clone, so repeated runs on one machine build incrementally.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLUICE_CACHE/target}"
}

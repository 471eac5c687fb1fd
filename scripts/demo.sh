#!/usr/bin/env bash
# The README's first command: installs what a fresh Debian/Ubuntu machine
# lacks, builds sluice (the same dev build the tests use), and runs the
# shop's whole job with `sluice demo`. Extra arguments go to `sluice demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_packages
export_cargo_target
log "building sluice (first build: about 20 minutes on two cores)"
cargo build --locked
exec "$CARGO_TARGET_DIR/debug/sluice" demo "$@"

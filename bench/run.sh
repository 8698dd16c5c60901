#!/usr/bin/env bash
# The one way to benchmark: builds the workspace, installs the load tools
# when missing, runs fn-bench and writes bench/RESULTS.md and
# bench/results.json.
#
#   bench/run.sh            full run (12-25 minutes, includes --capacity and
#                           --evicted 10000)
#   bench/run.sh --quick    smoke run (about 3 minutes)
#
# Other arguments go to fn-bench (`fn-bench --help`), e.g. `--repeat 5`.
# `--no-build` skips the build and measures the binaries already in the
# target dir (the report records the command, so it shows).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
# The one target dir every build on this machine shares: any other would
# compile deno_runtime again (~40 minutes).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fnrt-target}"

quick=0
build=1
pass=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1; pass+=("$arg") ;;
    --no-build) build=0 ;;
    *) pass+=("$arg") ;;
  esac
done

log() { echo "[run.sh] $*" >&2; }

if [ "$build" = 1 ]; then
  log "cargo build --release --workspace (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$root" && cargo build --release --workspace)
fi

if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

find_deno() {
  python3 -c 'import deno; print(deno.find_deno_bin())' 2>/dev/null
}
deno_args=()
if deno_bin="$(find_deno)" || { log "installing deno from PyPI"; python3 -m pip install --quiet deno >&2 && deno_bin="$(find_deno)"; }; then
  deno_args=(--deno "$deno_bin")
elif command -v deno >/dev/null 2>&1; then
  deno_args=(--deno "$(command -v deno)")
else
  log "no deno: the seed columns will be empty"
fi

# The capacity run keeps thousands of workers, each holding about ten of
# the supervisor's descriptors (as the systemd unit's LimitNOFILE allows).
ulimit -n 65536 2>/dev/null || log "cannot raise the open-file limit; capacity may stop early"

extra=()
if [ "$quick" = 0 ]; then
  extra+=(--capacity --evicted 10000)
fi

cd "$root"
exec "$CARGO_TARGET_DIR/release/fn-bench" \
  --bin-dir "$CARGO_TARGET_DIR/release" \
  --seed-script "$here/peers/seed.ts" \
  --markdown "$here/RESULTS.md" \
  --json "$here/results.json" \
  --command "bench/run.sh${*:+ $*}" \
  "${deno_args[@]}" "${extra[@]}" "${pass[@]}"

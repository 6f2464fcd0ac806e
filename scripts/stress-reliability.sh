#!/usr/bin/env bash
# The flake count: the whole reliability suite (test/reliability) run again and again with both cores kept
# busy by stress-ng, as a loaded CI machine would. A test that waits for a guessed time instead of a
# condition fails here sooner or later; the goal is 0 failed runs.
#
# Usage: scripts/stress-reliability.sh [runs] [logdir]
#   runs    how many suite runs (default 20)
#   logdir  where each failed run's vitest output is kept (default a new directory under /tmp)
# Installs stress-ng with apt-get when it is missing (needs root then). Builds dist/ once first. Prints one
# line per run and a summary line: "flake count: <failed> of <runs> runs (<seconds> s)". Exit 1 if any run
# failed. stress-ng is stopped on every exit path, by its pid.
set -euo pipefail

readonly runs="${1:-20}"
readonly logdir="${2:-$(mktemp -d /tmp/payload-cache-stress-XXXXXX)}"
readonly repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v stress-ng >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "stress-reliability: stress-ng is missing and only root can apt-get it" >&2
    exit 2
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null
fi

cd "$repo"
npm run build --silent
mkdir -p "$logdir"

# One CPU hog per core: the suite's processes then compete for every core, all the time.
stress-ng --cpu "$(nproc)" --quiet &
readonly stress_pid=$!
trap 'kill "$stress_pid" 2>/dev/null || true; wait "$stress_pid" 2>/dev/null || true' EXIT

failed=0
started=$SECONDS
for ((run = 1; run <= runs; run++)); do
  log="$logdir/run-$run.log"
  run_started=$SECONDS
  if npx vitest run test/reliability >"$log" 2>&1; then
    echo "run $run: passed ($((SECONDS - run_started)) s)"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "run $run: FAILED ($((SECONDS - run_started)) s), output in $log"
    grep -E 'FAIL|AssertionError|Error:' "$log" | head -5 | sed 's/^/    /' || true
  fi
done
echo "flake count: $failed of $runs runs ($((SECONDS - started)) s, stress-ng --cpu $(nproc))"
[[ $failed -eq 0 ]]

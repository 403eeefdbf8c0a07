#!/usr/bin/env bash
# How long the README's demo takes from a fresh clone: set-up (a new venv, torch,
# trainmap), training both experiments, fitting both, until the dashboard answers.
#
# Usage: bench/demo_time.sh [extra trainmap demo arguments]
# A benchmark, not a test: it prints wall times and the load average (uptime)
# before and after, because other jobs on the machine change the result. It
# clones the committed HEAD of this repository into a temporary directory and
# removes everything it made when done.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
PORT="${PORT:-8097}"
trap 'rm -rf "$WORK"' EXIT

git clone --quiet "$REPO" "$WORK/trainmap"
cd "$WORK/trainmap"
export TRAINMAP_VENV="$WORK/venv"
echo "commit $(git rev-parse --short HEAD), $(nproc) cores"
echo "before: $(uptime)"

start=$(date +%s.%N)
scripts/setup.sh > "$WORK/setup.log" 2>&1
setup_done=$(date +%s.%N)

# the demo itself, in its own process group so it can be stopped whole
setsid scripts/demo.sh --root "$WORK/runs" --port "$PORT" "$@" > "$WORK/demo.log" 2>&1 &
demo=$!
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do
    if ! kill -0 "$demo" 2> /dev/null; then
        echo "the demo stopped before serving:"; tail -20 "$WORK/demo.log"; exit 1
    fi
    sleep 0.5
done
serving=$(date +%s.%N)
kill -- -"$demo"
wait "$demo" 2> /dev/null || true

echo "after:  $(uptime)"
# the demo's own summary, without the progress bars
tr '\r' '\n' < "$WORK/demo.log" | grep -E '^(\[|      )' | grep -v -E 'it/s|s/it' || true
awk -v a="$start" -v b="$setup_done" -v c="$serving" 'BEGIN {
    printf "set-up (venv, torch, trainmap): %6.1f s\n", b - a
    printf "demo until the dashboard answers: %6.1f s\n", c - b
    printf "total from a fresh clone:       %6.1f s\n", c - a
}'

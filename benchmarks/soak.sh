#!/usr/bin/env bash
# Soak: the whole suite, N times in a row, each on a fresh clone through .ci/run, while the README's
# demo sweep loops in another clone on a fresh store each time. It stops at the first red pass,
# since "in a row" means none failed. Needs root for .ci/run's apt-get, as CI does.
#
#   bash benchmarks/soak.sh [PASSES] [WORKDIR]     # defaults: 3, /tmp/soak
#
# It prints one line per pass (exit status, minutes, pytest's summary) and one for the load (sweeps
# run, sweeps that failed, FAILED runs). The logs stay in WORKDIR: pass_K.log, load.log.
set -uo pipefail
passes=${1:-3}
work=${2:-/tmp/soak}
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse --short HEAD)
rm -rf "$work" && mkdir -p "$work"

# The load: the README's first command, in its own clone and venv, on a fresh store every time,
# so each sweep pays a new store's migrations as a new user's would.
git clone --quiet "$repo" "$work/load"
(cd "$work/load" && python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[dev]") > "$work/load.log" 2>&1
load_loop() {
    cd "$work/load" || exit 1
    local sweep=0
    while [[ ! -e "$work/STOP" ]]; do
        sweep=$((sweep + 1))
        rm -rf mlflow.db mlflow.db-* mlruns multirun outputs
        if .venv/bin/python -m simpsons.train -m experiment=demo >> "$work/load.log" 2>&1; then
            echo "load sweep $sweep: exit 0" >> "$work/load.status"
        else
            echo "load sweep $sweep: exit $?" >> "$work/load.status"
        fi
        # Runs a sweep left FAILED, counted from the store itself, not from the console.
        .venv/bin/python -c "import sqlite3; print(sqlite3.connect('mlflow.db').execute(
            \"select count(*) from runs where status = 'FAILED'\").fetchone()[0])" 2>/dev/null \
            | sed "s/^/load sweep $sweep: FAILED runs /" >> "$work/load.status"
    done
}
load_loop &
load_pid=$!
trap 'touch "$work/STOP"; wait "$load_pid" 2>/dev/null' EXIT

echo "soak at $commit: $passes passes of .ci/run on fresh clones of $repo, under the demo sweep's load"
for pass in $(seq 1 "$passes"); do
    clone="$work/pass_$pass"
    git clone --quiet "$repo" "$clone"
    start=$(date +%s)
    (cd "$clone" && .ci/run) > "$work/pass_$pass.log" 2>&1
    status=$?
    minutes=$(( ($(date +%s) - start) / 60 ))
    summary=$(grep -E "^=+ .*(passed|failed|error).* =+$" "$work/pass_$pass.log" | tail -1)
    echo "pass $pass: exit $status in $minutes min: $summary"
    rm -rf "$clone"  # 1-2 GB of venv each
    ((status == 0)) || break
done
touch "$work/STOP"
wait "$load_pid"
sweeps=$(grep -c ": exit" "$work/load.status" 2>/dev/null || echo 0)
failed_sweeps=$(grep ": exit" "$work/load.status" 2>/dev/null | grep -vc "exit 0$")
failed_runs=$(awk '/FAILED runs/ {n += $NF} END {print n + 0}' "$work/load.status" 2>/dev/null)
echo "load: $sweeps demo sweeps, $failed_sweeps exited non-zero, $failed_runs FAILED runs"

#!/usr/bin/env bash
# Soak: the whole suite, N times in a row, each on a fresh clone through .ci/run, while the README's
# demo sweep loops in another clone on a fresh store each time. It stops at the first red pass,
# since "in a row" means none failed. Needs root for .ci/run's apt-get, as CI does.
#
#   bash benchmarks/soak.sh [PASSES] [WORKDIR]     # defaults: 3, /tmp/soak
#
# It prints one line per pass (exit status, minutes, pytest's summary) and one for the load (sweeps
# run, sweeps that failed, FAILED runs), and exits 1 if a pass or a load sweep failed. The logs stay
# in WORKDIR: pass_K.log, load.log, load.status. The clones see ../shared as the project does, so
# the tests that need its images and weights run too.
set -uo pipefail
passes=${1:-3}
work=${2:-/tmp/soak}
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse --short HEAD)
unset MLFLOW_TRACKING_URI  # the load's sweeps and their count are on the clone's own new store
if [[ -e "$work" && ! -e "$work/.soak" ]]; then
    echo "error: $work exists and is no soak's folder; give another WORKDIR" >&2
    exit 2
fi
rm -rf "$work" && mkdir -p "$work" && touch "$work/.soak"
[[ -d "$repo/../shared" ]] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"

# The load: the README's first command, in its own clone and venv, on a fresh store every time,
# so each sweep pays a new store's migrations as a new user's would.
git clone --quiet "$repo" "$work/load"
if ! (cd "$work/load" && python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[dev]") > "$work/load.log" 2>&1; then
    echo "error: the load's install failed; see $work/load.log" >&2
    exit 1
fi
load_loop() {
    cd "$work/load" || exit 1
    local sweep=0 failed_in_a_row=0
    while [[ ! -e "$work/STOP" ]]; do
        sweep=$((sweep + 1))
        rm -rf mlflow.db mlflow.db-* mlruns multirun outputs
        if .venv/bin/python -m simpsons.train -m experiment=demo >> "$work/load.log" 2>&1; then
            echo "load sweep $sweep: exit 0" >> "$work/load.status"
            failed_in_a_row=0
        else
            echo "load sweep $sweep: exit $?" >> "$work/load.status"
            failed_in_a_row=$((failed_in_a_row + 1))
            ((failed_in_a_row < 3)) || { echo "load: 3 sweeps failed in a row; see load.log" >> "$work/load.status"; break; }
        fi
        # Runs a sweep left FAILED, counted from the store itself, not from the console.
        .venv/bin/python -c "import sqlite3; print(sqlite3.connect('mlflow.db').execute(
            \"select count(*) from runs where status = 'FAILED'\").fetchone()[0])" 2>/dev/null \
            | sed "s/^/load sweep $sweep: FAILED runs /" >> "$work/load.status"
    done
}
# In a group of its own, so that an interrupted soak stops the sweep in flight too.
setsid bash -c "$(declare -f load_loop); work='$work'; load_loop" &
load_pid=$!
trap 'touch "$work/STOP"; kill -- -"$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null' EXIT

echo "soak at $commit: $passes passes of .ci/run on fresh clones of $repo, under the demo sweep's load"
status=0
for pass in $(seq 1 "$passes"); do
    clone="$work/pass_$pass"
    git clone --quiet "$repo" "$clone"
    start=$(date +%s)
    (cd "$clone" && .ci/run) > "$work/pass_$pass.log" 2>&1
    status=$?
    minutes=$((($(date +%s) - start) / 60))
    summary=$(grep -E "^=+ .*(passed|failed|error).* =+$" "$work/pass_$pass.log" | tail -1)
    echo "pass $pass: exit $status in $minutes min: $summary"
    rm -rf "$clone" # 1-2 GB of venv each
    ((status == 0)) || break
done
touch "$work/STOP"
wait "$load_pid" # the sweep in flight ends first
sweeps=$(grep -c ": exit" "$work/load.status" 2>/dev/null)
failed_sweeps=$(grep ": exit" "$work/load.status" 2>/dev/null | grep -vc "exit 0$")
failed_runs=$(awk '/FAILED runs/ {n += $NF} END {print n + 0}' "$work/load.status" 2>/dev/null)
echo "load: ${sweeps:-0} demo sweeps, ${failed_sweeps:-0} exited non-zero, $failed_runs FAILED runs"
exit $((status != 0 || ${failed_sweeps:-0} != 0 || failed_runs != 0))

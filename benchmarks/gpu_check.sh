#!/usr/bin/env bash
# The GPU check, on JAX, for a machine with an NVIDIA GPU, JAX and no TensorFlow (README: Backends):
#   1. the GPU is used: JAX lists it, and a job's run says which GPU it claimed;
#   2. the demo sweep (2x2) and an ensemble of it, on JAX;
#   3. the seed study's grid shape: 3 backbones x 4 head configs at 160 px, cached, on the images given;
#   4. 16 head configs of one backbone against 1: T16/T1;
# and prints extraction images/s per backbone, seconds per cached run, T16/T1 and the GPU's peak memory.
#
#   python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" "jax[cuda12]==0.10.*" && bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh [--cpu] [--data DIR]
#
# --cpu: the same steps on this machine's CPU, smaller (a generated set of 4 classes x 24 images at
# 160 px, 2 epochs), skipping the GPU checks and printing "n/a on CPU" for GPU memory: to show the
# script runs to the end and prints every figure. --data: a Kaggle-layout folder
# (<dir>/simpsons_dataset, <dir>/kaggle_simpson_testset); default ../shared/data/simpsons-mini, or a
# generated set of the same shape where it is absent. Random weights throughout (weights=null): no
# download. Every command runs with backend=jax, and KERAS_BACKEND=jax for the ensemble.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
cpu=false
data=../shared/data/simpsons-mini
while (($#)); do
    case $1 in
    --cpu) cpu=true ;;
    --data) data=$2; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--cpu] [--data DIR]" >&2; exit 2 ;;
    esac
    shift
done
scratch=$(mktemp -d)
sampler=
cleanup() { [[ -n $sampler ]] && kill "$sampler" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
SECONDS=0

if $cpu; then
    epochs=2
    "$python" -c "from pathlib import Path; from simpsons.demo_data import write_demo_data
write_demo_data(Path('$scratch/images'), train_per_class=24, test_per_class=6, size=160, seed=0)"
    images=(data=folder "data.root=$scratch/images/train" "data.test_root=$scratch/images/test")
    echo "== --cpu: JAX on the CPU, on 4 generated classes x 24 images; GPU checks skipped"
else
    epochs=5
    if [[ -d $data/simpsons_dataset ]]; then
        images=(data=simpsons "data.dir=$(realpath "$data")")
    else
        "$python" -c "from pathlib import Path; from simpsons.demo_data import write_demo_data
write_demo_data(Path('$scratch/images'), train_per_class=200, test_per_class=50, size=400, seed=0)"
        images=(data=folder "data.root=$scratch/images/train" "data.test_root=$scratch/images/test")
        echo "$data has no simpsons_dataset/: 4 generated classes x 250 images of 400 px instead"
    fi
    echo "== the GPU, as JAX sees it"
    "$python" - <<'EOF'
import sys

import jax

gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
    sys.exit(f"no GPU visible to JAX ({jax.devices()}): install jax[cuda12] where an NVIDIA driver is")
print(f"JAX {jax.__version__} on {', '.join(d.device_kind for d in gpus)}")
try:
    import tensorflow  # noqa: F401
except ImportError:
    print("TensorFlow: not installed (as intended: the JAX path needs none)")
else:
    print("TensorFlow: installed, and the JAX jobs do not load it")
EOF
    # The GPU's used memory every half second, for its peak over the whole check.
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$scratch/memory.csv" &
    sampler=$!
fi

store="sqlite:///$scratch/mlflow.db"
common=(backend=jax "tracking.uri=$store" "cache_dir=$scratch/cache")
train() { # a sweep; its log in $scratch/<name>.log, shown when it fails
    local name=$1
    shift
    "$python" -m simpsons.train -m "${common[@]}" "$@" >"$scratch/$name.log" 2>&1 || {
        tail -40 "$scratch/$name.log"
        exit 1
    }
}

echo "== demo sweep (2x2) on JAX, then its ensemble"
demo_epochs=$($cpu && echo 1 || echo 8)
train demo experiment=demo "data.dir=$scratch/demo" "epochs=$demo_epochs"
"$python" -m simpsons.ensemble sweep=latest tracking.experiment=simpsons-demo "tracking.uri=$store" register=false \
    >"$scratch/ensemble.log" 2>&1 || { tail -40 "$scratch/ensemble.log"; exit 1; }
grep -iE "accuracy|run" "$scratch/ensemble.log" | head -5

backbones=(resnet50v2 mobilenetv2 xception)
grid=("optimizer=adam,rmsprop" "dropout=0.2,0.5")
sixteen=("optimizer=adam,rmsprop,sgd,adamw" "dropout=0.2,0.3,0.4,0.5")
on_images=("${images[@]}" backbone.weights=null image_size=160 "epochs=$epochs" tracking.experiment=gpu-check)
echo "== 3 backbones x 4 head configs at 160 px, cached (${backbones[*]})"
for backbone in "${backbones[@]}"; do
    train "grid-$backbone" "backbone=$backbone" "${grid[@]}" "${on_images[@]}"
done
echo "== T16/T1: 16 head configs of resnet50v2 against 1, on the warm cache, each a sweep (a process) of its own"
start=$SECONDS
train one backbone=resnet50v2 "${on_images[@]}" reuse=false  # trained again, on the features cached above
t1=$((SECONDS - start))
start=$SECONDS
train sixteen backbone=resnet50v2 "${sixteen[@]}" "${on_images[@]}" reuse=false
t16=$((SECONDS - start))

"$python" - "$store" "$t1" "$t16" <<'EOF'
import sys
from collections import defaultdict

import mlflow
from mlflow.tracking import MlflowClient

store, t1, t16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mlflow.set_tracking_uri(store)
client = MlflowClient(store)
for name in ("simpsons-demo", "gpu-check"):
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment], "tags.`simpsons.run_type` = 'train'", max_results=1000)
    statuses = sorted({run.info.status for run in runs})
    backends = sorted({run.data.params.get("backend") for run in runs})
    gpus = sorted({run.data.tags.get("gpu", "none (CPU)") for run in runs})
    print(f"{name}: {len(runs)} runs, status {', '.join(statuses)}, backend {', '.join(backends)}, GPU {'; '.join(gpus)}")
    if name != "gpu-check":
        continue
    rates, seconds = defaultdict(list), defaultdict(list)
    for run in runs:
        backbone = run.data.params["backbone.name"]
        if run.data.tags.get("feature_cache") == "miss":  # its extraction rate: in timings.json, not a metric
            timings = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/timings.json")
            rates[backbone].append(timings["feature_extraction_images_per_second"])
        if run.data.tags.get("feature_cache") == "hit":
            seconds[backbone].append((run.info.end_time - run.info.start_time) / 1000)
    for backbone in sorted(seconds):
        rate = f"{max(rates[backbone]):.0f} images/s" if rates[backbone] else "n/a (no miss)"
        mean = sum(seconds[backbone]) / len(seconds[backbone])
        print(f"{backbone}: extraction {rate}; {mean:.1f} s per cached run ({len(seconds[backbone])} runs)")
print(f"T1 {t1} s, T16 {t16} s: T16/T1 {t16 / max(t1, 1):.1f}")
EOF
if $cpu; then
    echo "peak GPU memory: n/a on CPU"
else
    kill "$sampler" && sampler=
    echo "peak GPU memory: $(sort -n "$scratch/memory.csv" | tail -1) MiB (nvidia-smi, whole GPU)"
fi
echo "total: ${SECONDS} s"

#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU: what a job process sets up (the GPU it claims,
# memory growth) and which GPU each of two parallel demo jobs used; the whole test suite on the
# GPU; then the feature-cache benchmark in float32 and in mixed_float16 with XLA, each printing
# images/s. Sized to finish in under 5 minutes on one H100-class GPU with 16 CPU cores.
#
#   python3 -m venv .venv && .venv/bin/pip install -e ".[dev,gpu]" && bash benchmarks/gpu_check.sh
#
# Without ../shared/data/simpsons-mini the benchmark generates a set of the same shape.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

"$python" - <<'EOF'
import sys

import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    sys.exit("no GPU visible to TensorFlow: install with pip install -e '.[gpu]' where an NVIDIA driver is")
names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
print(f"TensorFlow {tf.__version__} on {', '.join(names)}")
EOF

echo "== GPU set-up of a job process (gpu.memory_growth=true, gpu.one_per_job=true)"
"$python" - "$scratch" <<'EOF'
import sys
from pathlib import Path

import tensorflow as tf

from simpsons.training.runtime import configure_gpus

print("configure_gpus:", configure_gpus(memory_growth=True, one_per_job=True, cache_dir=Path(sys.argv[1])))
for gpu in tf.config.get_visible_devices("GPU"):
    print(f"visible {gpu.name}: memory growth {tf.config.experimental.get_memory_growth(gpu)}")
tf.linalg.matmul(tf.ones((1024, 1024)), tf.ones((1024, 1024)))  # starts the runtime on the GPU
print(f"GPU memory held after one 1024x1024 matmul: {tf.config.experimental.get_memory_info('GPU:0')['current']} bytes")
EOF

echo "== two demo jobs at once (joblib, 2 processes): the GPU each used, from its run's tags"
"$python" -m simpsons.train -m experiment=demo epochs=1 hydra/launcher=joblib hydra.launcher.n_jobs=2 \
    "tracking.uri=sqlite:///$scratch/mlflow.db" "cache_dir=$scratch/cache" "data.dir=$scratch/demo" >"$scratch/sweep.log" 2>&1 ||
    { tail -30 "$scratch/sweep.log"; exit 1; }
"$python" - "$scratch" <<'EOF'
import sys

from mlflow.tracking import MlflowClient

client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
experiment = client.get_experiment_by_name("simpsons-demo").experiment_id  # the demo's own
for run in client.search_runs([experiment], "tags.`simpsons.run_type` = 'train'"):
    print(f"{run.info.run_name}: {run.info.status}, pid {run.data.tags['simpsons.pid']}, {run.data.tags.get('gpu')}")
EOF

SECONDS=0
# The test workers run TensorFlow themselves, not through a job's gpu.* settings: growth by environment.
TF_FORCE_GPU_ALLOW_GROWTH=true "$python" -m pytest -q -n 8 -p no:cacheprovider
echo "test suite on the GPU: ${SECONDS} s"

for settings in "--precision float32 --jit-compile false" "--precision mixed_float16 --jit-compile true"; do
    echo "== cache benchmark, ResNet50V2 at 224 px, $settings"
    # shellcheck disable=SC2086 # the settings are two words each, on purpose
    "$python" benchmarks/cache_benchmark.py --image-size 224 --skip-rss $settings
done
echo "total: ${SECONDS} s"

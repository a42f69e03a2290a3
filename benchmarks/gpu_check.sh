#!/usr/bin/env bash
# The speed issue's GPU check, for a machine with an NVIDIA GPU: the whole test suite on the GPU,
# then the feature-cache benchmark in float32 and in mixed_float16 with XLA, each printing
# images/s. Sized to finish in under 5 minutes on one H100-class GPU with 16 CPU cores.
#
#   python3 -m venv .venv && .venv/bin/pip install -e ".[dev,gpu]" && bash benchmarks/gpu_check.sh
#
# Without ../shared/data/simpsons-mini the benchmark generates a set of the same shape.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export TF_FORCE_GPU_ALLOW_GROWTH=true # the test workers share the GPU
export PYTHONUNBUFFERED=1

"$python" - <<'EOF'
import sys

import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    sys.exit("no GPU visible to TensorFlow: install with pip install -e '.[gpu]' where an NVIDIA driver is")
names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
print(f"TensorFlow {tf.__version__} on {', '.join(names)}")
EOF

SECONDS=0
"$python" -m pytest -q -n 8 -p no:cacheprovider
echo "test suite on the GPU: ${SECONDS} s"

for settings in "--precision float32 --jit-compile false" "--precision mixed_float16 --jit-compile true"; do
    echo "== cache benchmark, ResNet50V2 at 224 px, $settings"
    # shellcheck disable=SC2086 # the settings are two words each, on purpose
    "$python" benchmarks/cache_benchmark.py --image-size 224 --skip-rss $settings
done
echo "total: ${SECONDS} s"

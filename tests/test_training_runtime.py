"""The process a run trains in (simpsons/training/runtime.py): XLA only where Keras would use it.

Precision and XLA in a run: tests/test_features.py (a float16 model with its own cache entry); the
GPU set-up of a job process: tests/test_training_gpus.py and, on a GPU box, benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import pytest

from simpsons.errors import ConfigError
from simpsons.training.runtime import gpu_visible, use_xla


def test_xla_is_on_by_default_only_with_a_gpu_and_never_under_op_determinism():
    assert use_xla("auto", deterministic=False) == gpu_visible()
    assert use_xla("auto", deterministic=True) is False
    assert use_xla(False, deterministic=False) is False
    with pytest.raises(ConfigError, match="jit_compile=true needs deterministic=false"):
        use_xla(True, deterministic=True)

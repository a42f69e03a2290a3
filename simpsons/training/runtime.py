"""The process a run trains in: its GPUs, seeds and op determinism, precision and XLA.

GPUs are set before TensorFlow's runtime starts (the recipe does it before anything builds a
variable); the rest is set again by every job, also by the later jobs of a sweep that the default
launcher runs in the same process. Which GPU a job process claims on a box with several: gpus.py.

The one module with calls of the backend's own API: TensorFlow's or JAX's, each imported only when
Keras runs on it, so that a JAX process never loads TensorFlow. On JAX, what must be set before its
runtime starts (GPU visibility, memory, GPU determinism) was set by backend.py before Keras loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import keras

from simpsons.errors import ConfigError
from simpsons.settings import XLA_NEEDS_NO_DETERMINISM, TrainSettings
from simpsons.tracking import schema
from simpsons.training import backend, gpus

log = logging.getLogger(__name__)


def on_jax() -> bool:
    return keras.config.backend() == "jax"


def _tensorflow() -> ModuleType:
    import tensorflow as tf  # only where Keras runs on TensorFlow

    return tf


def gpu_visible() -> bool:
    if on_jax():
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    return bool(_tensorflow().config.list_physical_devices("GPU"))


_gpu_setting: str | None = None  # what configure_gpus did in this process, said again to later jobs


def configure_gpus(memory_growth: bool, one_per_job: bool, cache_dir: Path) -> str | None:
    """Before TensorFlow's runtime starts: which GPU this process uses, and whether its memory grows.

    By default TensorFlow maps nearly all memory of every GPU it sees in every process, so a second
    job on the same GPU fails for memory; with growth on, each process takes what it uses. With
    several GPUs visible and `one_per_job`, the process claims one (gpus.py) and shows
    TensorFlow that one only. Both are settings of the process: its first job decides them, and the
    later jobs of a sweep the default launcher runs in the same process keep them.

    Returns what was done, for the run's tags; None without a GPU.
    """
    global _gpu_setting
    if _gpu_setting is not None:
        return _gpu_setting
    if on_jax():  # claimed and set up before JAX started (backend.py)
        _gpu_setting = backend.jax_gpu()
        return _gpu_setting
    tf = _tensorflow()
    physical = tf.config.list_physical_devices("GPU")
    if not physical:
        return None
    used = physical
    claim = None
    if one_per_job and len(physical) > 1:
        claim = gpus.claim(gpus.lock_dir(cache_dir), gpus.visible_names(len(physical)))
        used = [physical[claim.index]]
    try:
        if claim is not None:
            tf.config.set_visible_devices(used, "GPU")
        for gpu in used:
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
    except RuntimeError:  # raised once the runtime has started: e.g. a caller that already ran TensorFlow ops
        log.warning("GPU settings left as they were: TensorFlow had already started in this process")
        _gpu_setting = f"{len(physical)} GPU(s), as TensorFlow had already set them up"
        return _gpu_setting
    _gpu_setting = _describe_gpus(len(physical), claim, memory_growth)
    log.info("GPU: %s", _gpu_setting)
    return _gpu_setting


def gpu_setting() -> str | None:
    """What configure_gpus did in this process; None before it ran, or without a GPU."""
    return _gpu_setting


def _describe_gpus(count: int, claim: gpus.Claim | None, memory_growth: bool) -> str:
    """E.g. 'GPU 1 of 4 (claimed, alone on it); memory growth on'."""
    growth = f"memory growth {'on' if memory_growth else 'off'}"
    if claim is None:
        return f"{'all ' if count > 1 else ''}{count} GPU(s); {growth}"
    sharing = "alone on it" if claim.others == 0 else f"shared with {claim.others} other process(es): all were taken"
    return f"GPU {claim.name} of {count} (claimed, {sharing}); {growth}"


def seed_everything(seed: int, deterministic: bool | str) -> bool:
    """Seed Python, NumPy and the backend; turn op determinism on (`auto`: when no GPU is visible).

    On JAX, a CPU computes deterministically, and a GPU does with XLA's flag that backend.py sets
    before JAX starts (deterministic=true): nothing is left to turn on here.
    Returns whether determinism is on.
    """
    keras.utils.set_random_seed(seed)
    deterministic = resolve_deterministic(deterministic)
    if on_jax():
        if deterministic and gpu_visible() and backend.DETERMINISTIC_GPU_OPS not in _xla_flags():
            log.warning(
                "deterministic=true: JAX had started without %s; GPU results may vary", backend.DETERMINISTIC_GPU_OPS
            )
        return bool(deterministic)
    tf = _tensorflow()
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # process-wide: an earlier job of the sweep, in this process, may have turned it on
        from tensorflow.python.framework.config import disable_op_determinism  # no public twin of enable_...

        disable_op_determinism()
    return bool(deterministic)


def _xla_flags() -> str:
    return os.environ.get("XLA_FLAGS", "")


def resolve_deterministic(deterministic: bool | str) -> bool:
    """Whether op determinism will be on: `auto` turns it on when no GPU is visible."""
    return not gpu_visible() if deterministic == "auto" else bool(deterministic)


def set_precision(precision: str) -> None:
    """Keras's dtype policy for every layer built after this call (one per job, also in a sweep).

    mixed_*: layers compute in 16 bits and keep float32 weights; the softmax layer stays float32,
    and Keras wraps the optimizer in loss scaling for float16. Fast on GPUs (tensor cores), slow on CPUs.
    """
    keras.mixed_precision.set_global_policy(precision)
    # float32 stays float32 on GPUs too: TensorFloat-32, on by default from Ampere on, rounds
    # matmul and convolution inputs to 10-bit mantissas, so the logged model's softmax would no
    # longer match the one computed from cached features to 1e-5. JAX's default precision on a GPU
    # does the same (TF32, or bfloat16 passes); "highest" is full float32.
    if on_jax():
        import jax

        jax.config.update("jax_default_matmul_precision", "highest" if precision == "float32" else None)
    else:
        _tensorflow().config.experimental.enable_tensor_float_32_execution(precision != "float32")
    if precision != "float32" and not gpu_visible():
        log.warning("precision=%s without a GPU: it runs, but slower than float32", precision)


def use_xla(jit_compile: bool | str, deterministic: bool) -> bool:
    """Whether to compile with XLA. `auto` follows Keras's rule: with a GPU and without op determinism,
    under which Keras does not compile with XLA on TensorFlow; always on JAX, whose only compiler is
    XLA (jit_compile=false runs it op by op: slow, for debugging)."""
    if on_jax():
        return True if jit_compile == "auto" else bool(jit_compile)
    if jit_compile == "auto":
        return gpu_visible() and not deterministic
    if jit_compile and deterministic:
        raise ConfigError(XLA_NEEDS_NO_DETERMINISM)
    return bool(jit_compile)


@dataclass(frozen=True)
class Runtime:
    """How a job's process computes, once set up: what its run's tags say."""

    deterministic: bool
    xla: bool
    gpu: str | None

    def tags(self) -> dict[str, str]:
        tags = {schema.DETERMINISTIC: str(self.deterministic).lower()}
        return tags | ({schema.GPU: self.gpu} if self.gpu is not None else {})


def set_up(settings: TrainSettings) -> Runtime:
    """Seeds, op determinism, XLA and precision as `settings` say, for the job about to build its model."""
    deterministic = seed_everything(settings.seed, settings.deterministic)
    xla = use_xla(settings.jit_compile, deterministic)
    set_precision(settings.precision)
    return Runtime(deterministic, xla, gpu_setting())

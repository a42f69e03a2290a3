"""Keras's backend for a job process, chosen before Keras is imported (no Keras, TensorFlow or JAX here).

Keras reads KERAS_BACKEND once, when it is first imported, and JAX reads its GPU, memory and
determinism settings from the environment when its runtime starts: so a job process sets them all
here, from its settings, before it imports anything that loads Keras (simpsons/train.py). The rest
of the process's set-up (seeds, precision, XLA, TensorFlow's GPUs) is runtime.py's, after the import.

On JAX the process then runs as where TensorFlow is not installed: Keras imports TensorFlow where it
can even on JAX (its random seeds, its serialisation check a tf.TensorShape), which would load all of
TensorFlow into a JAX job, so an import of it fails there as it would on a machine without it.

A process runs one backend: the later jobs of a sweep that the default launcher runs in the same
process must ask for the same one; a sweep over backends runs its jobs in processes of their own
(hydra/launcher=parallel).
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from simpsons.errors import ConfigError
from simpsons.settings import BACKENDS, TrainSettings
from simpsons.settings.rules import backend_errors
from simpsons.training import gpus

log = logging.getLogger(__name__)

DETERMINISTIC_GPU_OPS = "--xla_gpu_deterministic_ops=true"  # XLA's flag: GPU reductions in a fixed order
_jax_gpu: str | None = None  # what select() did with JAX's GPUs in this process, said again to later jobs


def select(settings: TrainSettings) -> None:
    """KERAS_BACKEND, and on JAX its GPU, memory and determinism settings, for the job about to start.

    An unknown backend is left to the check that judges every value (preflight): it says so in one line.
    """
    if settings.backend not in BACKENDS:
        return
    missing = backend_errors(settings.backend)  # before Keras fails to import it, in many lines
    if missing:
        raise ConfigError(missing[0])
    loaded = running()
    if loaded is not None and loaded != settings.backend:
        raise ConfigError(
            f"backend={settings.backend!r}, but Keras already runs on {loaded!r} in this process (the earlier "
            "job of a sweep in one process chose it); run the backends in processes of their own: "
            "hydra/launcher=parallel, or one command each"
        )
    os.environ["KERAS_BACKEND"] = settings.backend  # the setting wins over the environment's
    if settings.backend == "jax" and loaded is None:
        _prepare_jax(settings)
        without_tensorflow()


def without_tensorflow() -> None:
    """From now on in this process, `import tensorflow` fails as where it is not installed."""
    if "tensorflow" in sys.modules:
        raise ConfigError("backend=jax, but TensorFlow is loaded in this process already; run the job on its own")
    if not any(isinstance(finder, _NoTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoTensorFlow())


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "tensorflow" or name.startswith("tensorflow."):
            message = f"No module named {name!r} (backend=jax: this process runs without it)"
            raise ModuleNotFoundError(message, name=name)
        return None


def running() -> str | None:
    """The backend Keras runs on in this process; None before Keras is imported."""
    keras = sys.modules.get("keras")
    return keras.config.backend() if keras is not None else None


def jax_gpu() -> str | None:
    """What select() did with JAX's GPUs in this process (the run's `gpu` tag); None without a GPU."""
    return _jax_gpu


def _prepare_jax(settings: TrainSettings) -> None:
    """JAX's counterparts of what runtime.configure_gpus and seed_everything do on TensorFlow, which
    JAX reads from the environment when its runtime starts. A variable the user set wins."""
    global _jax_gpu
    # JAX takes 75% of every GPU it sees when it starts; jobs sharing a GPU would fail for memory.
    # With memory growth (the default), each takes what it uses, as TensorFlow's growth does.
    if settings.gpu.memory_growth:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # JAX logs at INFO each platform it probes and lacks (TPU, CUDA without a GPU), which Hydra's
    # logging shows: a warning or worse still shows.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # Op determinism: on a GPU, XLA's reductions (atomics) run in any order unless asked; on a CPU, JAX
    # is deterministic already. deterministic=auto means on only without a GPU: nothing to ask then.
    if settings.deterministic is True and DETERMINISTIC_GPU_OPS not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_GPU_OPS}".strip()
    count = gpu_count()
    if not count:
        return
    growth = f"memory growth {'on' if settings.gpu.memory_growth else 'off'}"
    if not (settings.gpu.one_per_job and count > 1):
        _jax_gpu = f"{'all ' if count > 1 else ''}{count} GPU(s); {growth}"
        return
    names = gpus.visible_names(count)
    claim = gpus.claim(gpus.lock_dir(Path(settings.cache_dir)), names)
    # JAX computes on every GPU it sees only when told to; shown one, it uses that one, as TensorFlow does.
    listed = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = listed[claim.index] if len(listed) == count else str(claim.index)
    sharing = "alone on it" if claim.others == 0 else f"shared with {claim.others} other process(es): all were taken"
    _jax_gpu = f"GPU {claim.name} of {count} (claimed, {sharing}); {growth}"
    log.info("GPU: %s", _jax_gpu)


def gpu_count() -> int:
    """The NVIDIA GPUs this process may use, counted before JAX starts (it cannot be asked without
    starting, and then it is too late to choose): CUDA_VISIBLE_DEVICES's entries when set, else what
    nvidia-smi lists, else the driver's /proc entries; 0 without a driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([entry for entry in visible.split(",") if entry.strip() and entry.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
            return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0

"""One GPU per job process on a box with several: a claim on the least-used GPU, held by an flock.

TensorFlow computes on the first GPU it sees (this project uses no distribution strategy), so
parallel jobs that all see every GPU would all train on GPU 0. Each job process instead claims
one GPU here and shows TensorFlow that one only (runtime.py, `configure_gpus`).

A claim is an exclusive flock on `<lock_dir>/<gpu>.<slot>.lock`, held for the life of the
process: the kernel drops it when the process ends in any way, `kill -9` included, so a dead job
never keeps a GPU. Claims are made one at a time (an flock on `claim.lock`, held for
milliseconds); each takes the GPU with the fewest holders, the lowest on a tie. When every GPU
is held, the process shares the least-used one rather than wait: with memory growth on, jobs on
one GPU fit as they do on a one-GPU box, and a wait could last a whole sweep.

No TensorFlow here: the claim logic is tested as plain Python across real processes.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from simpsons import locks

CLAIM_LOCK = "claim.lock"


@dataclass(frozen=True)
class Claim:
    """A GPU this process holds: its position among the visible GPUs, its name, and how many
    other processes held it when it was claimed (0: it is this process's alone)."""

    index: int
    name: str
    others: int
    lock: IO[str]


_held: Claim | None = None  # this process's claim, kept open (and so locked) until the process ends


def lock_dir(cache_dir: Path) -> Path:
    """Where the claims of this host's processes lie: per host, since GPU numbers are per host (the
    cache folder may be shared across nodes); per Slurm job, since Slurm gives each job its own
    GPUs and may number them from 0 in each (its device cgroups)."""
    folder = Path(cache_dir) / "gpus" / socket.gethostname()
    slurm_job = os.environ.get("SLURM_JOB_ID")
    return folder / f"slurm-{slurm_job}" if slurm_job else folder


def visible_names(count: int) -> list[str]:
    """Names of the `count` GPUs TensorFlow lists, in its order: the entries of CUDA_VISIBLE_DEVICES
    (indices or UUIDs) when it is set, so that two processes given the same devices in another order
    or subset agree on which is which; else 0..count-1."""
    listed = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    names = listed if len(listed) == count else [str(index) for index in range(count)]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", name) for name in names]


def claim(directory: Path, names: list[str]) -> Claim:
    """Claim one of the GPUs `names` for this process (once: later calls return the same claim)."""
    global _held
    if _held is not None:
        return _held
    with locks.exclusive(directory / CLAIM_LOCK):  # one claim at a time: two never count the same free GPU
        holders = [_holders(directory, name) for name in names]
        index = min(range(len(names)), key=lambda i: (len(holders[i]), i))
        slot = min(set(range(len(holders[index]) + 1)) - set(holders[index]))
        lock = locks.try_lock(directory / f"{names[index]}.{slot}.lock")
    if lock is None:  # not reached: a slot counted free is free, as long as claims are serial
        raise RuntimeError(f"GPU {names[index]} slot {slot} was taken while claims were serialised")
    _held = Claim(index, names[index], len(holders[index]), lock)
    return _held


def held() -> Claim | None:
    """This process's claim, if it made one."""
    return _held


def _holders(directory: Path, name: str) -> list[int]:
    """The slots of GPU `name` that a live process holds."""
    taken = []
    for path in directory.glob(f"{name}.*.lock"):
        slot = path.name[len(name) + 1 : -len(".lock")]
        if not slot.isdigit():
            continue
        probe = locks.try_lock(path)
        if probe is None:
            taken.append(int(slot))
        else:
            probe.close()  # free: whoever held it has ended
    return sorted(taken)

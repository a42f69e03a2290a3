"""hydra/launcher=slurm: hydra-submitit-launcher's Slurm launcher, which waits for every job and
cancels them when the driver is interrupted (simpsons.launchers)."""

from __future__ import annotations

from collections.abc import Sequence

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the `launchers` extra is not installed: there is no such launcher
    SlurmLauncher = None

if SlurmLauncher is not None:

    class SlurmJobsLauncher(SlurmLauncher):
        # Pickled into every Slurm job, which calls it (the plugin's __call__ runs the job).

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            from simpsons import launchers

            return launchers.launch_slurm(self, job_overrides, initial_job_idx)

"""hydra/launcher=ray_jobs: hydra-ray-launcher's local launcher, with the driver's signal handling
kept and each job's end its own (simpsons.launchers)."""

from __future__ import annotations

from collections.abc import Sequence

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
except ImportError:  # the `ray` extra is not installed: there is no such launcher
    RayLauncher = None

if RayLauncher is not None:

    class RayJobsLauncher(RayLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            from simpsons import launchers

            return launchers.launch_ray(self, job_overrides, initial_job_idx)

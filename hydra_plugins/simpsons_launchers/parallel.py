"""hydra/launcher=parallel: hydra-joblib-launcher's config; a killed job ends alone (simpsons.launchers)."""

from __future__ import annotations

from collections.abc import Sequence

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:  # the `launchers` extra is not installed: there is no such launcher
    JoblibLauncher = None

if JoblibLauncher is not None:

    class ParallelLauncher(JoblibLauncher):
        """n_jobs jobs at once, each lane one reused process; of joblib's keys, only n_jobs is read."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            from simpsons import launchers

            return launchers.launch_parallel(self, job_overrides, initial_job_idx)

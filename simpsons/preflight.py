"""Whether a job can start: its settings' rules, then the world it needs (data folders, the cache
folder, the store), judged without TensorFlow and without creating anything.

Before a sweep the Hydra callback runs `errors` on every job (simpsons/hydra_jobs.py); a job runs
`raise_errors` again before it touches MLflow (simpsons/training/recipe.py), for launchers and sweepers whose
jobs the driver cannot list, and for callers of simpsons.training.recipe.train. The job then reads every image
with its backend's own decoder (simpsons/data.py), which can still fail it, in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from simpsons import data
from simpsons.errors import ConfigError
from simpsons.settings import TrainSettings
from simpsons.settings.rules import backend_errors
from simpsons.tracking.sqlite import SQLITE_PREFIX, absolute_sqlite_uri

Probe = Callable[[Any], list[str]]  # a check of the world (files, servers); its argument is hashable
Probed = dict[tuple[Probe, Hashable], list[str]]


def errors(settings: TrainSettings, probed: Probed | None = None) -> list[str]:
    """One message per bad value (settings.errors()) and per unusable folder or store.

    `probed` remembers the checks of files and servers across the jobs of a sweep, which mostly
    share a store, a cache and data: each is checked once.
    """
    found = settings.errors()
    probed = {} if probed is None else probed
    for probe, argument in _probes(settings):
        if (probe, argument) not in probed:
            probed[(probe, argument)] = probe(argument)
        found += probed[(probe, argument)]
    return list(dict.fromkeys(found))


def raise_errors(settings: TrainSettings) -> None:
    """`errors` as one ConfigError (one line), for a job about to start."""
    found = errors(settings)
    if found:
        raise ConfigError("; ".join(found))


def _probes(settings: TrainSettings) -> list[tuple[Probe, Hashable]]:
    given = settings.data
    data_key = (given.name, given.folder, given.root, given.test_root, given.generation is not None)
    return [
        (_data_root_errors, data_key),
        (_cache_dir_errors, settings.cache_dir),
        (_store_errors, settings.tracking.uri),
        (backend_errors, settings.backend),  # installed or not: settings/rules.py, which the job asks too
    ]


def _data_root_errors(given: tuple[str, str | None, str | None, str | None, bool]) -> list[str]:
    name, data_dir, root, test_root, generated = given
    if generated:
        return []  # the job generates the demo data on first use
    if root is None:
        return [f"data.root is not set; {data.missing_root_hint(name, data_dir)}"]
    if root == "???":
        return []  # said as a required value
    if not Path(root).expanduser().is_dir():
        return [f"data.root={root!r} is not a folder; {data.missing_root_hint(name, data_dir)}"]
    # Checked only with a training folder: without one (the Kaggle data not unzipped) the test
    # folder is missing too, and the hint above covers both.
    if test_root is not None and not Path(test_root).expanduser().is_dir():
        return [f"data.test_root={test_root!r} is not a folder; {data.TEST_ROOT_HINT}"]
    return _classes_without_images(data.unnested_root(Path(root).expanduser().resolve()))


def _classes_without_images(root: Path) -> list[str]:
    """Class folders in which Pillow opens no file at all, found here in a moment, before
    TensorFlow loads: a class is fine as soon as one file opens (the job then checks every file
    with TensorFlow's decoder), so this reads about one file per class."""
    from PIL import Image, UnidentifiedImageError  # only this check needs it

    def opens(path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.verify()
            return True
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            return False

    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if files and not any(opens(path) for path in files):
            names = [path.relative_to(root).as_posix() for path in files]
            found.append(data.no_usable_images_error(folder.name, root, names))
    return found


def _cache_dir_errors(cache_dir: str) -> list[str]:
    from simpsons.tracking.store import folder_problem  # MLflow: loaded only when a config is checked

    problem = folder_problem(Path(str(cache_dir)).expanduser().absolute())
    if problem is None:
        return []
    return [f"cache_dir={cache_dir!r} cannot be written ({problem}); use a writable folder (or SIMPSONS_CACHE_DIR)"]


def study_storage_errors(storage: str, tracking_uri: str) -> list[str]:
    """Why a search's study database (hydra.sweeper.storage) cannot be used now: it does not answer,
    refuses this process, or its driver is missing. A SQLite file is made when the search starts;
    the tracking store's own database is checked with each job's store."""
    from simpsons.tracking import store  # MLflow: loaded only when a config is checked

    if storage.startswith(SQLITE_PREFIX) or storage == absolute_sqlite_uri(tracking_uri):
        return []
    try:
        store.check_database(storage, "hydra.sweeper.storage")
    except ConfigError as error:
        return [str(error)]
    return []


def _store_errors(uri: str) -> list[str]:
    from simpsons.tracking import store  # MLflow: loaded only when a config is checked

    try:
        store.check(str(uri))
    except ConfigError as error:
        return [str(error)]
    return []

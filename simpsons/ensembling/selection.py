"""Which training runs an ensemble chooses from: its candidates, best first, and why others are left out.

The best-ranked run sets what the others must share with it: class names, data fingerprint,
validation split, and the same validation and test files. No TensorFlow here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from mlflow.entities import Run

from simpsons.errors import ConfigError
from simpsons.settings import EnsembleSettings
from simpsons.tracking import reader, schema

log = logging.getLogger("simpsons.ensemble")


@dataclass(frozen=True)
class Candidate:
    """A training run that can join the ensemble: its logged outputs and model."""

    run: Run
    outputs: dict[str, reader.Outputs]  # "val", and "test" where the run had a test set
    model_uri: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def backbone(self) -> str:
        return self.run.data.params.get("backbone.name", "?")

    @property
    def label(self) -> str:
        """Short enough for a chart's axis and a table's first column: `mobilenet (3f2a9c1b)`."""
        return f"{self.backbone} ({self.run_id[:8]})"


def select_candidates(runs: list[Run], cfg: EnsembleSettings) -> list[Candidate]:
    """The best top_n runs that can be averaged together; logs why each other run is left out."""
    candidates: list[Candidate] = []
    for run, reason in _ranked(runs, cfg):
        if reason is None and len(candidates) == cfg.top_n:
            break
        if reason is None:
            reason = _mismatch(run, candidates, cfg.one_per_backbone)
        if reason is None:
            candidate, reason = _load_candidate(run, candidates)
            if candidate is not None:
                candidates.append(candidate)
                continue
        log.info("left out %s (%s): %s", run.info.run_name, run.info.run_id[:8], reason)
    if not candidates:
        raise ConfigError(f"no finished training run with {cfg.metric} to ensemble (see the lines above)")
    return candidates


def _ranked(runs: list[Run], cfg: EnsembleSettings) -> list[tuple[Run, str | None]]:
    """Runs that cannot be candidates, with the reason, then the others best first (reason None)."""
    judged = [(run, _ineligible(run, cfg)) for run in runs]
    sign = -1 if cfg.direction == "max" else 1
    eligible = [run for run, reason in judged if reason is None]
    eligible.sort(key=lambda run: sign * reader.metric(run, cfg.metric))
    return [(run, reason) for run, reason in judged if reason] + [(run, None) for run in eligible]


def _ineligible(run: Run, cfg: EnsembleSettings) -> str | None:
    if reader.run_type(run) != schema.TRAIN:
        return "not a training run"
    if run.info.status != "FINISHED":
        return f"status {run.info.status}"
    if run.data.tags.get(schema.MODEL_DELETED):  # keep_models or simpsons-gc: nothing to bundle
        return "its model was deleted (keep_models / simpsons-gc)"
    if schema.PRUNED in run.data.tags and not cfg.include_pruned:
        return f"pruned after epoch {run.data.tags[schema.PRUNED]} by its search (include_pruned=true takes it)"
    value = reader.metric(run, cfg.metric)  # a curve's (val_loss's) at the kept epoch
    if value is None or not math.isfinite(value):
        return f"no finite {cfg.metric}"
    if cfg.weighs_by_accuracy and not run.data.metrics.get(schema.KEPT_VAL_ACCURACY):
        return f"no {schema.KEPT_VAL_ACCURACY} to weight by"
    return None


def _mismatch(run: Run, candidates: list[Candidate], one_per_backbone: bool) -> str | None:
    """Why `run` cannot join `candidates` (same classes, data and validation split are required)."""
    if not candidates:
        return None
    first = candidates[0].run
    if reader.class_names(run) != reader.class_names(first):
        return "its class names differ"
    if run.data.tags.get(schema.DATA_FINGERPRINT) != first.data.tags.get(schema.DATA_FINGERPRINT):
        return "its data fingerprint differs"
    for key in ("data.split_seed", "data.val_split"):
        if run.data.params.get(key) != first.data.params.get(key):
            return f"its {key} differs"
    backbone = run.data.params.get("backbone.name")
    if one_per_backbone and backbone in {c.backbone for c in candidates}:
        return f"a better {backbone} run is already in"
    return None


def _load_candidate(run: Run, candidates: list[Candidate]) -> tuple[Candidate | None, str | None]:
    """The run's logged outputs and model, or why they do not fit the candidates so far."""
    outputs = {split: found for split in ("val", "test") if (found := reader.outputs(run.info.run_id, split))}
    if "val" not in outputs:
        return None, "logged no validation outputs"
    if candidates and outputs.keys() != candidates[0].outputs.keys():
        return None, "it has a test set where the best run has none, or the reverse"
    for split, found in outputs.items():
        if candidates and found.names != candidates[0].outputs[split].names:
            return None, f"its {split} files differ"
    try:
        model_uri = reader.model_uri(run)
    except ConfigError:
        return None, "logged no model"
    return Candidate(run, outputs, model_uri), None

"""Which runs an ensemble chooses from: the best top_n that can be averaged together, and why others are not."""

from __future__ import annotations

import logging

import pytest
from conftest import Store, ensemble_config
from mlflow.tracking import MlflowClient

from simpsons.ensembling.selection import Candidate, select_candidates
from simpsons.errors import ConfigError
from simpsons.tracking import reader, schema


def candidates(store: Store, *overrides: str) -> list[Candidate]:
    """What the ensemble command would choose from with these overrides."""
    cfg = ensemble_config(store, *overrides)
    client = MlflowClient(store.uri)
    experiment = reader.experiment_id(client, cfg.tracking.experiment)
    sweep = reader.resolve_sweep(client, experiment, cfg.sweep)
    runs, _ = reader.training_runs(client, reader.search(client, experiment, sweep, cfg.filter))
    return select_candidates(runs, cfg)


def ids(found: list[Candidate]) -> list[str]:
    return [c.run_id for c in found]


def ranked(store: Store, metric: str = "best_val_accuracy") -> list[str]:
    client = MlflowClient(store.uri)
    children = [client.get_run(r) for r in store.children]
    return [r.info.run_id for r in sorted(children, key=lambda r: -r.data.metrics[metric])]


def test_the_best_top_n_by_the_metric_with_their_outputs_and_models(store):
    found = candidates(store, f"sweep={store.sweep}", "top_n=3")
    assert ids(found) == ranked(store)[:3]
    assert all(set(c.outputs) == {"val", "test"} and c.model_uri.startswith("models:/") for c in found)
    assert found[0].label == f"{found[0].backbone} ({found[0].run_id[:8]})"


def test_mismatched_and_unscored_runs_are_left_out_with_the_reason(store, caplog):
    client = MlflowClient(store.uri)
    scores = dict(zip(store.children, [0.9, 0.8, 0.7, float("nan")], strict=True)) | {store.outsider: 0.95}
    for run_id, score in scores.items():  # a made-up metric, so that the ranking is known
        client.log_metric(run_id, "rank_score", score)
    with caplog.at_level(logging.INFO, logger="simpsons.ensemble"):
        assert ids(candidates(store, "top_n=10", "metric=rank_score")) == [store.outsider]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert any(store.children[3][:8] in line and "no finite rank_score" in line for line in lines)
    assert any(store.children[0][:8] in line and "its data.split_seed differs" in line for line in lines)
    assert ids(candidates(store, f"sweep={store.sweep}", "metric=rank_score")) == store.children[:3]


def test_one_run_per_backbone_direction_and_filter(store, caplog):
    with caplog.at_level(logging.INFO, logger="simpsons.ensemble"):
        found = candidates(store, "sweep=latest", "one_per_backbone=true")
    assert sorted(c.backbone for c in found) == ["mobilenet", "mobilenetv2"]
    assert "a better mobilenet run is already in" in caplog.text

    found = candidates(store, "sweep=latest", "metric=val_loss", "direction=min", "top_n=4")
    losses = [c.run.data.metrics["best_val_loss"] for c in found]  # the kept epoch's, as selection reads it
    assert losses == sorted(losses) and len(found) == 4

    assert ids(candidates(store, "filter=params.`optimizer.name` = 'rmsprop'")) == [store.children[1]]
    with pytest.raises(ConfigError, match=r"filter='params.dropout ===' is not a valid MLflow search filter"):
        candidates(store, "filter=params.dropout ===")


def test_no_eligible_run_is_a_clear_error(store):
    with pytest.raises(ConfigError, match="no finished training run with best_val_accuracy to ensemble"):
        candidates(store, "filter=params.dropout = '0.99'")


def test_a_run_its_search_pruned_is_left_out_unless_asked(store, caplog):
    client = MlflowClient(store.uri)
    best = ranked(store)[0]
    client.set_tag(best, schema.PRUNED, "0")  # as a run of hydra/sweeper=optuna stopped after epoch 0
    try:
        with caplog.at_level(logging.INFO, logger="simpsons.ensemble"):
            assert best not in ids(candidates(store, f"sweep={store.sweep}", "top_n=4"))
        assert "pruned after epoch 0 by its search (include_pruned=true takes it)" in caplog.text
        assert ids(candidates(store, f"sweep={store.sweep}", "top_n=4", "include_pruned=true"))[0] == best
    finally:
        client.delete_tag(best, schema.PRUNED)

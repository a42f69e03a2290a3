"""Run, sweep and model names: short, told apart within what the MLflow runs table shows."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hydra import initialize_config_dir

from simpsons.config import CONF_DIR, group_options
from simpsons.naming import constant_overrides, model_name, run_name, sweep_grid, sweep_name, swept

DEMO_PARAMS = {"optimizer": "adam,rmsprop", "dropout": "0.2,0.5"}  # conf/experiment/demo.yaml
NESTED = 13  # characters of a job's name the runs table shows under its sweep, at its default width


def jobs(grid: dict[str, list[str]]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper makes them."""
    return [[f"{k}={v}" for k, v in zip(grid, values, strict=True)] for values in itertools.product(*grid.values())]


@pytest.mark.parametrize(
    ("params", "command_line", "expected", "shown"),
    [
        (DEMO_PARAMS, ["experiment=demo", "tracking.uri=sqlite:////tmp/x.db"], ["adam 0.2", "rmsprop 0.5"], NESTED),
        ({}, ["data=simpsons", "image_size=128,160", "optimizer=adam,rmsprop", "optimizer.lr=3e-3"],
         ["128px adam", "160px rmsprop"], NESTED),
        ({}, ["optimizer.lr=1e-3,3e-3", "finetune.layers=0,20"], ["0.001 0", "0.003 20"], NESTED),
        ({}, ["dropout=0.1,0.2,0.3,0.4"], ["drop=0.1", "drop=0.4"], NESTED),  # one key: labelled
        ({}, ["data.root=/data/a/train,/data/b/train2", "seed=1,2"], ["train 1", "train2 2"], NESTED),
        # a backbone's own name may take 11 characters: told apart within 20
        ({}, ["backbone=mobilenet,mobilenetv2", "dropout=0.2,0.4", "++backbone.kwargs.alpha=0.35", "epochs=1"],
         ["mobilenet 0.2", "mobilenetv2 0.4"], 20),
    ],
)  # fmt: skip
def test_a_sweeps_jobs_are_named_by_their_swept_values_and_differ_within_what_the_table_shows(
    params, command_line, expected, shown
):
    grid = sweep_grid(params, command_line)
    keys = list(swept(grid))
    names = [run_name(overrides, keys, "resnet50v2") for overrides in jobs(grid)]
    assert names[0] == expected[0] and names[-1] == expected[-1]  # swept values as Hydra writes them
    assert len({name[:shown] for name in names}) == len(names) == 4
    for overrides, name in zip(jobs(grid), names, strict=True):
        swept_values = [o.split("=", 1)[1].rsplit("/", 1)[-1] for o in overrides if o.split("=")[0].lstrip("+") in keys]
        assert all(value in name for value in swept_values)
        assert not any(word in name for word in ("experiment", "demo", "simpsons", "tracking", "alpha", "ep="))


def test_each_job_of_a_sweep_has_a_model_named_by_its_swept_keys_and_backbone():
    keys = list(swept(sweep_grid(DEMO_PARAMS, [])))
    assert model_name(["optimizer=rmsprop", "dropout=0.2", "experiment=demo"], keys, "resnet50v2") == (
        "rmsprop drop=0_2 resnet50v2"
    )
    assert model_name(["backbone=mobilenetv2", "dropout=0.4"], ["backbone", "dropout"], "mobilenetv2") == (
        "mobilenetv2 drop=0_4"
    )
    assert model_name(["data.root=/a/b:c", "seed=2"], ["data.root", "seed"], "mobilenet") == (
        "root=b_c seed=2 mobilenet"
    )


def test_a_glob_over_experiments_is_expanded_as_hydra_does_and_names_each_job_by_its_preset():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grid = sweep_grid({}, ["experiment=glob(seed_*)", "epochs=1"])
    assert swept(grid)["experiment"] == [name for name in group_options("experiment") if name.startswith("seed_")]
    assert run_name(["experiment=seed_vgg16", "epochs=1"], ["experiment"], "vgg16") == "seed_vgg16"


def test_two_keys_with_the_same_last_part_are_labelled_by_their_full_keys():
    overrides = ["optimizer.kwargs.momentum=0.9", "backbone.kwargs.momentum=0.1"]
    assert run_name(overrides, None, "vgg16") == "vgg16 optimizer.kwargs.momentum=0.9 backbone.kwargs.momentum=0.1"
    assert run_name(overrides, ["optimizer.kwargs.momentum", "backbone.kwargs.momentum"]) == "0.9 0.1"


def test_the_command_line_replaces_an_experiments_sweep_of_a_key_but_keeps_its_place():
    grid = sweep_grid(DEMO_PARAMS, ["optimizer=sgd", "dropout=0.1,0.2,0.3", "seed=1,2"])
    assert swept(grid) == {"dropout": ["0.1", "0.2", "0.3"], "seed": ["1", "2"]}
    assert list(grid) == ["optimizer", "dropout", "seed"]
    assert constant_overrides(["optimizer=sgd", "dropout=0.1,0.2,0.3", "seed=1,2"], list(swept(grid))) == [
        "optimizer=sgd"
    ]


def test_a_single_run_is_named_by_its_backbone_and_what_differs_from_the_defaults():
    overrides = ["backbone=vgg16", "image_size=32", "backbone.weights=null", "batch_size=16", "optimizer.lr=1e-3"]
    overrides += ["data=folder", "data.root=/x/train", "data.test_root=/x/test", "epochs=2", "tracking.uri=sqlite:///a"]
    overrides += ["tracking.experiment=e2e", "reuse=false", "gpu.one_per_job=false", "cache_dir=/c"]
    assert run_name(overrides, None, "vgg16") == "vgg16 32px weights=null bs=16 lr=1e-3 ep=2"
    assert run_name(["experiment=demo"], None, "resnet50v2") == "resnet50v2"  # the preset is no difference
    assert run_name(["optimizer=rmsprop", "augment=light"], [], "densenet201") == "densenet201 rmsprop aug=light"
    assert run_name(["finetune.layers=20", "finetune.lr=1e-5"], None, "xception") == "xception ft_layers=20 ft_lr=1e-5"


def test_sweep_names_say_what_was_swept_then_when():
    started = datetime(2026, 11, 28, 12, 40)
    assert sweep_name(sweep_grid(DEMO_PARAMS, []), started) == "optimizer×drop (2×2) 2026-11-28 12:40"
    sizes = sweep_grid({}, ["image_size=96,128,160", "epochs=2"])
    assert sweep_name(sizes, started) == "image_size (3) 2026-11-28 12:40"
    assert sweep_name(sweep_grid({}, ["epochs=2"]), started) == "1 job 2026-11-28 12:40"


def test_a_single_runs_model_is_named_as_the_run_without_the_characters_mlflow_refuses():
    overrides = ["backbone=vgg16", "image_size=32", "optimizer.lr=1e-3", "dropout=0.25"]
    assert model_name(overrides, None, "vgg16") == "vgg16 32px lr=1e-3 drop=0_25"

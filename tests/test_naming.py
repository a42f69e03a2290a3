"""Run, sweep and model names: short, told apart within what the MLflow runs table shows."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hydra import initialize_config_dir

from simpsons.config import CONF_DIR, group_options
from simpsons.naming import MAX_NAME, constant_overrides, model_name, run_name, sweep_grid, sweep_name, swept

DEMO_PARAMS = {"optimizer": "adam,rmsprop", "dropout": "0.2,0.5"}  # conf/experiment/demo.yaml
NESTED = MAX_NAME  # characters of a name the runs table shows at its default width (issue 18: about 30)


def jobs(grid: dict[str, list[str]]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper makes them."""
    return [[f"{k}={v}" for k, v in zip(grid, values, strict=True)] for values in itertools.product(*grid.values())]


@pytest.mark.parametrize(
    ("params", "command_line", "expected", "shown"),
    [
        (DEMO_PARAMS, ["experiment=demo", "tracking.uri=sqlite:////tmp/x.db"], ["adam drop=0.2", "rmsprop drop=0.5"],
         NESTED),
        ({}, ["data=simpsons", "image_size=128,160", "optimizer=adam,rmsprop", "optimizer.lr=3e-3"],
         ["adam 128px", "rmsprop 160px"], NESTED),  # in ORDER: the optimizer before the size
        ({}, ["optimizer.lr=1e-3,3e-3", "finetune.layers=0,20"], ["lr=0.001 ft_layers=0", "lr=0.003 ft_layers=20"],
         NESTED),
        ({}, ["dropout=0.1,0.2,0.3,0.4"], ["drop=0.1", "drop=0.4"], NESTED),
        ({}, ["data.root=/data/a/train,/data/b/train2", "seed=1,2"], ["seed=1 root=train", "seed=2 root=train2"],
         NESTED),
        ({}, ["backbone=mobilenet,mobilenetv2", "dropout=0.2,0.4", "++backbone.kwargs.alpha=0.35", "epochs=1"],
         ["mobilenet drop=0.2", "mobilenetv2 drop=0.4"], NESTED),
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
        "seed=2 root=b_c mobilenet"
    )


def test_a_glob_over_experiments_is_expanded_as_hydra_does_and_names_each_job_by_its_preset():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grid = sweep_grid({}, ["experiment=glob(seed_*)", "epochs=1"])
    assert swept(grid)["experiment"] == [name for name in group_options("experiment") if name.startswith("seed_")]
    assert run_name(["experiment=seed_vgg16", "epochs=1"], ["experiment"], "vgg16") == "seed_vgg16"


def test_two_keys_with_the_same_last_part_are_labelled_by_their_full_keys():
    assert run_name(["b.x=2", "a.x=1"], None, "vgg16") == "vgg16 a.x=1 b.x=2"
    overrides = ["optimizer.kwargs.momentum=0.9", "backbone.kwargs.momentum=0.1"]
    # labelled, the two would not fit: the values alone, in ORDER (here alphabetical)
    assert run_name(overrides, ["optimizer.kwargs.momentum", "backbone.kwargs.momentum"]) == "0.1 0.9"


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
    overrides += ["+tags.purpose=baseline"]  # the user's run tags are tags, not part of the name
    assert run_name(overrides, None, "vgg16") == "vgg16 lr=1e-3 32px bs=16 ep=2…"  # cut to fit, at a word
    assert run_name(["experiment=demo"], None, "resnet50v2") == "resnet50v2"  # the preset is no difference
    assert run_name(["augment=light", "optimizer=rmsprop"], [], "densenet201") == "densenet201 rmsprop aug=light"
    assert run_name(["image_size=72", "backbone=resnet50v2", "epochs=3"], None, "resnet50v2") == "resnet50v2 72px ep=3"


def test_sweep_names_say_what_was_swept_then_when():
    started = datetime(2026, 11, 28, 12, 40)
    assert sweep_name(sweep_grid(DEMO_PARAMS, []), started) == "opt×drop (2×2) 11-28 12:40"
    sizes = sweep_grid({}, ["image_size=96,128,160", "epochs=2"])
    assert sweep_name(sizes, started) == "image_size (3) 11-28 12:40"
    assert sweep_name(sweep_grid({}, ["epochs=2"]), started) == "1 job 11-28 12:40"


def test_a_single_runs_model_is_named_as_the_run_without_the_characters_mlflow_refuses():
    overrides = ["backbone=vgg16", "image_size=32", "optimizer.lr=1e-3", "dropout=0.25"]
    assert model_name(overrides, None, "vgg16") == "vgg16 lr=1e-3 drop=0_25 32px"


@pytest.mark.parametrize(
    "command_line",
    [
        ["backbone=mobilenet,vgg16", "optimizer=adam,rmsprop", "dropout=0.2,0.5", "optimizer.lr=1e-3,1e-2"],
        ["dropout=0.2,0.5", "optimizer.lr=1e-3,1e-2", "optimizer=adam,rmsprop", "backbone=mobilenet,vgg16"],
        ["optimizer.lr=1e-3,1e-2", "backbone=mobilenet,vgg16", "dropout=0.2,0.5", "optimizer=adam,rmsprop"],
    ],
)
def test_names_are_the_same_whatever_the_order_of_the_overrides_and_fit_the_table(command_line):
    started = datetime(2026, 11, 28, 12, 40)
    grid = sweep_grid({}, command_line)
    keys = list(swept(grid))
    assert sweep_name(grid, started) == sweep_name(sweep_grid({}, sorted(command_line)), started)
    names = {" ".join(sorted(job)): run_name(job, keys, "x") for job in jobs(grid)}
    assert names["backbone=vgg16 dropout=0.5 optimizer.lr=0.01 optimizer=rmsprop"] == "vgg16 rmsprop lr=0.01 drop=0.5"
    models = {model_name(job, keys, "x") for job in jobs(grid)}
    assert len(set(names.values())) == len(models) == 16
    assert all(len(name) <= MAX_NAME for name in [*names.values(), *models, sweep_name(grid, started)])

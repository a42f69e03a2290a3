"""The jobs of a command line, composed and judged before any starts (simpsons/hydra_jobs.py).

The module leans on hydra-core's private APIs; the first tests hold them to what it expects of
hydra-core 1.3.8, so that an upgrade fails here, by name, rather than in a sweep's checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import hydra
import pytest
from conftest import TINY, folder_data
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ValidationError

from simpsons import hydra_jobs
from simpsons.config import CONF_DIR
from simpsons.settings import GpuSettings, TrainSettings


@pytest.fixture
def hydra_app() -> Iterator[None]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def master_config(overrides: list[str]) -> DictConfig:
    """The driver's config of `python -m simpsons.train -m OVERRIDES`, as the sweep callback gets it."""
    loader = GlobalHydra.instance().config_loader()
    return loader.load_configuration("train", ["hydra.mode=MULTIRUN", *overrides], run_mode=RunMode.MULTIRUN)


# hydra-core's private APIs, as this module uses them.


def test_hydra_core_is_the_pinned_version():
    assert hydra.__version__ == "1.3.8", "simpsons/hydra_jobs.py uses hydra-core 1.3.8's private APIs: check them"


def test_the_basic_sweepers_expansion_is_a_cartesian_product_in_command_line_order():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    overrides = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=3,4"])
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    assert jobs == [["a=1", "b=x", "c=3"], ["a=1", "b=x", "c=4"], ["a=2", "b=x", "c=3"], ["a=2", "b=x", "c=4"]]
    assert f"{BasicSweeper.__module__}.{BasicSweeper.__name__}" == hydra_jobs.BASIC_SWEEPER


def test_applying_overrides_sets_values_and_names_the_key_it_refuses(hydra_app):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    cfg = compose(config_name="train")
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(["epochs=3"]), cfg)
    assert cfg.epochs == 3
    for line, cause, key, kind in [
        ("epochs=2.5", ValidationError, "epochs", TrainSettings),
        ("gpu.memory_growth=maybe", ValidationError, "gpu.memory_growth", GpuSettings),
        ("tpyo=1", ConfigAttributeError, "tpyo", TrainSettings),
    ]:
        with pytest.raises(ConfigCompositionException) as raised:
            ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([line]), cfg)
        error = raised.value.__cause__
        assert isinstance(error, cause) and (error.full_key, error.object_type) == (key, kind), line


# The command line, before Hydra composes.


def test_unknown_group_choices_are_named_before_composing():
    assert hydra_jobs.group_choice_errors(["-m", "backbone=densenet201,xception", "experiment=glob(seed_*)"]) == []
    [error] = hydra_jobs.group_choice_errors(["-m", "backbone=densenet201,resnet9000"])
    assert error.startswith("unknown backbone 'resnet9000'; choose one of: convnext_tiny, densenet201")
    assert hydra_jobs.group_choice_errors(["data=kaggle"]) == [
        "unknown data 'kaggle'; choose one of: demo, folder, simpsons"
    ]


@pytest.mark.parametrize(
    "override,message",
    [
        ("epochs=2.5", "epochs=2.5 is invalid; expected an integer >= 1"),
        ("seed=abc", "seed='abc' is invalid; expected an integer in [0, 2**32)"),
        ("cache=maybe", "cache='maybe' is invalid; expected true or false"),
        ("cache=1", "cache=1 is invalid; expected true or false"),  # OmegaConf alone would read it as true
        ("reuse=yes", "reuse='yes' is invalid; expected true or false"),
        ("early_stopping.patience=two", "early_stopping.patience='two' is invalid; expected null (off) or an integer"),
        ("data=demo data.generate.size=big", "data.generate.size='big' is invalid; expected an integer"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_worded_as_its_rule(override, message):
    [error] = hydra_jobs.command_line_errors(override.split())
    assert error.startswith(message), error


def test_values_of_the_right_type_and_interpolations_pass():
    assert hydra_jobs.command_line_errors(["cache=false", "reuse=true", "epochs=3", "dropout=0", "seed=7"]) == []
    assert hydra_jobs.command_line_errors(["cache=${oc.env:NOT_SET_ANYWHERE,true}"]) == []


@pytest.mark.parametrize(
    "override,message",
    [
        ("register=maybe", "register='maybe' is invalid; expected true or false"),
        ("calibrate=yes please", "calibrate='yes please' is invalid; expected true or false"),
        ("calibrate=1", "calibrate=1 is invalid; expected true or false"),
        ("top_n=few", "top_n='few' is invalid; expected an integer >= 1"),
        ("topn=3", "unknown key 'topn' (topn=3); did you mean top_n? the top level takes: calibrate, direction,"),
    ],
)
def test_the_ensembles_command_line_is_judged_the_same_way(override, message):
    [error] = hydra_jobs.command_line_errors([override], config_name="ensemble")
    assert error.startswith(message), error
    assert "backbone.kwargs" not in error  # the training config's open keys are not the ensemble's


def test_an_unknown_key_names_the_keys_that_are_there():
    [error] = hydra_jobs.command_line_errors(["+optimizer.lrr=1"])
    assert error == (
        "unknown key 'optimizer.lrr' (+optimizer.lrr=1); did you mean optimizer.lr? optimizer takes: keras_class, "
        "kwargs, lr, name, weight_decay (any key under backbone.kwargs, optimizer.kwargs and tags)"
    )


def test_a_run_tag_is_accepted_with_plus_and_a_plain_one_says_so():
    assert hydra_jobs.command_line_errors(["+tags.purpose=baseline"]) == []
    [error] = hydra_jobs.command_line_errors(["tags.purpose=baseline"])
    assert error.endswith("add a run tag with +tags.purpose=baseline"), error


# Every job of a sweep (the callback's part).


def test_an_argument_only_some_backbones_take_is_accepted_with_plus_plus(hydra_app, image_folders, tracking_uri):
    rest = ["image_size=32", *TINY, *folder_data(image_folders), f"tracking.uri={tracking_uri}"]
    master = master_config(["backbone=mobilenet,mobilenetv2", "++backbone.kwargs.alpha=0.35", *rest])
    loader = GlobalHydra.instance().config_loader()

    jobs = hydra_jobs.basic_sweeper_jobs(master, loader)
    assert [job[0] for job in jobs] == ["backbone=mobilenet", "backbone=mobilenetv2"]
    assert hydra_jobs.job_errors(master) == []
    for job in jobs:
        cfg, errors = hydra_jobs.composed_job(lambda kept: loader.load_sweep_config(master, kept), job, loader)
        assert errors == [] and cfg.backbone.kwargs.alpha == 0.35

    fixed_backbone = master_config(["backbone=mobilenet", "backbone.kwargs.alpha=0.25", "dropout=0.2,0.4", *rest])
    assert hydra_jobs.job_errors(fixed_backbone) == []
    no_alpha = ["backbone=xception", "backbone.kwargs.alpha=0.25", *rest]  # without ++, where xception has none
    assert hydra_jobs.composed_job(lambda kept: loader.load_sweep_config(master, kept), no_alpha, loader)[1] == [
        "unknown key 'backbone.kwargs.alpha' (backbone.kwargs.alpha=0.25); "
        "add a constructor argument with ++backbone.kwargs.alpha=0.25"
    ]


def test_a_presets_sweep_is_checked_with_the_command_line_winning(hydra_app, tracking_uri):
    master = master_config(["experiment=demo", "dropout=0.3,1.5", f"tracking.uri={tracking_uri}"])
    jobs = hydra_jobs.basic_sweeper_jobs(master, GlobalHydra.instance().config_loader())
    grid = [["experiment=demo", f"optimizer={o}", f"dropout={d}"] for o in ("adam", "rmsprop") for d in ("0.3", "1.5")]
    chosen = [sorted(o for o in job if not o.startswith("tracking.")) for job in jobs]
    assert sorted(chosen) == sorted(map(sorted, grid))  # the preset sweeps dropout 0.2,0.5
    assert hydra_jobs.job_errors(master) == ["dropout=1.5 is invalid; expected a number in [0, 1)"]


def test_a_swept_value_of_the_wrong_type_is_named_once_for_its_job(hydra_app, tracking_uri):
    master = master_config(
        ["experiment=demo", "gpu.memory_growth=maybe,true", "epochs=1,2.5", f"tracking.uri={tracking_uri}"]
    )
    assert sorted(hydra_jobs.job_errors(master)) == [
        "epochs=2.5 is invalid; expected an integer >= 1",
        "gpu.memory_growth='maybe' is invalid; expected true or false",
    ]

"""simpsons/optimizers.py: conf/optimizer/ as Keras optimizers, with decoupled weight decay on each."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import train_settings

from simpsons.config import flatten, group_options
from simpsons.optimizers import build_optimizer


def one_step(optimizer: keras.optimizers.Optimizer) -> float:
    """A weight of 1.0 after one step of `optimizer` with a zero gradient: only weight decay moves it."""
    weight = keras.Variable(np.ones(1, dtype="float32"))
    optimizer.apply_gradients([(keras.ops.zeros(1), weight)])
    return float(weight.numpy()[0])


@pytest.mark.parametrize("name", group_options("optimizer"))
def test_weight_decay_shrinks_every_optimizers_weights_by_lr_times_itself(name):
    chosen = train_settings([f"optimizer={name}", "optimizer.lr=0.1", "optimizer.weight_decay=0.5"])
    assert one_step(build_optimizer(chosen.optimizer)) == pytest.approx(1 - 0.1 * 0.5)
    # Fine-tuning's rate: the decay follows the rate the optimizer is built with.
    assert one_step(build_optimizer(chosen.optimizer, lr=0.01)) == pytest.approx(1 - 0.01 * 0.5)


@pytest.mark.parametrize("name", group_options("optimizer"))
def test_a_weight_decay_of_0_is_off(name):
    chosen = train_settings([f"optimizer={name}", "optimizer.lr=0.1", "optimizer.weight_decay=0"])
    optimizer = build_optimizer(chosen.optimizer)
    assert one_step(optimizer) == 1.0
    # Keras's own off (no decay step at all, as before the key existed), where the class takes it;
    # AdamW takes only a number.
    assert optimizer.weight_decay == (0.0 if name == "adamw" else None)


def test_each_optimizers_default_is_as_before_the_key_existed_and_a_param():
    defaults = {name: train_settings([f"optimizer={name}"]) for name in group_options("optimizer")}
    assert {name: build_optimizer(chosen.optimizer).weight_decay for name, chosen in defaults.items()} == {
        "adam": None,
        "adamw": 0.004,  # what conf/optimizer/adamw.yaml passed in optimizer.kwargs before
        "rmsprop": None,
        "sgd": None,
    }
    # A run's params are its flattened config.
    assert flatten(defaults["adam"].container())["optimizer.weight_decay"] == 0

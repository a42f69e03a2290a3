"""The ensemble's own keys: a bad value is one line naming it and what would be accepted."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from simpsons.config import CONF_DIR
from simpsons.ensembling.options import check_options
from simpsons.errors import ConfigError


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="ensemble", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=vote", "method='vote' is unknown; use one of: mean, greedy"),
        ("weights=f1", "weights='f1' is unknown; use one of: equal, val_accuracy"),
        ("direction=up", "direction='up' is unknown; use one of: max, min"),
        ("top_n=0", "top_n=0 is invalid; expected an integer >= 1"),
        ("register=maybe", "register='maybe' is invalid; expected true or false"),
        ("calibrate=yes please", "calibrate='yes please' is invalid; expected true or false"),
        ("calibrate=1", "calibrate=1 is invalid; expected true or false"),
        ("registered_model=team:a", "registered_model='team:a' is invalid; expected a non-empty name without"),
        ("registered_model=' '", "registered_model=' ' is invalid"),
    ],
)
def test_a_bad_value_is_named_with_what_is_accepted(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_options(composed(override))

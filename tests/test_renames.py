"""Names renamed in 0.2.0: the old spelling still works for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("module", "old", "new_module", "new"),
    [
        ("anyup.baselines", "Upsampler", "anyup.baselines", "BaselineUpsampler"),
        ("anyup.baselines.base", "Upsampler", "anyup.baselines.base", "BaselineUpsampler"),
        ("anyup.train", "EncoderSpec", "anyup.train", "TrainEncoderSpec"),
        ("anyup.train.config", "EncoderSpec", "anyup.train.config", "TrainEncoderSpec"),
        ("anyup.guided", "upsample_signal", "anyup.signals", "upsample_signal"),
        ("anyup.guided", "read_signal", "anyup.signals", "read_signal"),
    ],
)
def test_old_name_warns_and_is_the_new_object(module, old, new_module, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is deprecated.*use .*{new}"):
        obj = getattr(mod, old)
    assert obj is getattr(importlib.import_module(new_module), new)
    assert old not in getattr(mod, "__all__", [])  # not advertised


def test_from_import_of_the_old_module_warns():
    with pytest.warns(DeprecationWarning, match="anyup.guided.upsample_signal is deprecated"):
        from anyup.guided import upsample_signal  # noqa: F401


def test_unknown_names_still_raise_attribute_error():
    import anyup.baselines as B

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        B.Nope  # noqa: B018

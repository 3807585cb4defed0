"""The run description (``jaxreg.train.config``): one home for a run's settings, its
defaults, bounds and JSON form, checked as flags are."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxreg.train import Setting, make_optimizer
from jaxreg.train import config as run_config
from jaxreg.train.config import OptimizerConfig, RunConfig


def run_dict(**changes):
    """A run's config.json contents with ``changes`` (``optimizer.<key>`` for its own)."""
    config = RunConfig(dataset="digits", model="linear", epochs=2, batch_size=32,
                       optimizer=OptimizerConfig(plateau=True, schedule="poly")).to_dict()
    for key, value in changes.items():
        where, _, inner = key.rpartition(".")
        (config[where] if where else config)[inner] = value
    return config


def test_config_json_round_trips_and_keeps_its_form():
    config = RunConfig.from_dict(run_dict())
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["optimizer"] == dict(
        name="adam", learning_rate=1e-3, schedule="poly", l2=0.0, l1=0.0, batch_scaled=False,
        proximal=False, plateau=dict(factor=0.5, patience=2), schedule_kwargs={"power": 2.0})


def test_optimizer_kwargs_are_make_optimizer_keywords_with_its_defaults():
    """The description's defaults are make_optimizer's (one source): the chains agree."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(make_optimizer).parameters.items()}
    for name, value in OptimizerConfig().kwargs().items():
        assert defaults[name] == value, name
    make_optimizer(**OptimizerConfig(weight_decay=0.1, name="adamw").kwargs())


@pytest.mark.parametrize("key, value, shown", [
    ("epochs", "2", "epochs='2'"),
    ("batch_size", "128", "batch_size='128'"),
    ("batch_size", 0, "batch_size=0"),
    ("seed", "0", "seed='0'"),
    ("seed", 2**70, f"seed={2**70}"),
    ("validation_split", 1e308, "validation_split=1e+308"),
    ("optimizer", [1, 2], "optimizer=[1, 2]"),
    ("optimizer.learning_rate", "0.1", "optimizer.learning_rate='0.1'"),
    ("optimizer.momentum", 0.9, "optimizer.momentum=0.9"),
    ("optimizer.plateau", {"factor": 0.5, "patience": 2, "mode": "max"},
     "optimizer.plateau.mode='max'"),
    ("model", 3, "model=3"),
    ("input_shape", [8, "x"], "input_shape=[8, 'x']"),
    ("unknown", 1, "unknown=1"),
])
def test_every_value_read_is_checked_naming_the_file_and_key(tmp_path, key, value, shown):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(run_dict(**{key: value})))
    with pytest.raises(ValueError) as e:
        RunConfig.read(path)
    named = shown.partition("=")[0]
    assert str(e.value).startswith(f"{path}: `{named}` must be") and str(e.value).endswith(shown)
    assert "\n" not in str(e.value)


def test_required_keys_and_bad_json_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    config = run_dict()
    del config["batch_size"]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"^{path}: no key 'batch_size'"):
        RunConfig.read(path, required=("batch_size",))
    path.write_text("{")
    with pytest.raises(ValueError, match=f"^{path}: not valid JSON"):
        RunConfig.read(path)


@pytest.mark.parametrize("field, value", [
    ("epochs", 2**31), ("plateau_patience", 10**23), ("lr_power", 1e308), ("l2", 1e23),
    ("l1", 1e23), ("weight_decay", 1e308), ("learning_rate", 1e39), ("learning_rate", np.nan),
])
def test_bounds_are_what_the_engine_represents(field, value):
    cls = RunConfig if field == "epochs" else OptimizerConfig
    with pytest.raises(ValueError, match=f"`{field}` must be"):
        cls(**{field: value})


def test_the_bounds_keep_the_engine_finite():
    """At its bound each value stays finite where the engine computes with it (float32): the
    poly schedule's power, a penalty gradient squared (Adam's second moment), the step count."""
    power = run_config.POWER_LIMIT
    t = np.float32(1) - np.float32(1) / np.float32(2**31 - 1)  # the last step's 1 - t/T
    assert np.isfinite(np.float32(1e-3) * t ** np.float32(power))
    grad = np.float32(run_config.ADAM_STRENGTH_LIMIT) * np.float32(16)
    assert np.isfinite(grad * grad)
    assert np.int32(run_config.STEP_LIMIT) == run_config.STEP_LIMIT
    with pytest.raises(ValueError, match="at most 2147483 at 1000 steps per epoch"):
        run_config.check_steps(2147484, 1000)


def test_flags_conditions_and_the_sweep_schema_derive_from_the_description():
    seed = run_config.field(RunConfig, "seed")
    assert run_config.condition(seed) == "an integer in [0, 4294967295]"
    assert run_config.flag_name(run_config.field(OptimizerConfig, "learning_rate")) == "lr"
    swept = {f.name: f for f in dataclasses.fields(Setting)}
    assert swept["l2"].default == OptimizerConfig().l2 and swept["batch_size"].default == 128
    with pytest.raises(ValueError, match="`l2` must be a number >= 0 up to"):
        Setting(l2=1e23)


def test_fit_and_make_plan_defaults_are_the_descriptions():
    import inspect

    from jaxreg.train import fit, make_plan

    run = RunConfig()
    for function in (fit, make_plan):
        parameters = inspect.signature(function).parameters
        for name in ("epochs", "batch_size", "seed", "validation_split"):
            assert parameters[name].default == getattr(run, name), (function.__name__, name)

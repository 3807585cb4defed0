"""Sweeps: a vmapped sweep equals separate ``fit`` runs; chunks, devices, groups, errors, CLI."""
from __future__ import annotations

import json
from types import SimpleNamespace

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxreg.data import load
from jaxreg.models import Linear, SeedMLP
from jaxreg.nn import BatchNorm
from jaxreg.train import fit
from jaxreg.train.sweep import chunk_capacity, expand, group_key, sweep
from jaxreg.train.sweep.memory import chunk_layout
from tests.helpers import run_module

MODEL = SeedMLP(hidden=16)
# seed 1 is the data seed: settings with seed 1 are exactly fit(seed=1); the seed-0 setting
# shares the program and the data stream with its own init.
SETTINGS = [
    {"l2": 0.0, "learning_rate": 0.03, "seed": 1},
    {"l2": 0.05, "batch_scaled": True, "l1": 1e-3, "seed": 1},
    {"l2": 0.01, "seed": 0},
]
KW = dict(
    epochs=2, batch_size=64, optimizer="momentum", learning_rate=0.01, data_seed=1, progress=False
)
# Momentum SGD rather than Adam: with BatchNorm the bias of the Dense layer before it has an
# exactly-zero true gradient, so Adam (g / sqrt(v)) turns its rounding noise into full-size
# steps, and any two programs disagree there by ~lr per step.


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def assert_close(a, b, tol=1e-5):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture(scope="module")
def swept(digits):
    return sweep(MODEL, digits, SETTINGS, **KW)


def test_sweep_equals_separate_fit_runs(digits, swept):
    assert [r.setting["seed"] for r in swept.results] == [1, 1, 0]
    for result in swept.results[:2]:
        s = result.setting
        ref = fit(
            MODEL,
            dict(
                name="momentum",
                learning_rate=s["learning_rate"],
                l2=s["l2"],
                l1=s["l1"],
                batch_scaled=s["batch_scaled"],
            ),
            digits,
            epochs=2,
            batch_size=64,
            seed=1,
            progress=False,
        )
        assert_close(result.params, ref.state.params)
        assert_close(result.model_state, ref.state.model_state)
        for k in ("loss", "accuracy", "l2_strength", "l1_strength", "learning_rate"):
            np.testing.assert_allclose(result.history[k], ref.history[k], rtol=1e-5, atol=1e-6)
        assert result.final["test_accuracy"] == pytest.approx(ref.test["accuracy"], abs=1e-6)
        assert result.final["test_loss"] == pytest.approx(ref.test["loss"], abs=1e-5)
        assert result.final["last_epoch_loss"] == result.history["loss"][-1]
    # batch-scaled L2 is the effective strength l2 / b
    assert swept.results[1].history["l2_strength"] == [pytest.approx(0.05 / 64)] * 2
    # another seed: another init, same program
    assert not np.allclose(leaves(swept.results[2].params)[0], leaves(swept.results[1].params)[0])
    assert len(swept.groups) == 1 and swept.groups[0]["chunks"] == 1


def test_chunks_give_the_same_results(digits, swept):
    chunked = sweep(
        MODEL, digits, SETTINGS, chunk_size=2, test=False, **KW
    )  # 2 chunks of 2, 1 padded
    assert chunked.groups[0]["chunks"] == 2 and chunked.groups[0]["chunk_size"] == 2
    for a, b in zip(chunked.results, swept.results, strict=True):
        assert a.setting == b.setting
        assert_close(a.params, b.params)
        assert_close(a.model_state, b.model_state)
        np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)


def test_eight_devices_match_one(tmp_path, swept):
    run_module("tests.programs.sweep", json.dumps(SETTINGS), json.dumps(KW),
               str(tmp_path / "out.npz"))
    out = np.load(tmp_path / "out.npz")
    expected = [a for res in swept.results for a in leaves((res.params, res.model_state))]
    for i, a in enumerate(expected):
        np.testing.assert_allclose(out[f"arr_{i}"], a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out["test"], [r.final["test_loss"] for r in swept.results], rtol=1e-5
    )


class MomentumMLP(nn.Module):
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(8)(x.reshape(x.shape[0], -1))
        return nn.Dense(3)(BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x))


def test_incompatible_settings_run_in_groups():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 5)).astype(np.float32), rng.integers(0, 3, 96).astype(np.int32)
    settings = [{"bn_momentum": 0.0}, {"bn_momentum": 0.9}, {"bn_momentum": 0.0, "l2": 1e-3},
                {"bn_momentum": 0.9, "batch_size": 48}]
    r = sweep(MomentumMLP(), (x, y), settings, epochs=1, batch_size=32, progress=False)
    assert [(g["key"]["batch_size"], g["key"]["bn_momentum"], g["settings"]) for g in r.groups] == [
        (32, 0.0, 2), (32, 0.9, 1), (48, 0.9, 1)]
    assert [
        (res.setting["bn_momentum"], res.setting["l2"], res.setting["batch_size"])
        for res in r.results
    ] == [(0.0, 0.0, 32), (0.9, 0.0, 32), (0.0, 1e-3, 32), (0.9, 0.0, 48)]  # the given order
    assert [len(res.history["loss"]) for res in r.results] == [1] * 4
    assert r.results[0].final.keys() == {"last_epoch_loss", "last_epoch_accuracy"}  # no test split
    # momentum 0: the running mean is the last batch's mean, unlike momentum 0.9's
    mean = lambda res: leaves(res.model_state)[0]  # noqa: E731
    assert not np.allclose(mean(r.results[0]), mean(r.results[1]))
    # a scheduled learning rate is in the program (a closure); a fixed one in the state
    base = expand(
        {"learning_rate": [0.1, 0.2]}, 1, **{**r.results[0].setting, "schedule_kwargs": {}}
    )
    assert group_key(base[0]) == group_key(base[1])
    poly = [{**s, "schedule": "poly"} for s in base]
    assert group_key(poly[0]) != group_key(poly[1])
    with pytest.raises(ValueError, match="bn_momentum.*Linear has none"):
        sweep(
            Linear(num_classes=3),
            (x, y),
            {"bn_momentum": [0.9]},
            epochs=1,
            batch_size=32,
            progress=False,
        )
    # the built-in models carry the field
    assert SeedMLP().clone(bn_momentum=0.9).bn_momentum == 0.9


@pytest.mark.parametrize(
    "spec, match",
    [
        ({}, "empty sweep grid"),
        ([], "empty list"),
        ({"l2": []}, "'l2' needs a non-empty list"),
        ({"l2": 0.1}, "'l2' needs a non-empty list"),
        ({"l2": [0.0, -1e-3]}, "`l2` must be a finite non-negative number; got l2=-0.001"),
        (
            {"learning_rate": [0.0]},
            "`learning_rate` must be a finite positive number; got learning_rate=0.0",
        ),
        (
            {"lambda": [1.0]},
            r"`lambda` must be a sweep setting key \(one of learning_rate, l2, .*\); "
            r"got lambda=1.0",
        ),
        ([{"l1": float("nan")}], "`l1` must be a finite non-negative number; got l1=nan"),
        ({"batch_scaled": ["on"]}, "`batch_scaled` must be True or False; got batch_scaled='on'"),
        ({"seed": [-1]}, r"`seed` must be an integer in \[0, 4294967295\]; got seed=-1"),
        ({"seed": [2**32]}, r"`seed` must be an integer in \[0, 4294967295\]; got seed=4294967296"),
        ({"optimizer": ["lbfgs"]}, "`optimizer` must be one of 'adam', .*; got optimizer='lbfgs'"),
        (
            {"batch_size": [1000]},
            "`batch_size` must be at most the 96 training examples; got batch_size=1000",
        ),
    ],
)
def test_bad_specs_raise_value_error_naming_the_key(spec, match):
    xy = (np.zeros((96, 5), np.float32), np.zeros(96, np.int32))
    with pytest.raises(ValueError, match=match):
        sweep(MomentumMLP(), xy, spec, epochs=1, batch_size=32, progress=False)


def test_chunk_capacity_from_device_memory():
    gpu = SimpleNamespace(memory_stats=lambda: {"bytes_limit": 1000, "bytes_in_use": 200})
    assert chunk_capacity(per_setting=30, data_bytes=50, device=gpu) == (400 - 100) // 30
    assert (
        chunk_capacity(per_setting=10**6, data_bytes=0, device=gpu, num_devices=8) == 8
    )  # at least 1 each
    cpu = SimpleNamespace(memory_stats=lambda: None)
    assert (
        chunk_capacity(per_setting=1 << 20, data_bytes=0, device=cpu) == 1024
    )  # 2 GiB default, half
    assert (
        chunk_layout(9, 8, 1) == (2, 5)
        and chunk_layout(9, 100, 8) == (1, 16)
        and chunk_layout(4, 3, 1) == (2, 2)
    )


def test_cli_sweep_writes_json_and_png(tmp_path, capsys):
    from jaxreg.cli import main

    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--dataset",
            "digits",
            "--l2",
            "0,1e-2",
            "--lr",
            "1e-2",
            "--seeds",
            "2",
            "--batch-scaled",
            "both",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert len(rows) == 4  # 2 lambdas x batch-scaled on/off, 2 seeds each
    assert {r["l2"] for r in rows} == {0.0, 0.01} and all(r["seeds"] == [0, 1] for r in rows)
    assert all(0 <= r["test_accuracy_mean"] <= 1 and r["test_accuracy_std"] >= 0 for r in rows)
    assert (out / "sweep.png").stat().st_size > 0
    assert all("last_epoch_loss_mean" in r and "train_loss_mean" not in r for r in rows)
    best = max(rows, key=lambda r: r["val_accuracy_mean"])  # chosen on validation, not test
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("best"))
    assert line.startswith("best by validation: ") and f"l2={best['l2']}," in line
    assert f"batch_scaled={best['batch_scaled']}," in line and "val_accuracy" in line

    assert (
        main(["sweep", "--dataset", "digits", "--l2", "0,-1", "--out", str(tmp_path / "bad")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "-1" in err


def test_setting_schema_is_one_frozen_dataclass():
    import dataclasses

    from jaxreg.train import Setting

    assert Setting.fields(vmapped=True) == ("learning_rate", "l2", "l1", "batch_scaled", "seed")
    assert Setting.fields(vmapped=False) == (
        "batch_size",
        "optimizer",
        "schedule",
        "schedule_kwargs",
        "proximal",
        "bn_momentum",
        "scaling",
        "scale_from",
        "warmup_steps",
    )
    s = Setting(l2=0.1, schedule_kwargs={"power": 2.0})
    assert s.schedule_kwargs == (("power", 2.0),) and s.as_dict()["schedule_kwargs"] == {
        "power": 2.0
    }
    assert s["l2"] == 0.1 and {**s}["batch_size"] == 128 and hash(s) == hash(Setting(**s))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.l2 = 0.2
    for bad in (
        dict(seed=True),
        dict(seed=2.0),
        dict(batch_size=0),
        dict(l2=True),
        dict(bn_momentum=1.5),
    ):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}` must be"):
            Setting(**bad)


def test_sweep_without_a_data_seed_trains_each_setting_as_fit_at_its_seed(digits):
    # data_seed=None: each setting shuffles as fit(seed=setting.seed), so seeds 0 and 2 (neither
    # a shared data seed) both reproduce their own fit runs, and their data orders differ.
    settings = [{"l2": 0.01, "seed": 0}, {"l2": 0.01, "seed": 2}]
    result = sweep(MODEL, digits, settings, **{**KW, "data_seed": None})
    for r in result.results:
        ref = fit(MODEL, dict(name="momentum", learning_rate=0.01, l2=0.01), digits, epochs=2,
                  batch_size=64, seed=r.setting.seed, progress=False)
        assert_close(r.params, ref.state.params)
        assert_close(r.model_state, ref.state.model_state)
        np.testing.assert_allclose(r.history["loss"], ref.history["loss"], rtol=1e-5, atol=1e-6)
    shared = sweep(MODEL, digits, settings[1:], **{**KW, "data_seed": 0})
    assert not np.allclose(shared.results[0].history["loss"], result.results[1].history["loss"])


def test_sweep_validation_split_equals_fit_validation(digits):
    """sweep(validation_split=f) trains on what fit(validation_split=f) trains on and reports
    fit's final val_* metrics per setting."""
    s = SETTINGS[0]
    r = sweep(MODEL, digits, [s], **{**KW, "epochs": 1}, validation_split=0.2).results[0]
    ref = fit(MODEL, dict(name="momentum", learning_rate=s["learning_rate"]), digits, epochs=1,
              batch_size=64, seed=1, validation_split=0.2, progress=False)
    assert_close(r.params, ref.state.params)
    assert r.final["val_loss"] == pytest.approx(ref.history["val_loss"][-1], abs=1e-5)
    assert r.final["val_accuracy"] == pytest.approx(ref.history["val_accuracy"][-1], abs=1e-6)
    assert r.final["test_loss"] == pytest.approx(ref.test["loss"], abs=1e-5)


def test_sweep_selection_uses_validation_not_test():
    from jaxreg.cli.sweep import select_best
    rows = [{"val_accuracy_mean": 0.9, "test_accuracy_mean": 0.5, "k": 0},
            {"val_accuracy_mean": 0.8, "test_accuracy_mean": 0.95, "k": 1}]
    assert select_best(rows) == (rows[0], "val_accuracy_mean")
    assert select_best([{"val_loss_mean": 2.0}, {"val_loss_mean": 1.0}])[0] == {
        "val_loss_mean": 1.0
    }
    assert select_best([{"test_accuracy_mean": 0.9}]) is None


class NoBiasBNMLP(nn.Module):
    """``Dense(16, no bias) -> BatchNorm -> relu -> Dense(10)``: with Adam, a bias before
    BatchNorm has an exactly-zero gradient whose rounding noise Adam turns into full steps
    (see ``KW``); without it every parameter has a real gradient."""
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(16, use_bias=False)(x.reshape(x.shape[0], -1))
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
        return nn.Dense(10)(nn.relu(x))


@pytest.mark.parametrize("case", ["adam-sqrt-ema", "sgd-linear-warmup"])
def test_sweep_with_a_scaling_rule_equals_fit(digits, case):
    """At ``k = 64 / 16 = 4``, each setting trains as ``fit`` with the same rule (seed 1, the
    data seed): Adam + sqrt + ema on a BatchNorm model (``b1``, ``b2``, ``eps`` and the BN
    momentum are the group's, the learning rates vmapped), SGD + linear with a warmup of 30
    steps at B0 (``ceil(30 / 4) = 8`` at B; the learning rate in each group's closure)."""
    if case == "adam-sqrt-ema":
        model, name, rules, extra = NoBiasBNMLP(), "adam", "sqrt,ema", {}
        settings = [{"learning_rate": 1e-3, "seed": 1}, {"learning_rate": 3e-3, "seed": 1},
                    {"learning_rate": 1e-3, "seed": 0}]
    else:
        model, name, rules, extra = MODEL, "sgd", "linear", {"warmup_steps": 30}
        settings = [{"learning_rate": 0.02, "seed": 1},
                    {"learning_rate": 0.05, "l2": 1e-3, "seed": 1}]
    result = sweep(model, digits, settings, epochs=2, batch_size=64, optimizer=name,
                   scaling=rules, scale_from=16, data_seed=1, progress=False, **extra)
    for r in result.results[:2]:
        s = r.setting
        ref = fit(model, dict(name=name, learning_rate=s.learning_rate, l2=s.l2,
                              scaling=rules.split(","), scale_from=16, **extra),
                  digits, epochs=2, batch_size=64, seed=1, progress=False)
        assert_close(r.params, ref.state.params)
        assert_close(r.model_state, ref.state.model_state)
        for k in ("loss", "learning_rate", "l2_strength"):
            np.testing.assert_allclose(r.history[k], ref.history[k], rtol=1e-5, atol=1e-7)
        if name == "adam":
            want = dict(learning_rate=2 * s.learning_rate, l2=0.0, b1=0.6, b2=0.996, eps=5e-9,
                        warmup_steps=0, bn_momentum=0.99 ** 4)
        else:
            want = dict(learning_rate=4 * s.learning_rate, l2=s.l2, warmup_steps=8,
                        bn_momentum=0.99)  # the model's, which rule "linear" leaves
        assert r.scaled.keys() == want.keys()
        for k, v in want.items():
            assert r.scaled[k] == pytest.approx(v, rel=1e-12), k
    if name == "sgd":  # the first epoch's last step (t = 21) is past the warmup of 8 steps
        assert result.results[0].history["learning_rate"][0] == pytest.approx(0.08, rel=1e-6)
        assert len(result.groups) == 2  # a warmed-up learning rate is in the program
    else:
        assert len(result.groups) == 1
        assert not np.allclose(leaves(result.results[2].params)[0],
                               leaves(result.results[0].params)[0])  # its own init


@pytest.mark.parametrize("spec, match", [
    ({"scaling": "bogus", "scale_from": 16}, "`scaling` must be rule names separated by commas"),
    ({"scaling": "sqrt"}, "`scale_from` must be given with scaling .*; got scale_from=None"),
    ({"scale_from": 16}, "`scale_from` must be given with scaling .*; got scale_from=16"),
    ({"scaling": "sqrt", "scale_from": 0}, r"`scale_from` must be a positive integer"),
    ({"warmup_steps": -1}, r"`warmup_steps` must be an integer in \[0, "),
    ({"scaling": "sqrt", "scale_from": 16, "optimizer": "sgd"},
     "`scaling` must be a rule for the recipe's optimizer 'sgd'"),
    ({"scaling": "sqrt", "scale_from": 1, "batch_size": 64},
     r"`b1` must be a number in \[0, 1\) after the sqrt rule at k = 64"),
])
def test_bad_scaling_settings_name_the_field(spec, match):
    xy = (np.zeros((96, 5), np.float32), np.zeros(96, np.int32))
    with pytest.raises(ValueError, match=match) as e:
        sweep(MomentumMLP(), xy, [spec], epochs=1, batch_size=32, optimizer="adam",
              progress=False)
    assert "\n" not in str(e.value)


def test_ema_in_a_sweep_needs_a_model_with_bn_momentum():
    xy = (np.zeros((96, 5), np.float32), np.zeros(96, np.int32))
    with pytest.raises(ValueError, match="`scaling` must be rules for the model: 'ema' needs"):
        sweep(Linear(num_classes=3), xy, [{"scaling": "sqrt,ema", "scale_from": 16}], epochs=1,
              batch_size=32, progress=False)


def test_cli_sweep_takes_rules(tmp_path, capsys):
    """``--scaling none,sqrt+ema --scale-from 16`` at ``--batch-size 64``: a row per grid value,
    each with the values its rules resolved (``k = 4``) in ``sweep.json``."""
    from jaxreg.cli import main

    out = tmp_path / "sweep"
    code = main(["sweep", "--dataset", "digits", "--l2", "0", "--epochs", "1", "--batch-size",
                 "64", "--scale-from", "16", "--scaling", "none,sqrt+ema", "--no-progress",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["scaling"], r["scale_from"]) for r in rows] == [("none", 16), ("sqrt,ema", 16)]
    none, sqrt = (r["scaled"] for r in rows)
    assert none["learning_rate"] == pytest.approx(1e-3) and none["b1"] == pytest.approx(0.9)
    assert sqrt["learning_rate"] == pytest.approx(2e-3) and sqrt["b1"] == pytest.approx(0.6)
    assert sqrt["bn_momentum"] == pytest.approx(0.99 ** 4) and none["bn_momentum"] == 0.99
    assert rows[1]["history"]["learning_rate"] == [pytest.approx(2e-3)]
    for argv, message in (
        (["--scaling", "sqrt+bogus", "--scale-from", "16"], "--scaling: expected rule names"),
        (["--scaling", "sqrt"], "`scale_from` must be given with scaling"),
        (["--scale-from", "16"], "`scale_from` must be given with scaling"),
        (["--warmup-steps", "-2"], "--warmup-steps: expected an integer in [0, "),
    ):
        code = main(["sweep", "--dataset", "digits", "--epochs", "1", *argv, "--out",
                     str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and message in err, err

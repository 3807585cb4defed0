"""The scaling rules wired into the engine (issue 23 item 1): make_optimizer, fit and
``jaxreg train --scale-from B0 --scaling RULE[,RULE]`` resolve the closed forms, follow a
batch-size schedule, write them to config.json and print them; bad input one line."""
import json
import math

import jax
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from jaxreg import models
from jaxreg.train import fit, make_optimizer
from tests.helpers import run_main


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images[:640] / 16.0).astype(np.float32)[..., None], d.target[:640].astype(np.int32)


def sqrt_closed_form(k, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    return dict(learning_rate=math.sqrt(k) * lr, b1=1 - k * (1 - b1), b2=1 - k * (1 - b2),
                eps=eps / math.sqrt(k))


def test_make_optimizer_at_a_batch_size_is_the_closed_form():
    """At one ``B``, the sqrt rule's values are the optimizer's as if given: equal updates."""
    opt = make_optimizer("adam", 1e-3, scaling="sqrt", scale_from=128, batch_size=512)
    k = sqrt_closed_form(4)
    ref = make_optimizer("adam", k.pop("learning_rate"), **k)
    params = {"kernel": np.ones(3, np.float32)}
    states = [o.tx.init(params) for o in (opt, ref)]
    for grad in np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32):
        out = [o.tx.update({"kernel": grad}, s, params, batch_size=512)
               for o, s in zip((opt, ref), states, strict=True)]
        np.testing.assert_array_equal(out[0][0]["kernel"], out[1][0]["kernel"])
        states = [o[1] for o in out]


def test_a_schedule_moves_each_hyperparameter_at_its_step():
    """With ``{0: 128, 10: 512}`` and a cosine schedule over 20 steps: the sqrt rule's values
    from step 10 on, the learning rate ``sqrt(4) eta (1 + cos(pi t / 20)) / 2``."""
    opt = make_optimizer("adam", 1e-3, scaling="sqrt", scale_from=128, schedule="cosine",
                         total_steps=20, batch_size={0: 128, 10: 512})
    params = {"kernel": np.ones(2, np.float32)}
    state = opt.tx.init(params)
    for t in range(12):
        _, state = opt.tx.update(params, state, params, batch_size=1)
        got = optax.tree_utils.tree_get(state, "hyperparams")
        want = sqrt_closed_form(1 if t < 10 else 4)
        want["learning_rate"] *= (1 + math.cos(math.pi * t / 20)) / 2
        for k, v in want.items():
            np.testing.assert_allclose(float(got[k]), v, rtol=1e-5, err_msg=f"{k} at step {t}")


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="adam", scaling="linear"), "`scaling` must be a rule for the recipe's optimizer "
                                          "'adam' .* got scaling='linear'"),
    (dict(name="sgd", scaling="sqrt"), "`scaling` must be a rule for the recipe's optimizer"),
    (dict(name="adamw", scaling="normalized_weight_decay"),
     "`num_examples` must be set in the recipe: rule 'normalized_weight_decay' needs it"),
    (dict(name="adam", scaling="sqrt", scale_from=None), "`scale_from` must be an integer"),
    (dict(name="adam", scaling="sqrt", batch_size=0), "`batch_size` must be an integer >= 1"),
    (dict(name="adam", scaling="bogus"), "`scaling` must be one of .none., .batch_scaled."),
])
def test_bad_rules_are_one_line(kwargs, match):
    kwargs = {"scale_from": 128, "batch_size": 512, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match) as e:
        make_optimizer(**kwargs)
    assert "\n" not in str(e.value)


def test_fit_ema_rule_is_the_model_with_rho_to_the_k(digits):
    """``scaling=["sqrt", "ema"]`` from B0 = 32 at B = 64 trains bit for bit as the model with
    ``bn_momentum = 0.99^2`` and Adam with the sqrt rule's values given directly."""
    common = dict(epochs=2, batch_size=64, seed=3, validation_split=0.2, progress=False,
                  test=False)
    got = fit(models.SeedMLP(), dict(name="adam", learning_rate=1e-3, scaling=["sqrt", "ema"],
                                     scale_from=32), digits, **common)
    k = sqrt_closed_form(2)
    ref = fit(models.SeedMLP(bn_momentum=0.99 ** 2),
              make_optimizer("adam", k.pop("learning_rate"), **k), digits, **common)
    for a, b in zip(jax.tree.leaves((got.state.params, got.state.model_state)),
                    jax.tree.leaves((ref.state.params, ref.state.model_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(got.history["learning_rate"], [math.sqrt(2) * 1e-3] * 2,
                               rtol=1e-6)


def test_ema_needs_a_model_with_bn_momentum(digits):
    with pytest.raises(ValueError, match="`scaling` must be rules for the model: 'ema' needs"):
        fit(models.Linear(num_classes=10), dict(name="adam", scaling="ema", scale_from=32), digits,
            epochs=1, batch_size=64, progress=False)


@pytest.fixture
def xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_cli_writes_and_prints_the_resolved_values(tmp_path, xdg_cache):
    run_dir = tmp_path / "run"
    status, out, err = run_main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size",
                                 "64", "--scale-from", "32", "--scaling", "sqrt,ema",
                                 "--no-progress", "--out", str(run_dir)])
    assert status == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["optimizer"]["scaling"] == ["sqrt", "ema"]
    want = {**sqrt_closed_form(2), "bn_momentum": 0.99 ** 2}
    scaled = config["scaled"]["64"]
    for key, value in want.items():
        assert scaled[key] == pytest.approx(value, rel=1e-12), key
    line = [x for x in out.splitlines() if x.startswith("scaled: B=64: ")]
    assert len(line) == 1 and f"b1 {want['b1']:.6g}" in line[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["learning_rate"][0] == pytest.approx(math.sqrt(2) * 1e-3, 1e-6)
    assert run_main(["eval", "--run", str(run_dir)])[0] == 0  # config.json reads back


@pytest.mark.parametrize("argv, message", [
    (["--scaling", "linear", "--scale-from", "32"], "`scaling` must be a rule for the recipe's "
                                                    "optimizer 'adam'"),
    (["--scaling", "sqrt"], "`scale_from` must be given with scaling"),
    (["--scale-from", "32"], "`scale_from` must be given with scaling"),
    (["--scaling", "sqrt,bogus", "--scale-from", "32"], "`scaling` must be rule names"),
    (["--scale-from", "0", "--scaling", "sqrt"], "--scale-from: expected a positive integer"),
])
def test_cli_bad_scaling_exits_2_with_one_line(argv, message, xdg_cache):
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "1", *argv])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert message in err and "Traceback" not in err


def test_the_fingerprint_records_the_optimizer_as_given(digits):
    """Not the dict ``fit`` completes (``batch_size``, ``num_examples``, ``epochs``): a resume
    with more epochs keeps matching its checkpoints."""
    from jaxreg.train.plan import make_plan

    opt = dict(name="adam", scaling="sqrt", scale_from=32)
    plan = make_plan(models.SeedMLP(), opt, digits, epochs=2, batch_size=64,
                     validation_split=0.2)
    assert plan.identity["optimizer"] == opt
    assert plan.scaled[64]["learning_rate"] == pytest.approx(math.sqrt(2) * 1e-3)


def test_the_rule_moves_the_warmup_and_the_run_trains_with_it(digits):
    """Linear rule at ``k = 4``: ``w = 100`` at B0 = 32 becomes ``ceil(100 / 4) = 25`` steps at
    B = 128; ``fit``'s learning rate after epoch 1 (5 steps) is ``4 eta min(1, 5 / 25)``."""
    opt = make_optimizer("sgd", 0.1, scaling="linear", scale_from=32, batch_size=128,
                         warmup_steps=100)
    params = {"kernel": np.ones(2, np.float32)}
    state = opt.tx.init(params)
    for t in range(30):
        _, state = opt.tx.update(params, state, params)
        lr = float(optax.tree_utils.tree_get(state, "hyperparams")["learning_rate"])
        assert lr == pytest.approx(0.4 * min(1, (t + 1) / 25), rel=1e-6), t
    from jaxreg.train.plan import make_plan

    given = dict(name="sgd", learning_rate=0.1, scaling="linear", scale_from=32,
                 warmup_steps=100)
    plan = make_plan(models.SeedMLP(), given, digits, epochs=2, batch_size=128)
    assert plan.scaled[128]["warmup_steps"] == 25
    result = fit(models.SeedMLP(), given, digits, epochs=2, batch_size=128, progress=False,
                 test=False)
    np.testing.assert_allclose(result.history["learning_rate"], [0.4 * 5 / 25, 0.4 * 10 / 25],
                               rtol=1e-6)


def test_cli_warmup_round_trip(tmp_path, xdg_cache):
    """``--warmup-steps`` reaches config.json (read back by ``jaxreg eval``), the printed and
    written ``scaled`` values (moved by the linear rule) and the trained learning rate."""
    run_dir = tmp_path / "run"
    status, out, err = run_main(["train", "--dataset", "digits", "--epochs", "1", "--optimizer",
                                 "sgd", "--lr", "0.05", "--batch-size", "128", "--scale-from",
                                 "32", "--scaling", "linear", "--warmup-steps", "400",
                                 "--no-progress", "--out", str(run_dir)])
    assert status == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["optimizer"]["warmup_steps"] == 400
    assert config["scaled"]["128"]["warmup_steps"] == 100
    assert "warmup_steps 100" in [x for x in out.splitlines() if x.startswith("scaled:")][0]
    from jaxreg.data import load

    steps = len(load("digits").x_train) // 128
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["learning_rate"][0] == pytest.approx(0.2 * steps / 100, rel=1e-6)
    assert run_main(["eval", "--run", str(run_dir)])[0] == 0  # config.json reads back


@pytest.mark.parametrize("value, message", [
    ("-1", "--warmup-steps: expected an integer in [0, 2147483647], got '-1'"),
    ("2.5", "--warmup-steps: expected an integer in [0, 2147483647], got '2.5'"),
])
def test_cli_bad_warmup_exits_2_with_one_line(value, message, xdg_cache):
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "1",
                               "--warmup-steps", value])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert message in err and "Traceback" not in err


def test_config_json_warmup_is_checked_when_read(tmp_path):
    from jaxreg.train.config import RunConfig

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"optimizer": {"name": "sgd", "warmup_steps": -3}}))
    with pytest.raises(ValueError,
                       match=r"`optimizer.warmup_steps` must be an integer in \[0, ") as e:
        RunConfig.read(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert RunConfig.from_dict({"optimizer": {"warmup_steps": 7}}).optimizer.warmup_steps == 7


def test_warmup_along_a_batch_size_schedule_is_the_first_sizes():
    """``{0: 64, 10: 128}`` from B0 = 32 by the linear rule, ``w = 40`` at B0: the warmup is
    the first size's, ``ceil(40 / 2) = 20`` steps, multiplying the piecewise rate (``2 eta``
    until step 10, ``4 eta`` after): ``eta_t = 0.1 k_t min(1, (t + 1) / 20)``."""
    opt = make_optimizer("sgd", 0.1, scaling="linear", scale_from=32,
                         batch_size={0: 64, 10: 128}, warmup_steps=40)
    params = {"kernel": np.ones(2, np.float32)}
    state = opt.tx.init(params)
    for t in range(25):
        _, state = opt.tx.update(params, state, params)
        lr = float(optax.tree_utils.tree_get(state, "hyperparams")["learning_rate"])
        want = 0.1 * (2 if t < 10 else 4) * min(1, (t + 1) / 20)
        assert lr == pytest.approx(want, rel=1e-6), t

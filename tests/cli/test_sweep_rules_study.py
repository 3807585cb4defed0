"""``jaxreg sweep --study batch-size-rules`` (issue 23 item 3): a row per rule and batch size,
the rules' closed-form learning rate in effect, "n/a" where a rule cannot be applied."""
import json
import math

import numpy as np
import pytest

from tests.helpers import run_main


@pytest.fixture(autouse=True)
def xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_rules_study_on_digits(tmp_path):
    out = tmp_path / "study"
    status, stdout, err = run_main([
        "sweep", "--study", "batch-size-rules", "--dataset", "digits", "--epochs", "1",
        "--seeds", "2", "--batch-size", "32", "--batch-sizes", "32,128,1024",
        "--validation-split", "0", "--no-progress", "--out", str(out)])
    assert status == 0, err
    rows = json.loads((out / "rules.json").read_text())["rows"]
    assert [(r["rule"], r["batch_size"]) for r in rows] == [
        (rule, b) for rule in ("none", "sqrt", "sqrt,ema", "sqrt_lr,ema") for b in (32, 128, 1024)]
    by = {(r["rule"], r["batch_size"]): r for r in rows}
    # sqrt at k = 32 pushes b1 to 1 - 32 * 0.1 < 0: not applicable, said why
    assert "`b1` must be a number in [0, 1)" in by["sqrt", 1024]["error"]
    assert by["none", 1024]["steps"] == 1437 // 1024
    per_seed = by["sqrt", 128]["test_accuracy"]  # seeds 0 and 1, JSON keys
    assert sorted(per_seed) == ["0", "1"]
    assert np.mean(list(per_seed.values())) == pytest.approx(by["sqrt", 128]["test_accuracy_mean"])
    assert by["sqrt", 128]["steps"] == 1437 // 128
    assert by["none", 32]["within_one_point"] is True  # B0 itself
    assert (out / "rules.png").stat().st_size > 0
    assert "sqrt b=1024  n/a" in stdout


def test_scaling_flag_is_checked():
    status, _, err = run_main(["sweep", "--study", "batch-size-rules", "--scaling", "bogus"])
    assert status == 2 and "--scaling: expected rule names" in err


def test_linear_rule_learning_rate_in_the_study(tmp_path):
    """``--scaling linear`` with SGD: the rule applied, unchanged beside it."""
    out = tmp_path / "study"
    status, _, err = run_main([
        "sweep", "--study", "batch-size-rules", "--dataset", "digits", "--epochs", "1",
        "--optimizer", "sgd", "--lr", "0.01", "--batch-size", "32", "--batch-sizes", "64",
        "--scaling", "linear", "--validation-split", "0", "--no-progress", "--out", str(out)])
    assert status == 0, err
    rows = json.loads((out / "rules.json").read_text())["rows"]
    assert [r["rule"] for r in rows] == ["none", "linear"]
    assert all(math.isfinite(r["test_accuracy_mean"]) for r in rows)
    assert [r["learning_rate"] for r in rows] == pytest.approx([0.01, 0.01 * 64 / 32])


def test_the_study_is_a_vmapped_sweep_whose_first_seed_is_fit(tmp_path):
    """A (rule, size) group is one sweep over the seeds: the first seed's run is
    ``fit(seed=0)``'s with the same rules (SGD with momentum: Adam turns the rounding noise of
    the zero-gradient bias before BatchNorm into full steps), the resolved values are in the row,
    and the rules take the grid syntax (``linear+ema``)."""
    import numpy as np

    from jaxreg import models
    from jaxreg.data import load
    from jaxreg.train import fit

    out = tmp_path / "study"
    status, _, err = run_main([
        "sweep", "--study", "batch-size-rules", "--dataset", "digits", "--epochs", "2",
        "--optimizer", "momentum", "--lr", "0.05", "--batch-size", "32", "--batch-sizes", "64",
        "--scaling", "linear+ema", "--seeds", "1", "--validation-split", "0", "--no-progress",
        "--out", str(out)])
    assert status == 0, err
    rows = json.loads((out / "rules.json").read_text())["rows"]
    assert [r["rule"] for r in rows] == ["none", "linear,ema"]
    assert rows[1]["scaled"]["learning_rate"] == pytest.approx(0.1) and rows[1]["scaled"][
        "bn_momentum"] == pytest.approx(0.99 ** 2)
    for row in rows:
        ref = fit(models.get("seed-mlp", 10), dict(name="momentum", learning_rate=0.05,
                                                   scaling=row["rule"].split(","), scale_from=32),
                  load("digits"), epochs=2, batch_size=64, seed=0, progress=False)
        assert row["steps"] == int(ref.state.step)
        assert row["test_accuracy_mean"] == pytest.approx(ref.test["accuracy"], abs=1e-6)
        np.testing.assert_allclose(row["loss"], ref.history["loss"], rtol=1e-5)

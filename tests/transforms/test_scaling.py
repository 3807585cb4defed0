"""jaxreg.scaling: each batch-size rule against its closed form, the laws, the bad input."""
import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxreg
from jaxreg.transforms.scaling import RULES, Recipe, scale

SGD = Recipe(batch_size=128, learning_rate=0.1, optimizer="momentum", momentum=0.9, l2=5e-4,
             bn_momentum=0.9, warmup_steps=100, epochs=90, num_examples=1_281_167)
ADAMW = Recipe(batch_size=64, learning_rate=1e-3, optimizer="adamw", weight_decay=0.05,
               b1=0.9, b2=0.999, eps=1e-8, bn_momentum=0.99, warmup_steps=10, epochs=10,
               num_examples=60_000)


def test_none_changes_only_the_batch_size():
    assert scale(SGD, 1024) == dataclasses.replace(SGD, batch_size=1024)
    assert scale(ADAMW, 16, "none") == dataclasses.replace(ADAMW, batch_size=16)


def test_batch_scaled_is_lambda_over_b():
    # seed 000: lambda = l2 * B0 is fixed, the strength at B is lambda / B
    new = scale(SGD, 512, "batch_scaled")
    assert new.l2 == pytest.approx(5e-4 * 128 / 512, rel=1e-15)
    assert new.l2 == pytest.approx(jaxreg.batch_scaled_strength(5e-4 * 128, 512), rel=1e-15)
    assert new.learning_rate == SGD.learning_rate


def test_linear_goyal():
    new = scale(SGD, 8192, "linear")  # k = 64, Goyal et al.'s ImageNet in one hour
    assert new.learning_rate == pytest.approx(0.1 * 64, rel=1e-15)
    assert new.warmup_steps == math.ceil(100 / 64) == 2  # the same examples of warmup
    assert (new.momentum, new.l2, new.batch_size) == (0.9, 5e-4, 8192)
    five_epochs = dataclasses.replace(SGD, warmup_steps=5 * 1_281_167 // 128)
    assert scale(five_epochs, 8192, "linear").warmup_steps == math.ceil(5 * 1_281_167 // 128 / 64)


def test_sqrt_sde_rule():
    new = scale(ADAMW, 256, "sqrt")  # k = 4
    assert new.learning_rate == pytest.approx(2e-3, rel=1e-15)
    assert 1 - new.b1 == pytest.approx(4 * 0.1, rel=1e-12)
    assert 1 - new.b2 == pytest.approx(4 * 0.001, rel=1e-12)
    assert new.eps == pytest.approx(0.5e-8, rel=1e-15)
    assert new.warmup_steps == math.ceil(10 / 4)
    assert new.weight_decay == ADAMW.weight_decay
    small = scale(ADAMW, 16, "sqrt")  # k = 1/4
    assert small.learning_rate == pytest.approx(0.5e-3) and 1 - small.b1 == pytest.approx(0.025)


def test_sqrt_lr_hoffer():
    for recipe in (SGD, ADAMW):
        new = scale(recipe, recipe.batch_size * 64, "sqrt_lr")  # k = 64: beyond the SDE rule
        assert new.learning_rate == pytest.approx(8 * recipe.learning_rate, rel=1e-15)
        assert new.warmup_steps == math.ceil(recipe.warmup_steps / 64)
        assert dataclasses.replace(new, learning_rate=recipe.learning_rate, warmup_steps=recipe
                                   .warmup_steps, batch_size=recipe.batch_size) == recipe
    with pytest.raises(ValueError, match="b1"):
        scale(ADAMW, 64 * 64, "sqrt")


def test_normalized_weight_decay_loshchilov_hutter():
    n, t = 60_000, 10
    lam_norm = 0.05 / math.sqrt(64 / (n * t))
    new = scale(ADAMW, 1024, "normalized_weight_decay")
    assert new.weight_decay == pytest.approx(lam_norm * math.sqrt(1024 / (n * t)), rel=1e-14)
    assert new.weight_decay == pytest.approx(0.05 * 4, rel=1e-14)  # sqrt(k), k = 16


def test_timescale_wang_aitchison():
    tau = 64 / (1e-3 * 0.05 * 60_000)
    new = scale(ADAMW, 512, "timescale")
    assert 512 / (new.learning_rate * new.weight_decay * 60_000) == pytest.approx(tau, rel=1e-14)
    assert new.weight_decay == pytest.approx(0.05 * 8, rel=1e-14)


def test_ema_busbridge():
    new = scale(ADAMW, 640, "ema")
    assert new.bn_momentum == pytest.approx(0.99 ** 10, rel=1e-15)
    both = scale(ADAMW, 640, ("sqrt", "ema"))
    assert (both.bn_momentum, both.learning_rate) == (new.bn_momentum,
                                                     scale(ADAMW, 640, "sqrt").learning_rate)


def test_rules_listed_for_the_cli():
    assert set(RULES) == {"none", "batch_scaled", "linear", "sqrt", "sqrt_lr",
                          "normalized_weight_decay", "timescale", "ema"}
    for fn in RULES.values():
        assert fn.__doc__


# ---- laws ----------------------------------------------------------------------------------

MULTIPLICATIVE = {"sgd": ["none", "batch_scaled", "linear", "sqrt_lr", "ema"],
                  "adamw": ["none", "batch_scaled", "sqrt", "normalized_weight_decay",
                            "timescale", "ema"]}
FLOATS = ("learning_rate", "l2", "weight_decay", "b1", "b2", "eps", "bn_momentum")


def _close(a: Recipe, b: Recipe):
    for name in FLOATS:
        x, y = getattr(a, name), getattr(b, name)
        assert x == pytest.approx(y, rel=1e-9, abs=1e-15), name


@given(k1=st.sampled_from([1, 2, 4, 8]), k2=st.sampled_from([1, 2, 4]),
       opt=st.sampled_from(["sgd", "adamw"]), data=st.data())
def test_scaling_by_k1_then_k2_is_scaling_by_k1_k2(k1, k2, opt, data):
    base = dataclasses.replace(SGD if opt == "sgd" else ADAMW, warmup_steps=0, b1=0.99,
                               b2=0.9999)
    rule = data.draw(st.sampled_from(MULTIPLICATIVE[opt]))
    b0 = base.batch_size
    twice = scale(scale(base, k1 * b0, rule), k1 * k2 * b0, rule)
    _close(twice, scale(base, k1 * k2 * b0, rule))


@given(rule=st.sampled_from(sorted(RULES)), b0=st.integers(1, 4096))
def test_identity_at_k_1(rule, b0):
    recipe = dataclasses.replace(ADAMW if rule != "linear" else SGD, batch_size=b0)
    assert scale(recipe, b0, rule) == recipe


# ---- bad input: one line naming the argument -----------------------------------------------

@pytest.mark.parametrize("recipe,batch_size,rule,name", [
    (SGD, 256, "sqrt", "rule"),  # sqrt is Adam's rule
    (ADAMW, 256, "linear", "rule"),
    (SGD, 256, "timescale", "rule"),
    (ADAMW, 256, "nonsense", "rule"),
    (ADAMW, 256, (), "rule"),
    (ADAMW, 256, ("normalized_weight_decay", "timescale"), "rule"),  # both set weight_decay
    (ADAMW, 0, "none", "batch_size"),
    (ADAMW, 256.0, "none", "batch_size"),
    (ADAMW, True, "none", "batch_size"),
    (dataclasses.replace(ADAMW, num_examples=None), 256, "timescale", "num_examples"),
    (dataclasses.replace(ADAMW, epochs=None), 256, "normalized_weight_decay", "epochs"),
    (dataclasses.replace(ADAMW, bn_momentum=None), 256, "ema", "bn_momentum"),
    (dataclasses.replace(ADAMW, weight_decay=0.0), 256, "timescale", "weight_decay"),
    (ADAMW, 64 * 11, "sqrt", "b1"),  # 1 - b1' = 11 * 0.1 > 1
    (dataclasses.replace(ADAMW, b1=0.9999), 64 * 1001, "sqrt", "b2"),  # 1 - b2' = 1.001
])
def test_bad_input_names_the_argument(recipe, batch_size, rule, name):
    with pytest.raises((ValueError, TypeError), match=f"^`{name}` must be [^\n]*$"):
        scale(recipe, batch_size, rule)


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("batch_size", 1.5),
                                         ("learning_rate", 0.0), ("optimizer", "lamb"),
                                         ("b1", 1.0), ("b1", "0.9"), ("bn_momentum", -0.1),
                                         ("eps", 0.0),
                                         ("num_examples", 0), ("warmup_steps", -1)])
def test_recipe_checks_its_fields(field, value):
    with pytest.raises((ValueError, TypeError), match=f"^`{field}` must be"):
        dataclasses.replace(ADAMW, **{field: value})

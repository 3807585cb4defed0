"""jaxreg.schedules: each schedule equals its seed formula in float64, under jit and vmap."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import schedules

STEPS = np.arange(0, 301)  # includes t > T for every T used below


def _eval(schedule, steps=STEPS):
    """The schedule at each step, eagerly; jit of vmap over the step array must agree.

    XLA may rewrite ``x / c`` as ``x * (1 / c)`` under jit, hence agreement to a few ulps.
    """
    eager = np.array([float(schedule(int(t))) for t in steps])
    jitted = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))
    np.testing.assert_allclose(np.broadcast_to(jitted, eager.shape), eager, rtol=1e-14, atol=1e-15)
    return eager


@pytest.mark.parametrize("lr", [0.0, 0.1, 3.0])
def test_fixed(lr):
    with jax.enable_x64(True):
        np.testing.assert_array_equal(_eval(schedules.fixed(lr)), np.full(STEPS.shape, lr))


@pytest.mark.parametrize("eta0,total,power", [(0.1, 100, 1.0), (0.5, 73, 2.0), (1.0, 250, 0.5)])
def test_poly_to_zero_formula(eta0, total, power):
    with jax.enable_x64(True):
        got = _eval(schedules.poly_to_zero(eta0, total, power))
    t = STEPS.astype(np.float64)
    want = np.where(t <= total, eta0 * np.clip(1 - t / total, 0, None) ** power, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert got[STEPS > total].max() == 0.0


@pytest.mark.parametrize(
    "eta0,step_size,floor", [(0.1, 100, 0.0), (0.37, 70, 0.05), (1.0, 30, 1.0)]
)
def test_linear_step_formula(eta0, step_size, floor):
    with jax.enable_x64(True):
        got = _eval(schedules.linear_step(eta0, step_size, floor))
    want = np.maximum(eta0 * (1 - STEPS.astype(np.float64) / step_size), floor)
    np.testing.assert_array_equal(got, want)  # eagerly it is the formula itself, bit for bit


@pytest.mark.parametrize("total", [3, 7, 250, 1000])
def test_poly_to_zero_no_nan_under_jit_float32(total):
    # optax.polynomial_schedule gives NaN here for t >= T: under jit 1 - t/T is about -1e-17.
    got = jax.jit(jax.vmap(schedules.poly_to_zero(1.0, total, 0.5)))(jnp.arange(2 * total))
    assert not jnp.isnan(got).any()
    assert (got[total:] == 0).all()


def test_float32_default():
    assert schedules.poly_to_zero(0.1, 10, 2.0)(3).dtype == jnp.float32
    assert schedules.linear_step(0.1, 10)(3).dtype == jnp.float32


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: schedules.fixed(-0.1), "learning_rate"),
        (lambda: schedules.fixed(math.nan), "learning_rate"),
        (lambda: schedules.poly_to_zero(-1.0, 10, 1.0), "init_value"),
        (lambda: schedules.poly_to_zero(0.1, 0, 1.0), "total_steps"),
        (lambda: schedules.poly_to_zero(0.1, -5, 1.0), "total_steps"),
        (lambda: schedules.poly_to_zero(0.1, 10, -1.0), "power"),
        (lambda: schedules.poly_to_zero(0.1, 10, 0.0), "power"),
        (lambda: schedules.poly_to_zero(0.1, 10, math.nan), "power"),
        (lambda: schedules.linear_step(math.nan, 10), "init_value"),
        (lambda: schedules.linear_step(0.1, 0), "step_size"),
        (lambda: schedules.linear_step(0.1, 10, -0.01), "floor"),
        (lambda: schedules.linear_step(0.1, 10, 0.2), "floor"),
        (lambda: schedules.batch_size_schedule(0, {10: 0.1}), "init_batch_size"),
        (lambda: schedules.batch_size_schedule(math.nan, {10: 0.1}),  # type: ignore[arg-type]
         "init_batch_size"),
        (lambda: schedules.batch_size_schedule(32.5, {10: 0.1}),  # type: ignore[arg-type]
         "init_batch_size"),
        (lambda: schedules.batch_size_schedule(32, {10: 0.1}, max_batch_size=16), "max_batch_size"),
        (lambda: schedules.batch_size_schedule(32, {10: 0.0}), "boundaries_and_scales"),
        (lambda: schedules.batch_size_schedule(32, {10: 2.0}), "boundaries_and_scales"),
        (lambda: schedules.batch_size_schedule(32, {10: math.nan}), "boundaries_and_scales"),
        (lambda: schedules.batch_size_schedule(32, {10: 0.1}, init_value=-1), "init_value"),
    ],
)
def test_validation_names_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def _lr_decay(eta0, boundaries_and_scales, t):
    """The learning rate of the step-decay schedule being replaced, in plain Python."""
    return eta0 * math.prod(f for b, f in boundaries_and_scales.items() if b <= t)


@pytest.mark.parametrize("max_batch_size", [None, 10_000, 2_000, 128])
def test_batch_size_schedule_matches_noise_scale(max_batch_size):
    eta0, b0 = 0.1, 128
    decay = {30: 0.1, 60: 0.1, 80: 0.2}
    sched = schedules.batch_size_schedule(b0, decay, max_batch_size, init_value=eta0)
    with jax.enable_x64(True):
        lrs = _eval(sched.learning_rate, np.arange(0, 120))
    for t in range(120):
        size = sched.batch_size(t)
        assert isinstance(size, int)
        ideal = b0 / math.prod(f for b, f in decay.items() if b <= t)
        want = round(ideal) if max_batch_size is None else min(round(ideal), max_batch_size)
        assert size == want
        # eta_t / B_t equals the replaced schedule's eta / B0 at every step ...
        assert lrs[t] / size == pytest.approx(_lr_decay(eta0, decay, t) / b0, rel=1e-12)
        # ... and the learning rate only moves once the batch size is capped.
        if max_batch_size is None or ideal <= max_batch_size:
            assert lrs[t] == pytest.approx(eta0, rel=1e-12)


def test_batch_size_schedule_known_values():
    sched = schedules.batch_size_schedule(128, {10: 0.1, 20: 0.1, 30: 0.5}, 5000, init_value=0.1)
    assert [sched.batch_size(t) for t in (0, 9, 10, 19, 20, 30, 99)] == [
        128, 128, 1280, 1280, 5000, 5000, 5000
    ]
    with jax.enable_x64(True):
        lrs = [float(sched.learning_rate(t)) for t in (0, 19, 20, 30)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1 * 0.01 * 5000 / 128, 0.1 * 0.005 * 5000 / 128])


def test_batch_size_schedule_milestones_form_and_multiplier_default():
    sched = schedules.batch_size_schedule(64, {m: 0.5 for m in (5, 10, 15)})
    assert [sched.batch_size(t) for t in (0, 5, 10, 15)] == [64, 128, 256, 512]
    assert float(sched.learning_rate(20)) == 1.0
    assert isinstance(sched.learning_rate(20), jax.Array)
    assert isinstance(optax.sgd(sched.learning_rate), optax.GradientTransformation)


def test_batch_size_schedule_tiny_factors_and_bad_types():
    with pytest.raises(ValueError, match="boundaries_and_scales.*max_batch_size"):
        schedules.batch_size_schedule(32, {10: 1e-200, 20: 1e-200})
    capped = schedules.batch_size_schedule(32, {10: 1e-200, 20: 1e-200}, max_batch_size=1024)
    assert capped.batch_size(25) == 1024 and math.isfinite(float(capped.learning_rate(25)))
    for bad in [{10: "0.5"}, {"10": 0.5}, [(10, 0.5)]]:
        with pytest.raises(TypeError, match="boundaries_and_scales"):
            schedules.batch_size_schedule(32, bad)
    with pytest.raises(TypeError, match="init_batch_size"):
        schedules.batch_size_schedule("32", {})
    with pytest.raises(TypeError, match="init_value"):
        schedules.poly_to_zero("0.1", 100, 1.0)


@pytest.mark.parametrize("steps", [7, 333, 1000])
def test_linear_step_agrees_with_optax_linear_schedule_to_float_rounding(steps):
    t = jnp.arange(0, 2 * steps)
    ours, ref = schedules.linear_step(1.0, steps), optax.linear_schedule(1.0, 0.0, steps)
    np.testing.assert_array_equal(jax.vmap(ours)(t), jax.vmap(ref)(t))  # eagerly: exact
    got, want = jax.jit(jax.vmap(ours))(t), jax.jit(jax.vmap(ref))(t)
    np.testing.assert_allclose(got, want, rtol=0, atol=np.finfo(np.float32).eps)  # an ulp of 1
    conventions = Path(__file__).resolve().parents[2] / "docs" / "conventions.md"
    assert "differ by an ulp under `jit`" in conventions.read_text()  # the documented rounding


@pytest.mark.parametrize("name", ["fixed", "poly", "step", "cosine"])
@pytest.mark.parametrize("w", [1, 7, 40])
def test_linear_warmup_multiplies_any_schedule(name, w):
    """``eta_t min(1, (t + 1) / w)`` in float64, eagerly and under jit of vmap (``_eval``)."""
    t = STEPS.astype(np.float64)
    bases = {"fixed": (0.1, np.full(t.shape, 0.1)),
             "poly": (schedules.poly_to_zero(0.1, 200, 2.0), 0.1 * np.clip(1 - t / 200, 0, 1) ** 2),
             "step": (schedules.linear_step(0.1, 150, 0.01), np.maximum(0.1 * (1 - t / 150), 0.01)),
             "cosine": (optax.cosine_decay_schedule(0.1, 250),
                        0.1 * (1 + np.cos(np.pi * np.minimum(t, 250) / 250)) / 2)}
    schedule, eta = bases[name]
    with jax.enable_x64(True):
        got = _eval(schedules.linear_warmup(schedule, w))
    np.testing.assert_allclose(got, eta * np.minimum(1.0, (t + 1) / w), rtol=1e-12, atol=1e-15)
    assert got[0] == pytest.approx(eta[0] / w)  # the first step is not zero (LinearLR)


def test_linear_warmup_of_zero_steps_is_the_schedule_itself():
    schedule = schedules.poly_to_zero(0.1, 10, 1.0)
    assert schedules.linear_warmup(schedule, 0) is schedule
    assert schedules.linear_warmup(0.1, 0) == 0.1  # a float stays a float (vmappable in a sweep)


@pytest.mark.parametrize("w", [-1, 2.5, True, "3"])
def test_linear_warmup_bad_steps_one_line(w):
    with pytest.raises((TypeError, ValueError),
                       match="`warmup_steps` must be an integer >= 0") as e:
        schedules.linear_warmup(0.1, w)
    assert "\n" not in str(e.value)

"""jaxreg.reduce_on_plateau against a plain-Python re-implementation of Keras's callback."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxreg
from jaxreg.transforms.plateau import feed


class KerasPlateau:
    """Keras ``ReduceLROnPlateau.on_epoch_end`` (keras/src/callbacks/reduce_lr_on_plateau.py).

    Renamed: lr -> scale (starting at 1), min_lr -> min_scale, wait -> plateau_count. Keras's
    ``min_delta`` is ``threshold`` ('abs') or ``threshold * |best|`` ('rel', 0 while best is
    infinite), a non-finite value never improves (jaxreg's documented rules). Values are
    averaged over ``accumulation_size`` calls before each decision. Keras keeps the learning
    rate in a float32 variable: ``new = float32(max(float(old) * factor, min_lr))``, a float64
    product rounded once; ``dtype=np.float64`` is the same with a float64 variable (x64).
    """

    def __init__(self, factor, patience, cooldown, min_scale, threshold, threshold_mode, mode,
                 accumulation_size=1, dtype=np.float64):
        self.dtype = dtype
        self.factor, self.patience, self.cooldown = factor, patience, cooldown
        self.min_scale, self.threshold, self.threshold_mode = min_scale, threshold, threshold_mode
        self.mode, self.accumulation_size = mode, accumulation_size
        self.best = math.inf if mode == "min" else -math.inf
        self.scale, self.wait, self.cooldown_counter = dtype(1.0), 0, 0
        self.pending = []

    def monitor_op(self, a, b):
        if not math.isfinite(a):
            return False
        if math.isinf(b):
            delta = 0.0
        else:
            delta = self.threshold * abs(b) if self.threshold_mode == "rel" else self.threshold
        return a < b - delta if self.mode == "min" else a > b + delta

    def on_epoch_end(self, current):
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.monitor_op(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.cooldown_counter > 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.scale)
                if old > self.dtype(self.min_scale):
                    self.scale = self.dtype(max(old * self.factor, self.min_scale))
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def feed(self, value):
        self.pending.append(value)
        if len(self.pending) == self.accumulation_size:
            total = 0.0
            for v in self.pending:
                total += v
            self.pending = []
            self.on_epoch_end(total / self.accumulation_size)


def _run_jitted(transform, values, params):
    """Feeds ``values`` one call at a time inside one jitted scan; returns the state after each."""

    def step(state, value):
        _, state = transform.update(params, state, value=value)
        return state, state

    run = jax.jit(lambda vs: jax.lax.scan(step, transform.init(params), vs)[1])
    return run(jnp.asarray(values))


metric = st.one_of(
    st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]),  # repeats make plateaus
    st.sampled_from([0.9, 0.97, 0.99, 1.0, 1.01, 1.03, 1.1]),  # near-threshold changes
    st.floats(-10, 10, allow_nan=False),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 1)),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@given(
    values=st.lists(metric, min_size=1, max_size=60),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.05, 0.5]),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    min_scale=st.sampled_from([0.0, 0.01, 0.3]),
    accumulation_size=st.sampled_from([1, 1, 2, 3]),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_matches_keras_reference(values, mode, threshold_mode, threshold, factor, patience,
                                 cooldown, min_scale, accumulation_size, sign):
    values = [sign * v for v in values]  # as many all-negative as all-positive plateaus
    kwargs = dict(factor=factor, patience=patience, cooldown=cooldown, min_scale=min_scale,
                  threshold=threshold, threshold_mode=threshold_mode, mode=mode,
                  accumulation_size=accumulation_size)
    ref = KerasPlateau(**kwargs)
    with jax.enable_x64(True):
        states = _run_jitted(jaxreg.reduce_on_plateau(**kwargs), values, jnp.zeros(2))
        states = jax.tree.map(np.asarray, states)
    _compare(ref, states, values)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode,threshold", [("rel", 0.01), ("abs", 0.02)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_matches_keras_reference_near_threshold(mode, threshold_mode, threshold, sign):
    # A random walk of small relative steps around +-2: many decisions fall within the
    # threshold, where a margin on the wrong side of a negative best would show.
    steps = np.random.default_rng(0).choice([-0.03, -0.015, -0.005, 0, 0.005, 0.015, 0.03], 200)
    values = list(sign * 2.0 * np.cumprod(1 + steps))
    kwargs = dict(factor=0.5, patience=2, cooldown=1, min_scale=0.05, threshold=threshold,
                  threshold_mode=threshold_mode, mode=mode)
    with jax.enable_x64(True):
        states = _run_jitted(jaxreg.reduce_on_plateau(**kwargs), values, jnp.zeros(2))
        states = jax.tree.map(np.asarray, states)
    _compare(KerasPlateau(**kwargs), states, values)
    assert 0.05 <= states.scale[-1] < 1  # the walk does plateau


def _compare(ref, states, values):
    """Step-by-step equality; ``best_value`` to an ulp, since under jit XLA may compute the
    window mean ``total / k`` as ``total * (1 / k)``."""
    for i, value in enumerate(values):
        ref.feed(value)
        got = (states.scale[i], states.plateau_count[i], states.cooldown_count[i], states.count[i])
        want = (ref.scale, ref.wait, ref.cooldown_counter, len(ref.pending))
        assert got == want, f"call {i}: {got} != {want}"
        best = float(states.best_value[i])
        assert best == ref.best or math.isclose(best, ref.best, rel_tol=1e-15), f"call {i}"


def _feed(transform, values, state=None):
    state = transform.init(None) if state is None else state
    for v in values:
        _, state = transform.update(None, state, value=v)
    return state


def test_negative_metric_plateau_reduces():
    # optax issue 1767: with `value < (1 - rtol) * best`, a flat -1.0 "improves" forever.
    plateau = jaxreg.reduce_on_plateau(factor=0.1, patience=2)
    state = _feed(plateau, [-1.0] * 8)
    assert float(state.scale) == pytest.approx(1e-3, rel=1e-5)
    # A worsening negative metric is not an improvement either.
    state = _feed(plateau, [-10.0, -9.0, -8.0])
    assert float(state.best_value) == -10.0 and float(state.scale) == pytest.approx(0.1)


def test_max_mode_rel_threshold():
    plateau = jaxreg.reduce_on_plateau(patience=1, threshold=0.1, mode="max")
    state = _feed(plateau, [-1.0, -0.95])  # -0.95 > -1 but not by 10% of |best|
    assert float(state.best_value) == -1.0 and float(state.scale) == pytest.approx(0.1)
    state = _feed(plateau, [-1.0, -0.85])
    assert float(state.best_value) == pytest.approx(-0.85) and float(state.scale) == 1.0


def test_non_finite_values_count_as_no_improvement():
    plateau = jaxreg.reduce_on_plateau(patience=2)
    state = _feed(plateau, [1.0, math.nan])
    assert float(state.best_value) == 1.0 and int(state.plateau_count) == 1
    state = _feed(plateau, [-math.inf], state)
    assert float(state.best_value) == 1.0 and float(state.scale) == pytest.approx(0.1)
    state = _feed(plateau, [0.5], state)  # recovers normally afterwards
    assert float(state.best_value) == 0.5 and int(state.plateau_count) == 0
    max_plateau = jaxreg.reduce_on_plateau(patience=5, mode="max")
    assert float(_feed(max_plateau, [1.0, math.inf]).best_value) == 1.0


def test_nan_only_affects_its_accumulation_window():
    plateau = jaxreg.reduce_on_plateau(patience=5, accumulation_size=2)
    state = _feed(plateau, [3.0, math.nan])
    assert int(state.count) == 0 and float(state.accumulated_value) == 0.0
    assert int(state.plateau_count) == 1 and float(state.best_value) == math.inf
    state = _feed(plateau, [2.0, 1.0], state)
    assert float(state.best_value) == 1.5 and int(state.plateau_count) == 0


def test_accumulation_decides_every_k_calls():
    plateau = jaxreg.reduce_on_plateau(patience=0, accumulation_size=3)
    state = _feed(plateau, [1.0, 2.0])
    assert int(state.count) == 2 and float(state.accumulated_value) == 3.0
    assert float(state.best_value) == math.inf
    state = _feed(plateau, [3.0], state)
    assert int(state.count) == 0 and float(state.best_value) == 2.0


def test_value_none_only_scales():
    plateau = jaxreg.reduce_on_plateau(patience=0)
    state = _feed(plateau, [1.0, 2.0])
    updates, new_state = plateau.update({"w": jnp.ones(3)}, state)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), new_state, state))
    np.testing.assert_allclose(updates["w"], float(state.scale) * np.ones(3))


def test_updates_none_feeds_metric_only():
    params = {"w": jnp.ones(3)}
    plateau = jaxreg.reduce_on_plateau(factor=0.5, patience=0)
    opt = optax.chain(optax.sgd(0.1, momentum=0.9), plateau)
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    for val_loss in (1.0, 2.0):  # once per epoch; the second does not improve
        out, plateau_state = jax.jit(plateau.update)(None, state[1], value=val_loss)
        assert out is None
        state = (state[0], plateau_state)
    assert float(optax.tree_utils.tree_get(state, "scale")) == 0.5
    momentum = optax.tree_utils.tree_get(state, "trace")
    np.testing.assert_allclose(momentum["w"], np.ones(3))  # untouched by the metric feeding
    updates, _ = opt.update(params, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * (0.9 + 1) * np.ones(3), rtol=1e-6)


def test_chain_forwards_value_and_tree_get_finds_scale():
    params = {"w": jnp.array([1.0, -2.0])}
    opt = optax.chain(optax.sgd(0.1), jaxreg.reduce_on_plateau(factor=0.5, patience=2))
    state = opt.init(params)
    step = jax.jit(lambda g, s, v: opt.update(g, s, params, value=v))  # traced value
    for loss in (1.0, 1.0, 1.0):
        updates, state = step(params, state, loss)
    assert float(optax.tree_utils.tree_get(state, "scale")) == 0.5
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.array([1.0, -2.0]))
    assert step._cache_size() == 1  # one compilation for all values


def test_dtypes_preserved():
    plateau = jaxreg.reduce_on_plateau(patience=0)
    state = _feed(plateau, [1.0, 1.0])
    updates = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float32),
               "c": jnp.ones(2, jnp.float16)}
    out, _ = jax.jit(plateau.update)(updates, state, value=2.0)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in updates.items()}
    assert state.scale.dtype == jnp.float32 and state.plateau_count.dtype == jnp.int32


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(factor=0.0), "factor"),
        (dict(factor=1.0), "factor"),
        (dict(factor=math.nan), "factor"),
        (dict(patience=-1), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(cooldown=-1), "cooldown"),
        (dict(min_scale=-0.1), "min_scale"),
        (dict(min_scale=math.nan), "min_scale"),
        (dict(threshold=-1e-4), "threshold"),
        (dict(threshold_mode="relative"), "threshold_mode"),
        (dict(mode="auto"), "mode"),
        (dict(accumulation_size=0), "accumulation_size"),
    ],
)
def test_validation_names_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        jaxreg.reduce_on_plateau(**kwargs)


# ---- the floor, cooldown and patience at the floor -----------------------------------------------

def test_float32_floor_is_reached_exactly_without_an_extra_reduction():
    # 0.1 * 0.1 = 0.010000001 in float32: a naive clamp makes a third 1-ulp "reduction"
    plateau = jaxreg.reduce_on_plateau(factor=0.1, patience=1, cooldown=2, min_scale=0.01)
    states = _run_jitted(plateau, [1.0] * 12, jnp.zeros(2))
    scale = np.asarray(states.scale)
    assert scale.dtype == np.float32 and scale[-1] == np.float32(0.01)
    reductions = np.flatnonzero(np.diff(scale) != 0) + 1
    assert len(reductions) == 2  # 1 -> 0.1 -> 0.01, no third one
    after = reductions[-1] + 3  # the cooldown of the last reduction is over
    assert (np.asarray(states.cooldown_count)[after:] == 0).all()
    assert (np.diff(np.asarray(states.plateau_count)[after:]) == 1).all()  # counting on


FACTORS = [0.1, 0.2, 0.3, 0.7, 0.9, 0.95, 1 / 3, 0.123456789, 0.5, 0.25]


@pytest.mark.parametrize("min_scale", [0.0, 1e-3, 0.01, 0.05])
@pytest.mark.parametrize("patience,cooldown", [(0, 0), (1, 2), (3, 1)])
def test_float32_scale_is_keras_arithmetic_bit_for_bit(min_scale, patience, cooldown):
    """Keras 3 multiplies the float32 learning rate by the factor in float64 and
    rounds once to float32; a float32 product differs by 1 ulp per reduction for most factors.
    Compared bit for bit against NumPy over every reduction down to float32's smallest normal
    number (below it XLA flushes to zero where NumPy goes on through subnormals)."""
    values = np.random.default_rng(patience).choice([1.0, 1.0, 1.0, 0.5], 160)
    for factor in FACTORS:
        kwargs = dict(factor=factor, patience=patience, cooldown=cooldown, min_scale=min_scale,
                      threshold=0.0, threshold_mode="abs", mode="min")
        scale = np.asarray(_run_jitted(jaxreg.reduce_on_plateau(**kwargs), values,
                                       jnp.zeros(2)).scale)
        ref = KerasPlateau(**kwargs, dtype=np.float32)
        want = []
        for v in values:
            ref.feed(float(v))
            want.append(ref.scale)
        want = np.asarray(want, np.float32)
        assert scale.dtype == np.float32 and len(set(want.tolist())) >= 3  # two reductions at least
        normal = want >= np.finfo(np.float32).tiny
        np.testing.assert_array_equal(scale[normal], want[normal], err_msg=f"factor={factor}")


def _optax_case_transform():
    return jaxreg.reduce_on_plateau(factor=0.1, patience=5, threshold=1e-4, cooldown=5,
                                    min_scale=0.01)


def _state(**fields):
    base = _optax_case_transform().init(None)
    return base._replace(**{k: jnp.asarray(v, getattr(base, k).dtype) for k, v in fields.items()})


@pytest.mark.parametrize("x64", [False, True])
def test_optax_contrib_cases_where_keras_and_optax_agree(x64):
    """optax.contrib's reduce_on_plateau_test cases 1-3 (same settings: factor 0.1, patience 5,
    rtol 1e-4, cooldown 5, min_scale 0.01), on jaxreg's state."""
    with jax.enable_x64(x64):
        tx, updates = _optax_case_transform(), {"params": jnp.array(1.0)}
        # reduced after the patience runs out, then the cooldown counts down
        state = tx.init(updates["params"])
        for _ in range(6):
            out, state = tx.update(updates, state, value=1.0)
        assert (float(state.scale), float(state.best_value)) == (pytest.approx(0.1), 1.0)
        assert (int(state.plateau_count), int(state.cooldown_count)) == (0, 5)
        np.testing.assert_allclose(out["params"], 0.1, rtol=1e-6)
        _, state = tx.update(updates, state, value=1.0)
        assert (int(state.plateau_count), int(state.cooldown_count)) == (0, 4)
        # a new best resets the count
        state = feed(_state(best_value=1.0, plateau_count=3, scale=0.1), 0.1)
        assert int(state.plateau_count) == 0 and float(state.best_value) == pytest.approx(0.1)
        # no reduction, no counting during the cooldown
        state = feed(_state(best_value=1.0, scale=0.1, cooldown_count=3), 2.0)
        assert (float(state.scale), int(state.plateau_count), int(state.cooldown_count)) == (
            pytest.approx(0.1), 0, 2)


def test_patience_at_the_floor_follows_keras_not_optax():
    """optax.contrib's case 4 (scale already at min_scale, a new best, then 5 bad values):
    optax resets the count and starts a cooldown; Keras (and jaxreg) keep counting."""
    values = [0.1] * 6
    state = _state(best_value=1.0, scale=0.01)
    for v in values:
        state = feed(state, v)
    ref = KerasPlateau(factor=0.1, patience=5, cooldown=5, min_scale=0.01, threshold=1e-4,
                       threshold_mode="rel", mode="min")
    ref.best, ref.scale = 1.0, 0.01
    for v in values:
        ref.feed(v)
    assert (float(state.scale), int(state.plateau_count), int(state.cooldown_count)) == (
        pytest.approx(ref.scale), ref.wait, ref.cooldown_counter) == (pytest.approx(0.01), 5, 0)
    contrib = optax.contrib.reduce_on_plateau(factor=0.1, patience=5, rtol=1e-4, cooldown=5,
                                              min_scale=0.01)
    cstate = contrib.init(None)._replace(best_value=jnp.array(1.0), scale=jnp.array(0.01))
    for v in values:
        _, cstate = contrib.update(None, cstate, value=v)
    assert (int(cstate.plateau_count), int(cstate.cooldown_count)) == (0, 5)  # the difference


@pytest.mark.parametrize("bad", [jnp.ones(3), np.ones((1,)), "0.5", None, True])
def test_value_must_be_a_real_scalar(bad):
    plateau = jaxreg.reduce_on_plateau()
    state = plateau.init(None)
    if bad is None:  # value=None is the documented "only scale"
        assert plateau.update(None, state, value=bad)[1] == state
        return
    with pytest.raises(TypeError, match="`value` must be a real scalar"):
        plateau.update(None, state, value=bad)


@pytest.mark.parametrize("kwargs,name", [(dict(factor="0.5"), "factor"),
                                         (dict(patience="2"), "patience"),
                                         (dict(min_scale=None), "min_scale")])
def test_non_numbers_name_the_argument(kwargs, name):
    with pytest.raises(TypeError, match=f"`{name}`"):
        jaxreg.reduce_on_plateau(**kwargs)

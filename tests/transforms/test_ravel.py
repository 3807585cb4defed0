"""jaxreg.raveled: a chain over per-dtype buffers, bit-identical to the per-leaf chain."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.transforms.ravel import Raveled, ravel, unravel


def _params():
    keys = jax.random.split(jax.random.key(0), 6)
    return {
        "Dense_0": {"kernel": jax.random.normal(keys[0], (5, 3)),
                    "bias": jax.random.normal(keys[1], (3,))},
        "Dense_1": {"kernel": jax.random.normal(keys[2], (3, 4)).astype(jnp.bfloat16),
                    "bias": jax.random.normal(keys[3], (4,)).astype(jnp.bfloat16)},
        "BatchNorm_0": {"scale": jax.random.normal(keys[4], (3,)) * 0.1},
        "layers": [jax.random.normal(keys[5], (2, 2, 2)).astype(jnp.float16)],
    }


def _chain(mask=None, optimizer=None):
    optimizer = optax.sgd(1e-2, momentum=0.9) if optimizer is None else optimizer
    return optax.chain(jaxreg.batch_scaled_l2(0.5, mask), optimizer,
                       jaxreg.proximal_l1(30.0, 1e-2, mask))


def _run(tx, params, steps=5):
    @jax.jit
    def step(params, state, batch_size):
        grads = jax.tree.map(lambda p: jnp.cos(p * 3).astype(p.dtype), params)
        updates, state = tx.update(grads, state, params, batch_size=batch_size)
        return optax.apply_updates(params, updates), state, updates

    state = jax.jit(tx.init)(params)
    history = []
    for b in range(1, steps + 1):
        params, state, updates = step(params, state, 16 * b)
        history.append((params, updates))
    return history


def _compare(got, want, ulps):
    """Every leaf of every step within ``ulps`` of its dtype's epsilon (relative)."""
    for step_got, step_want in zip(got, want, strict=True):
        chex.assert_trees_all_equal_dtypes(step_got, step_want)
        for a, b in zip(jax.tree.leaves(step_got), jax.tree.leaves(step_want), strict=True):
            eps = float(jnp.finfo(b.dtype).eps)
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       rtol=ulps * eps, atol=ulps * eps * 1e-3)


MASKS = [None, True, jaxreg.masks.by_path("Dense_1|layers")]


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("mask", MASKS, ids=["kernels_only", "all", "by_path"])
def test_raveled_matches_the_per_leaf_chain(mask, optimizer):
    """batch_scaled_l2 + SGD momentum or Adam + proximal_l1 on float32, bfloat16 and float16
    leaves, under jit: the same arithmetic per element. Not bit for bit on XLA:CPU: LLVM
    contracts ``a * b + c`` into an FMA in some fusions and not others (with
    ``XLA_FLAGS=--xla_cpu_max_isa=AVX``, no FMA, the momentum chain is bit-identical), and
    XLA's algebraic simplifier rewrites Adam's divisions by its bias corrections per program
    (optax's own Adam over one leaf and over the same values in two leaves differ by an ulp
    in 918 of 2000 elements). docs/conventions.md, "Many leaves"."""
    params = _params()
    build = (lambda: _chain(mask)) if optimizer == "momentum" else (
        lambda: _chain(mask, optax.adam(1e-2)))
    want = _run(build(), params)
    _compare(_run(jaxreg.raveled(build()), params), want, ulps=4)
    # the masks took effect on the original structure: the proximal step's exact zeros are
    # in masked leaves only
    final, flags = want[-1][0], jaxreg.masks.resolve(mask, params)
    zeros = [bool((np.asarray(w) == 0).any()) for w in jax.tree.leaves(final)]
    assert any(zeros)
    assert all(f for z, f in zip(zeros, jax.tree.leaves(flags), strict=True) if z)


def test_state_holds_one_buffer_per_dtype():
    params = _params()
    tx = jaxreg.raveled(optax.adam(1e-3))
    state = tx.init(params)
    mu = state[0].mu
    assert isinstance(mu, Raveled)
    assert [b.dtype for b in mu.buffers] == [jnp.bfloat16, jnp.float16, jnp.float32]
    assert [b.size for b in mu.buffers] == [12 + 4, 8, 15 + 3 + 3]


def test_ravel_round_trip_and_masks_on_the_original_structure():
    params = _params()
    flat = ravel(params)
    chex.assert_trees_all_equal(unravel(flat), params)
    flags = jaxreg.masks.resolve(None, flat)  # kernels_only on the original structure
    want = jaxreg.masks.kernels_only(params)
    bf16, f16, f32 = flags.buffers
    assert bf16.tolist() == [want["Dense_1"]["bias"]] * 4 + [want["Dense_1"]["kernel"]] * 12
    assert f16 is True and isinstance(f32, np.ndarray)  # layers/0 is 3-D: a kernel
    assert jaxreg.masks.resolve(True, flat).buffers == (True, True, True)


def test_extra_args_forwarded_and_value_only_updates():
    params = {"w": jnp.ones((2, 2))}
    plateau = jaxreg.reduce_on_plateau(factor=0.5, patience=0)
    tx = jaxreg.raveled(optax.chain(optax.sgd(1.0), plateau))
    state = tx.init(params)
    for value in (1.0, 1.0):
        _, state = tx.update(None, state, params, value=value)
    updates, _ = tx.update(params, state, params)
    np.testing.assert_array_equal(updates["w"], -0.5)


def test_updates_must_match_the_params_layout():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = jaxreg.raveled(optax.sgd(1.0))
    bad = {"w": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^`updates` must be a pytree with the params'"):
        tx.update(bad, tx.init(params), params)


def test_global_norm_clipping_agrees_up_to_summation_order():
    params = _params()
    tx = jaxreg.raveled(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    grads = jax.tree.map(lambda p: (10 * p).astype(p.dtype), params)
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = ref.update(grads, ref.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-2)  # bf16/f16 leaves: summation order

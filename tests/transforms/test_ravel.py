"""jaxreg.raveled: a chain over per-dtype buffers, bit-identical to the per-leaf chain op by op
and to ``optax.flatten`` under jit; under jit against the per-leaf chain, within a few ulps
(docs/conventions.md, "Many leaves"). The cases: tests/programs/ravel_bits.py."""
import platform
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.transforms.ravel import Raveled, ravel, unravel
from tests.helpers import ROOT, source_env
from tests.programs.ravel_bits import CASES, FLAGS, MASKS, history, mismatches, params


def _params():
    """ravel_bits' params less its one-element leaf (see test_one_element_leaves_...)."""
    tree = params()
    del tree["Embed_0"]["scale"]
    return tree


@pytest.mark.parametrize("case", CASES)
def test_raveled_is_bit_identical_op_by_op(case):
    """Op by op (``jax.disable_jit``) every primitive is one XLA program over one array, for
    a leaf as for a buffer: the same roundings, bit for bit, on every leaf of every step."""
    with jax.disable_jit():
        got = history(jaxreg.raveled(CASES[case]()), _params())
        want = history(CASES[case](), _params())
    assert mismatches(got, want) == []


def test_one_element_leaves_divide_exactly_op_by_op():
    """The exception op by op: XLA rewrites ``x / broadcast(c)`` into ``x * broadcast(1 / c)``
    unless ``x`` has one element (the broadcast is then a reshape), so Adam's bias corrections
    divide a one-element leaf exactly but its element inside a buffer by the reciprocal."""
    tree = params()
    with jax.disable_jit():
        got = history(jaxreg.raveled(CASES["add_l2+adam"]()), tree)
        want = history(CASES["add_l2+adam"](), tree)
    bad = mismatches(got, want)
    assert bad and all(b.endswith("['Embed_0']['scale']") for b in bad), bad
    _compare(got, want, ulps=1)


@pytest.mark.slow
def test_bit_identical_under_jit_without_fma_and_algsimp():
    """Under jit the per-leaf and the raveled programs round differently for two reasons
    (FMA contraction, the reciprocal rewrite); with both off (``tests/programs/ravel_bits.py``'s
    XLA_FLAGS) every case, on mixed dtypes and all float32, is equal bit for bit. x86-64 only:
    ``--xla_cpu_max_isa=AVX`` names an x86 ISA."""
    assert platform.machine().lower() in ("x86_64", "amd64"), "needs x86-64: XLA_FLAGS name AVX"
    proc = subprocess.run([sys.executable, "-m", "tests.programs.ravel_bits"], cwd=ROOT,
                          env=source_env(XLA_FLAGS=FLAGS, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{len(CASES)} cases bit-identical" in proc.stdout


def _compare(got, want, ulps):
    """Every leaf of every step within ``ulps`` of its dtype's epsilon times the leaf's
    largest magnitude (an update ``w' - w`` inherits the rounding of ``w``, not its own)."""
    for step_got, step_want in zip(got, want, strict=True):
        chex.assert_trees_all_equal_dtypes(step_got, step_want)
        params_twice = (step_want[0], step_want[0])  # the scale of (params, updates)
        for a, b, w in zip(jax.tree.leaves(step_got), jax.tree.leaves(step_want),
                           jax.tree.leaves(params_twice), strict=True):
            scale = max(float(np.abs(np.asarray(w, np.float64)).max()), 1e-30)
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       rtol=0, atol=ulps * float(jnp.finfo(b.dtype).eps) * scale)


@pytest.mark.parametrize("case", CASES)
def test_raveled_matches_the_per_leaf_chain_under_jit(case):
    """Under jit (XLA:CPU's defaults), within 4 ulps of each leaf's scale, not bit for bit:
    LLVM contracts ``a * b + c`` into an FMA where a fusion holds both operations, and the two
    programs fuse differently; XLA's algebraic simplifier rewrites ``x / broadcast(c)`` into
    ``x * broadcast(1 / c)`` only where ``c`` has one user (one buffer, not n leaves), and
    then ``(a / b) / c`` into ``a / (b * c)`` where it did not. optax alone does the same:
    test_optax_adam_over_one_leaf_or_two_differs_under_jit."""
    tree = params()
    want = history(CASES[case](), tree)
    _compare(history(jaxreg.raveled(CASES[case]()), tree), want, ulps=4)
    if "proximal_l1" in case:  # the masks took effect on the original structure: the
        # proximal step's exact zeros are in masked leaves only
        mask = next(m for name, m in MASKS.items() if case.endswith(name))
        flags = jaxreg.masks.resolve(mask, tree)
        zeros = [bool((np.asarray(w) == 0).any()) for w in jax.tree.leaves(want[-1][0])]
        assert any(zeros)
        assert all(f for z, f in zip(zeros, jax.tree.leaves(flags), strict=True) if z)


def test_optax_adam_over_one_leaf_or_two_differs_under_jit():
    """The reference's own variation: optax's Adam over 2000 values in one leaf and in two
    leaves of 1000, jitted, differs by up to 2 ulps in some elements (the bias corrections'
    scalar has one user or two); op by op the two are identical."""
    x = jax.random.normal(jax.random.key(1), (2000,))
    grads = jnp.cos(3 * x)

    def updates(split):
        tx = optax.adam(1e-2)
        p, g = split(x), split(grads)
        state, update, out = tx.init(p), jax.jit(tx.update), []
        for _ in range(3):
            u, state = update(g, state, p)
            out.append(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(u)]))
        return out

    def one(v):
        return {"w": v}

    def two(v):
        return {"a": v[:1000], "b": v[1000:]}

    differing = 0
    for a, b in zip(updates(one), updates(two), strict=True):
        differing += int((a != b).sum())
        assert (np.abs(a.astype(np.float64) - b) <= 2 * np.spacing(np.abs(b))).all()
    assert differing > 0
    with jax.disable_jit():
        for a, b in zip(updates(one), updates(two), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["sgd", "nesterov", "adamw", "add_l2+adam",
                                  "batch_scaled_l2+adam+proximal_l1/all"])
def test_raveled_is_optax_flatten_bit_for_bit_under_jit(case):
    """One dtype: the same buffer as ``optax.flatten``'s ``ravel_pytree``, the same program
    around it, the same bits under jit (masks ``True``: flatten's mask sees one vector)."""
    tree = jax.tree.map(lambda p: p.astype(jnp.float32), params())
    got = history(jaxreg.raveled(CASES[case]()), tree)
    assert mismatches(got, history(optax.flatten(CASES[case]()), tree)) == []


def test_state_holds_one_buffer_per_dtype():
    tree = _params()
    tx = jaxreg.raveled(optax.adam(1e-3))
    state = tx.init(tree)
    mu = state[0].mu
    assert isinstance(mu, Raveled)
    assert [b.dtype for b in mu.buffers] == [jnp.bfloat16, jnp.float16, jnp.float32]
    assert [b.size for b in mu.buffers] == [12 + 4, 8, 3 + 3 + 15 + 1001]


def test_ravel_round_trip_and_masks_on_the_original_structure():
    tree = _params()
    flat = ravel(tree)
    chex.assert_trees_all_equal(unravel(flat), tree)
    flags = jaxreg.masks.resolve(None, flat)  # kernels_only on the original structure
    want = jaxreg.masks.kernels_only(tree)
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
    tree = _params()
    tx = jaxreg.raveled(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    grads = jax.tree.map(lambda p: (10 * p).astype(p.dtype), tree)
    got, _ = tx.update(grads, tx.init(tree), tree)
    want, _ = ref.update(grads, ref.init(tree), tree)
    chex.assert_trees_all_close(got, want, rtol=1e-2)  # bf16/f16 leaves: summation order

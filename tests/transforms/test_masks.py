"""jaxreg.masks: kernels_only on real flax params, by_path, resolution of every mask form."""
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxreg
from jaxreg import masks


class ConvBNDense(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Dense(8)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def variables():
    return ConvBNDense().init(jax.random.key(0), jnp.ones((1, 6, 6, 2)))


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_kernels_only_on_flax_model(variables):
    mask = flat(masks.kernels_only(variables))
    names = set(flat(variables))
    assert set(mask) == names
    expected = {path: path.endswith("/kernel") for path in names}
    assert mask == expected
    # the model has every kind of leaf the rule distinguishes
    kinds = {path.rsplit("/", 1)[1] for path in names}
    assert kinds == {"kernel", "bias", "scale", "mean", "var"}
    assert sum(expected.values()) == 3  # Conv_0, Dense_0, Dense_1


def test_kernels_only_embedding_and_unnamed_leaves():
    embed = nn.Embed(10, 4).init(jax.random.key(0), jnp.zeros((2,), jnp.int32))
    assert masks.kernels_only(embed) == {"params": {"embedding": True}}
    tree = (jnp.ones((3, 2)), jnp.ones(3), [jnp.ones((2, 2, 2)), jnp.float32(1.0)])
    assert masks.kernels_only(tree) == (True, False, [True, False])
    # names other than the known ones fall back to ndim >= 2
    assert masks.kernels_only({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}) == {"w": True, "b": False}
    # a 2-D leaf named bias is still a bias
    assert masks.kernels_only({"bias": jnp.ones((2, 2))}) == {"bias": False}


def test_by_path_matches_joined_paths(variables):
    params = variables["params"]
    pattern = r"Dense_\d+/(kernel|bias)$"
    got = flat(masks.by_path(pattern)(params))
    assert got == {path: re.search(pattern, path) is not None for path in flat(params)}
    assert sum(got.values()) == 4
    tree = {"layers": [jnp.ones(2), jnp.ones(2)]}
    assert masks.by_path("^layers/1$")(tree) == {"layers": [False, True]}


def test_all_leaves_and_resolve_forms(variables):
    params = variables["params"]
    everything = jax.tree.map(lambda _: True, params)
    assert masks.all_leaves(params) == everything
    assert masks.resolve(True, params) == everything
    assert masks.resolve("all", params) == everything
    assert masks.resolve(None, params) == masks.kernels_only(params)
    assert masks.resolve(masks.kernels_only, params) == masks.kernels_only(params)
    given = jax.tree.map(lambda x: x.ndim == 1, params)
    assert masks.resolve(given, params) == given


def test_resolve_broadcasts_prefix_masks(variables):
    params = variables["params"]
    prefix = {name: name.startswith("Dense") for name in params}
    got = flat(masks.resolve(prefix, params))
    assert got == {path: path.startswith("Dense") for path in flat(params)}
    assert masks.resolve({name: False for name in params}, params) == jax.tree.map(
        lambda _: False, params)
    with pytest.raises(ValueError, match="mask.*False"):  # a bare False: nothing, never silent
        masks.resolve(False, params)


def test_mismatched_mask_names_mask_and_both_structures(variables):
    params = variables["params"]
    bad = {"Dense_0": True}
    with pytest.raises(ValueError, match="`mask`") as info:
        masks.resolve(bad, params)
    message = str(info.value)
    assert str(jax.tree.structure(bad)) in message
    assert str(jax.tree.structure(params)) in message
    with pytest.raises(ValueError, match="`mask`"):
        masks.resolve(lambda p: [True], params)


def test_mismatched_mask_fails_at_init_and_update_of_transforms():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = jaxreg.add_l2(0.1, mask={"a": True, "c": False})
    with pytest.raises(ValueError, match="`mask`"):
        tx.init(params)
    tx = jaxreg.add_l2(0.1, mask={"a": True, "b": False})
    state = tx.init(params)
    other = {"a": jnp.ones((2, 2)), "b": jnp.ones(2), "c": jnp.ones(2)}
    with pytest.raises(ValueError, match="`mask`"):
        tx.update(other, state, other)


def test_bad_mask_types():
    params = {"a": jnp.ones(2)}
    with pytest.raises(TypeError, match="`mask`"):
        masks.resolve("kernels", params)
    with pytest.raises(TypeError, match="`mask`"):
        masks.resolve({"a": 1}, params)
    with pytest.raises(TypeError, match="`mask`"):
        masks.resolve({"a": jnp.array(True)}, params)
    assert masks.resolve({"a": np.bool_(True)}, params) == {"a": True}


def test_default_mask_warns_when_it_selects_nothing_as_under_optax_flatten():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    flat = optax.flatten(jaxreg.add_l2(0.5))  # sees one 1-D vector: no "kernel" left
    with pytest.warns(UserWarning, match="selects no leaf"):
        updates, _ = flat.update(grads, flat.init(params), params)
    chex.assert_trees_all_close(updates, grads)  # what the warning is about: no penalty
    flat_all = optax.flatten(jaxreg.add_l2(0.5, mask=True))
    updates, _ = flat_all.update(grads, flat_all.init(params), params)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda p: 0.5 * p, params))


# ---- masks are resolved on the params; callable pytrees; inject_hyperparams ----------------------

def test_none_updates_pass_through_as_optax_add_decayed_weights():
    # optax's test_none_argument: updates=None, and None leaves, are accepted
    weights = (jnp.ones((2,)), {"a": jnp.ones((2, 2)), "b": jnp.ones((2,))})
    for tx in [jaxreg.add_l2(0.1, mask=True), jaxreg.add_l2(0.1), jaxreg.proximal_l1(0.1, 1.0)]:
        state = tx.init(weights)
        assert tx.update(None, state, weights)[0] is None
        updates = (None, {"a": jnp.zeros((2, 2)), "b": None})
        got, _ = tx.update(updates, state, weights)
        assert got[0] is None and got[1]["b"] is None and got[1]["a"].shape == (2, 2)
    ref = optax.add_decayed_weights(0.1)
    assert ref.update(None, ref.init(weights), weights)[0] is None
    got, _ = jaxreg.add_l2(0.1, mask=True).update(
        (None, {"a": jnp.zeros((2, 2)), "b": None}), optax.EmptyState(), weights)
    np.testing.assert_allclose(got[1]["a"], 0.1, rtol=1e-7)


@chex.dataclass(frozen=True)
class CallableBools:
    """A registered pytree of bools that is also callable (as an equinox module is)."""
    kernel: bool
    bias: bool

    def __call__(self, *args):
        raise AssertionError("a callable pytree mask must not be called")


def test_callable_pytree_mask_is_a_pytree_as_in_optax_masked():
    params = CallableBools(kernel=jnp.ones((2, 2)), bias=jnp.ones(2))
    mask = CallableBools(kernel=False, bias=True)
    assert not masks.is_mask_fn(mask) and masks.is_mask_fn(masks.kernels_only)
    assert masks.resolve(mask, params) == mask
    grads = jax.tree.map(jnp.zeros_like, params)
    got, _ = jaxreg.add_l2(0.5, mask).update(grads, optax.EmptyState(), params)
    ref = optax.masked(optax.add_decayed_weights(0.5), mask)
    want, _ = ref.update(grads, ref.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    np.testing.assert_array_equal(got.kernel, 0.0)


def test_inject_hyperparams_with_a_mask_function():
    params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    # a mask function in static_args works, and equals the plain transform
    tx = optax.inject_hyperparams(jaxreg.add_l2, static_args=("mask",))(
        strength=0.1, mask=masks.kernels_only)
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    np.testing.assert_allclose(got["Dense_0"]["kernel"], 0.1)
    np.testing.assert_array_equal(got["Dense_0"]["bias"], 0.0)
    # without static_args optax calls the mask with the step count: a clear error, not a no-op
    tx = optax.inject_hyperparams(jaxreg.add_l2)(strength=0.1, mask=masks.kernels_only)
    with pytest.raises((ValueError, TypeError), match="static_args"):
        tx.update(grads, tx.init(params), params)
    with pytest.raises((ValueError, TypeError), match="static_args"):
        jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)


# ---- optax.tree.map_params calls init on a placeholder -------------------------------------------
# Ported from optax/transforms/_masking_test.py (test_tree_map_params and the tree_map_params
# sub-test of test_masked), with jaxreg transforms in place of optax.masked.

MAP_PARAMS = {"a": {"b": (jnp.zeros((1, 2)), jnp.zeros((2, 2)))},
              "c": {"d": jnp.zeros((1, 2)), "e": (jnp.zeros((1, 2)), jnp.zeros((1, 2)))}}
MAP_MASK = {"a": {"b": (True, False)}, "c": {"d": True, "e": (False, True)}}


def _copying_inner():
    """optax's test transform: its state holds two copies of the params."""
    return optax.GradientTransformation(
        lambda p: {"count": 1, "params": p, "params_copy": p}, lambda u, s, p=None: (u, s))


@pytest.mark.parametrize("mask", [MAP_MASK, lambda p: MAP_MASK, masks.by_path("^c/"), None],
                         ids=["pytree", "function", "by_path", "default"])
def test_tree_map_params_through_a_jaxreg_transform(mask):
    def increment_dim_1(v):
        return v + 1 if v.shape[0] == 1 else v

    expected = jax.tree.map(increment_dim_1, MAP_PARAMS)
    tx = optax.chain(jaxreg.add_l2(0.1, mask), _copying_inner(), jaxreg.batch_scaled_l2(
        optax.constant_schedule(0.1), mask), jaxreg.proximal_l1(0.1, 1.0, mask))
    state = tx.init(MAP_PARAMS)
    result = optax.tree.map_params(tx, increment_dim_1, state)
    chex.assert_trees_all_equal(result[1], _copying_inner().init(expected))
    chex.assert_trees_all_equal_structs(result, state)


@pytest.mark.parametrize("use_fn", [False, True])
@pytest.mark.parametrize("build", [
    lambda m: jaxreg.add_l2(0.5, m), lambda m: jaxreg.add_l1(0.5, m),
    lambda m: jaxreg.data_scaled_l2(optax.constant_schedule(5.0), 10, m),
    lambda m: jaxreg.proximal_elastic_net(0.5, 0.5, 1.0, m)],
    ids=["add_l2", "add_l1", "data_scaled_l2_schedule", "proximal_elastic_net"])
def test_map_params_of_a_masked_jaxreg_transform(build, use_fn):
    mask = {"a": True, "b": [False, True], "c": {"d": True, "e": (False, True)}}
    params = jax.tree.map(jnp.asarray, {"a": 1.0, "b": [2.0, 3.0],
                                        "c": {"d": 4.0, "e": (5.0, 6.0)}})
    tx = build((lambda _: mask) if use_fn else mask)
    state = jax.jit(tx.init)(params)
    result = optax.tree.map_params(tx.init, lambda v: v, state)
    chex.assert_trees_all_equal_structs(result, state)
    # and the mask still applies: unmasked leaves pass through unchanged
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    for keep, u in zip(jax.tree.leaves(mask), jax.tree.leaves(updates), strict=True):
        assert (float(u) != 0.0) == keep


def test_map_params_with_extra_args_and_non_params_transform():
    # optax's masked_with_extra_args: the params copies take the sharding axes, the rest None
    axes = {"a": {"b": (1, 2)}, "c": {"d": 1, "e": (1, 2)}}
    tx = optax.chain(jaxreg.add_l2(0.1, MAP_MASK), _copying_inner(),
                     jaxreg.add_l1(optax.constant_schedule(0.1), masks.by_path("^a/")))
    state = tx.init(MAP_PARAMS)
    new_state = optax.tree.map_params(tx, lambda _, axis: axis, state, axes,
                                      transform_non_params=lambda _: None)
    assert new_state[1] == {"count": None, "params": axes, "params_copy": axes}
    assert new_state[2].count is None


def test_a_regex_string_mask_is_refused_at_construction_naming_by_path():
    # the docs once said a regex string selects by path; it raised an unhelpful error
    for build in (lambda m: jaxreg.add_l2(0.5, mask=m), lambda m: jaxreg.proximal_l1(0.1, 1.0, m),
                  lambda m: jaxreg.batch_scaled_l2(0.5, m)):
        with pytest.raises(TypeError, match=r"`mask` must be .*jaxreg\.masks\.by_path\(regex\).*"
                                            r"got mask='bias'"):
            build("bias")
    with pytest.raises(TypeError, match=r"jaxreg\.masks\.by_path"):
        jaxreg.penalties.l2({"bias": jnp.ones(2)}, mask="bias")
    params = {"bias": jnp.ones(2), "kernel": jnp.ones((2, 2))}
    got, _ = jaxreg.add_l2(0.5, "all").update(jax.tree.map(jnp.zeros_like, params),
                                               optax.EmptyState(), params)
    chex.assert_trees_all_close(got, jax.tree.map(lambda p: 0.5 * p, params))

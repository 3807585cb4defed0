"""jaxreg.models: output shapes, variable collections, batch-norm behaviour, registry."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxreg import models


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - {"linear"}))
def test_shapes_and_collections(name):
    model = models.get(name, num_classes=7)
    x = jax.random.uniform(jax.random.key(0), (4, 12, 12, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    assert set(variables) == {"params", "batch_stats"}
    assert model.apply(variables, x, train=False).shape == (4, 7)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 7)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )
    # training mode moves the running statistics towards the batch statistics
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))


def test_seed_mlp_layout():
    variables = models.SeedMLP().init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["Dense_0"]["kernel"] == (784, 50)
    assert shapes["Dense_1"]["kernel"] == (50, 10)
    assert jax.tree.map(jnp.shape, variables["batch_stats"]) == {
        "BatchNorm_0": {"mean": (50,), "var": (50,)}
    }


def test_linear_for_regression():
    model = models.get("linear", num_classes=None)
    variables = model.init(jax.random.key(0), jnp.zeros((3, 50)), train=False)
    assert set(variables) == {"params"}
    assert model.apply(variables, jnp.zeros((3, 50)), train=True).shape == (3, 1)


def test_unknown_model():
    with pytest.raises(
        ValueError, match="`name` must be one of 'linear', 'seed-mlp'.*got name='resnet'"
    ):
        models.get("resnet")


@pytest.mark.parametrize("config, hidden", [(models.SeedMLP, (50,)), (models.KerasMLP, (128, 64))])
def test_seed_and_keras_mlps_are_configurations_of_one_mlp(config, hidden):
    x = jax.random.uniform(jax.random.key(0), (4, 6, 6, 1))
    variables = config().init(jax.random.key(1), x, train=False)
    same = models.MLP(hidden=hidden)
    assert jax.tree.structure(same.init(jax.random.key(1), x, train=False)) == jax.tree.structure(
        variables
    )
    for train in (False, True):
        out = config().apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
        ref = same.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), out, ref))
    assert isinstance(config(), models.MLP) and models.SeedMLP(hidden=8).hidden == 8


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_one_registry_builds_both_forms(name):
    """MODELS[name] holds the linen and NNX classes: get builds either, with the same number
    of parameters and the same output shape."""
    shape, x = (8, 8, 1), jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    linen_model = models.get(name, 7)
    nnx_model = models.get(name, 7, api="nnx", input_shape=shape, seed=3)
    assert isinstance(linen_model, models.MODELS[name].linen)
    assert isinstance(nnx_model, models.MODELS[name].nnx) and isinstance(nnx_model, nnx.Module)
    variables = linen_model.init(jax.random.key(1), x, train=False)
    params = nnx.state(nnx_model, nnx.Param)
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == sum(
        v.get_value().size for _, v in nnx.to_flat_state(params))
    nnx_model.eval()
    assert nnx_model(x).shape == linen_model.apply(variables, x, train=False).shape == (4, 7)


def test_get_checks_api_and_input_shape():
    with pytest.raises(ValueError, match="`api` must be one of 'linen', 'nnx'; got api='torch'"):
        models.get("seed-mlp", api="torch")
    with pytest.raises(ValueError, match="`input_shape` must be one example's shape"):
        models.get("seed-mlp", api="nnx")

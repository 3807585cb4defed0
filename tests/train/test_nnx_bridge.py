"""The engine on Flax NNX modules (jaxreg.train.nnx_bridge, jaxreg.models.nnx).

References: the linen twin of each built-in model with the same weights (copied), and the
plain ``@nnx.jit`` + ``nnx.Optimizer`` loop flax's documentation teaches.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxreg import models
from jaxreg.cli import main
from jaxreg.models import nnx as models_nnx
from jaxreg.train import evaluate, fit, sweep
from jaxreg.train.nnx_bridge import NNXModel, wrap

N, SHAPE = 256, (6, 6, 1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, *SHAPE)).astype(np.float32)
    y = (x.reshape(N, -1)[:, :3].argmax(-1)).astype(np.int32)
    return x, y


class DropMLP(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear: batch stats and an nnx.Rngs stream."""

    def __init__(self, rngs):
        self.dense = nnx.Linear(36, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.norm(self.dense(x.reshape(x.shape[0], -1))))))


def copy_from_linen(module, variables):
    """Puts the variables of a linen built-in model into its NNX twin, layer by layer."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    layers = list(getattr(module, "conv", []))
    layers += list(module.dense) if isinstance(module.dense, nnx.List) else [module.dense]
    layers += [module.head] if hasattr(module, "head") else []
    linen = [
        params[k] for prefix in ("Conv", "Dense") for k in sorted(params) if k.startswith(prefix)
    ]
    for layer, p in zip(layers, linen, strict=True):
        layer.kernel[...], layer.bias[...] = p["kernel"], p["bias"]
    norms = [k for k in sorted(params) if k.startswith("BatchNorm")]
    for norm, k in zip(getattr(module, "norm", []), norms, strict=True):
        norm.scale[...], norm.bias[...] = params[k]["scale"], params[k]["bias"]
        norm.mean[...], norm.var[...] = stats[k]["mean"], stats[k]["var"]


TWINS = {  # linen model, its NNX twin (small widths: compiling convolutions is slow on CPU)
    "seed-mlp": (
        lambda: models.SeedMLP(num_classes=3),
        lambda: models_nnx.SeedMLP(SHAPE, 3, rngs=nnx.Rngs(1)),
    ),
    "small-cnn": (
        lambda: models.SmallCNN(num_classes=3, channels=(4,), hidden=8),
        lambda: models_nnx.SmallCNN(SHAPE, 3, channels=(4,), hidden=8, rngs=nnx.Rngs(1)),
    ),
}


@pytest.mark.parametrize("name, validation_split", [("seed-mlp", 0.25), ("small-cnn", 0.0)])
def test_nnx_and_linen_twins_give_the_same_history(data, name, validation_split):
    """Same initial weights -> same loss history, test metrics and final parameters."""
    linen, nnx_model = (make() for make in TWINS[name])
    kw = {
        "epochs": 2,
        "batch_size": 32,
        "validation_split": validation_split,
        "progress": False,
        "seed": 3,
    }
    ref = fit(linen, {"name": "adam", "learning_rate": 1e-2, "l2": 1e-3}, data, **kw)
    # fit(seed=) initializes a linen model with jax.random.split(key(seed))[0]: use those weights
    init_key = jax.random.split(jax.random.key(3))[0]
    copy_from_linen(nnx_model, linen.init(init_key, data[0][:1], train=False))
    res = fit(nnx_model, {"name": "adam", "learning_rate": 1e-2, "l2": 1e-3}, data, **kw)
    assert ref.history.keys() == res.history.keys()
    for k in ("loss", "accuracy", "val_loss", "val_accuracy")[:4 if validation_split else 2]:
        np.testing.assert_allclose(res.history[k], ref.history[k], rtol=2e-5, atol=1e-6)
    assert isinstance(res.model, type(nnx_model))
    trained = TWINS[name][1]()
    copy_from_linen(trained, {"params": ref.state.params, "batch_stats": ref.state.model_state})
    for a, b in zip(jax.tree.leaves(nnx.state(res.model)), jax.tree.leaves(nnx.state(trained)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fit_returns_trained_module_and_evaluate_takes_it(data):
    module = DropMLP(nnx.Rngs(0))
    before = np.asarray(module.head.kernel[...]).copy()
    res = fit(
        module, {"name": "sgd", "learning_rate": 0.1}, data, epochs=2, batch_size=32, progress=False
    )
    np.testing.assert_array_equal(module.head.kernel[...], before)  # the input is not modified
    trained = res.model
    assert (
        isinstance(trained, DropMLP)
        and trained.drop.deterministic
        and trained.norm.use_running_average
    )
    assert not np.allclose(trained.head.kernel[...], before)
    # 2 epochs x 8 steps: the dropout stream drew once per step
    assert int(trained.drop.rngs.count[...]) == 16
    assert not np.allclose(trained.norm.mean[...], 0.0)
    x, y = data
    on_module = evaluate(trained, None, x, y)
    on_state = evaluate(trained, res.state, x, y)
    assert on_module == pytest.approx(on_state, rel=1e-6)
    # the reference: the module's own forward pass in eval mode
    logits = trained(jnp.asarray(x))
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    assert on_module["loss"] == pytest.approx(loss, rel=1e-5)
    assert on_module["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).mean()))
    with pytest.raises(ValueError, match="state"):
        evaluate(models.get("seed-mlp", 3), None, x, y)


def test_matches_plain_nnx_optimizer_loop(data):
    """Dropout, batch stats and Adam: the engine's steps equal an @nnx.jit loop's (same order)."""
    x, y = data
    res = fit(DropMLP(nnx.Rngs(0)), optax.adam(1e-2), data, epochs=1, batch_size=32, progress=False,
              skip_nonfinite=False)
    model = DropMLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    perm = np.asarray(
        jax.random.permutation(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 1), 0), N)
    )
    losses = [float(step(model, opt, x[i], y[i])) for i in perm[: 8 * 32].reshape(8, 32)]
    np.testing.assert_allclose(res.history["loss"], [np.mean(losses)], rtol=1e-5)
    np.testing.assert_allclose(
        res.model.head.kernel[...], model.head.kernel[...], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(res.model.norm.var[...], model.norm.var[...], rtol=1e-5)


def test_resume_is_bit_exact(data, tmp_path):
    kw = {"epochs": 3, "batch_size": 32, "progress": False}
    full = fit(DropMLP(nnx.Rngs(0)), {"name": "adam"}, data, **kw)
    fit(DropMLP(nnx.Rngs(0)), {"name": "adam"}, data, checkpoint_dir=str(tmp_path), **kw,
        callbacks=[lambda epoch, state, logs: epoch == 1])
    resumed = fit(
        DropMLP(nnx.Rngs(0)),
        {"name": "adam"},
        data,
        checkpoint_dir=str(tmp_path),
        resume=True,
        **kw,
    )
    assert resumed.history == {k: v for k, v in full.history.items()} | {
        "epoch_seconds": resumed.history["epoch_seconds"]}
    for a, b in zip(jax.tree.leaves(nnx.state(resumed.model)),
                    jax.tree.leaves(nnx.state(full.model)), strict=True):
        np.testing.assert_array_equal(
            jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
            jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b,
        )


def test_sweep_with_nnx_model(data):
    module = models.get("seed-mlp", 3, api="nnx", input_shape=SHAPE)
    result = sweep(
        module, data, {"learning_rate": [1e-3, 1e-1]}, epochs=1, batch_size=64, progress=False
    )
    assert result.results[0].history["loss"][0] != result.results[1].history["loss"][0]
    ref = fit(
        module,
        {"name": "adam", "learning_rate": 1e-1},
        data,
        epochs=1,
        batch_size=64,
        progress=False,
    )
    np.testing.assert_allclose(
        result.results[1].history["loss"][0], ref.history["loss"][0], rtol=1e-5
    )
    with pytest.raises(ValueError, match="bn_momentum"):
        sweep(module, data, {"bn_momentum": [0.9]}, epochs=1, batch_size=64, progress=False)


def test_wrap_is_hashable_by_architecture():
    a, b = (wrap(models.get("seed-mlp", 3, api="nnx", input_shape=SHAPE, seed=s)) for s in (0, 1))
    assert isinstance(a, NNXModel) and a == b and hash(a) == hash(b)
    assert a != wrap(models.get("keras-mlp", 3, api="nnx", input_shape=SHAPE))
    linen = models.get("seed-mlp", 3)
    assert wrap(linen) is linen


def test_cli_train_and_eval_api_nnx(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # not ~/.cache
    run_dir = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--api", "nnx",
            "--no-progress", "--out", str(run_dir)]
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["api"] == "nnx" and len(metrics["history"]["loss"]) == 1
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"test acc {metrics['test_accuracy']:.4f}" in out


def test_cli_api_flag_help_and_bad_value(capsys):
    assert main(["train", "--help"]) == 0
    assert "--api {linen,nnx}" in capsys.readouterr().out
    assert main(["train", "--api", "torch"]) == 2
    assert "--api: invalid choice" in capsys.readouterr().err

"""Smoke test of the built wheel, installed non-editable with the core dependencies only.

``.ci/run`` runs it from a temporary directory (so the source tree is not on ``sys.path``) in a
fresh venv holding ``dist/jaxreg-*.whl`` and what ``pip install jaxreg`` pulls in. It checks
that the installed package is the wheel, an optax chain with ``batch_scaled_l2`` under ``jit``
against the closed form, a ``jaxreg.nn.BatchNorm`` forward against NumPy, a built-in model
(``jaxreg.models``, core only), and that the training side and the ``jaxreg`` command say, in
one line, how to install the ``[train]`` extra.
"""
import importlib.metadata
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
import jaxreg.nn

assert "site-packages" in jaxreg.__file__, jaxreg.__file__
assert jaxreg.__version__ == importlib.metadata.version("jaxreg"), jaxreg.__version__

# seed 000: theta <- theta - eta (grad + (lambda/b) w) on kernels, here lambda=0.5, b=4, eta=0.1
params = {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.ones(2)}
grads = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
tx = optax.chain(jaxreg.batch_scaled_l2(0.5), optax.sgd(0.1))
step = jax.jit(lambda g, s, p, b: tx.update(g, s, p, batch_size=b))
updates, _ = step(grads, tx.init(params), params, 4)
np.testing.assert_allclose(updates["kernel"], -0.1 * (1 + 0.5 / 4 * 2.0), rtol=1e-6)
np.testing.assert_allclose(updates["bias"], -0.1, rtol=1e-6)

x = jax.random.normal(jax.random.key(0), (16, 5)) * 3 + 1
model = jaxreg.nn.BatchNorm(use_running_average=False)
variables = model.init(jax.random.key(1), x)
y, _ = model.apply(variables, x, mutable=["batch_stats"])
xn = np.asarray(x, np.float64)
expected = (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5)
np.testing.assert_allclose(y, expected, atol=1e-5)

import jaxreg.models  # noqa: E402  (flax only: the built-in models need no [train] extra)

logits = jaxreg.models.get("seed-mlp", 3, api="nnx", input_shape=(5,))(x)
assert logits.shape == (16, 3), logits.shape

for module in ("jaxreg.train", "jaxreg.data"):
    try:
        __import__(module)
    except ModuleNotFoundError as e:
        assert 'pip install "jaxreg[train]"' in str(e) and "\n" not in str(e), str(e)
    else:
        raise AssertionError(f"{module} imported without the [train] extra")
command = subprocess.run([shutil.which("jaxreg") or "jaxreg", "train"], capture_output=True,
                         text=True)
assert command.returncode == 1 and command.stderr.count("\n") == 1, command
assert 'pip install "jaxreg[train]"' in command.stderr, command.stderr

print(f"wheel smoke test: jaxreg {jaxreg.__version__} from {jaxreg.__file__} on "
      f"{sys.version.split()[0]}, jax {jax.__version__}: chain, BatchNorm, models, [train] "
      "message ok")

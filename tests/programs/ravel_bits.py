"""jaxreg.raveled against the per-leaf chain, bit for bit under jit, once XLA's two
program-dependent roundings are off: ``--xla_cpu_max_isa=AVX`` (no FMA instructions, so LLVM
cannot contract ``a * b + c`` in one fusion and not in the other) and
``--xla_disable_hlo_passes=algsimp`` (``x / broadcast(c)`` stays a division). A diagnostic
configuration that shows these are the only causes, not one to train with
(docs/conventions.md, "Many leaves").

Run by tests/transforms/test_ravel.py as ``python -m tests.programs.ravel_bits`` with those
``XLA_FLAGS`` (x86-64: the flag names an x86 ISA); that test imports the cases from here too.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

FLAGS = "--xla_cpu_max_isa=AVX --xla_disable_hlo_passes=algsimp"


def params() -> dict[str, Any]:
    """float32, bfloat16 and float16 leaves; a size-1 leaf and one long enough for a vector
    loop and its tail."""
    keys = jax.random.split(jax.random.key(0), 7)
    return {
        "Dense_0": {"kernel": jax.random.normal(keys[0], (5, 3)),
                    "bias": jax.random.normal(keys[1], (3,))},
        "Dense_1": {"kernel": jax.random.normal(keys[2], (3, 4)).astype(jnp.bfloat16),
                    "bias": jax.random.normal(keys[3], (4,)).astype(jnp.bfloat16)},
        "BatchNorm_0": {"scale": jax.random.normal(keys[4], (3,)) * 0.1},
        "layers": [jax.random.normal(keys[5], (2, 2, 2)).astype(jnp.float16)],
        "Embed_0": {"embedding": jax.random.normal(keys[6], (1001,)),
                    "scale": jnp.full((1,), 0.5)},
    }


MASKS: dict[str, Any] = {"kernels_only": None, "all": True,
                         "by_path": jaxreg.masks.by_path("Dense_1|layers")}


def _proximal_chain(optimizer: Callable[[], optax.GradientTransformation], mask: Any
                    ) -> Callable[[], optax.GradientTransformation]:
    def build() -> optax.GradientTransformation:
        return optax.chain(jaxreg.batch_scaled_l2(0.5, mask), optimizer(),
                           jaxreg.proximal_l1(30.0, 1e-2, mask))
    return build


def _cases() -> dict[str, Callable[[], optax.GradientTransformation]]:
    cases: dict[str, Callable[[], optax.GradientTransformation]] = {
        "sgd": lambda: optax.sgd(1e-2),
        "nesterov": lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True),
        "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
        "add_l1+sgd": lambda: optax.chain(jaxreg.add_l1(1e-2), optax.sgd(1e-2)),
        "add_l2+adam": lambda: optax.chain(jaxreg.add_l2(0.5, True), optax.adam(1e-2)),
        "sgd+proximal_elastic_net": lambda: optax.chain(
            optax.sgd(1e-2), jaxreg.proximal_elastic_net(30.0, 0.5, 1e-2)),
    }
    optimizers = {"momentum": lambda: optax.sgd(1e-2, momentum=0.9),
                  "adam": lambda: optax.adam(1e-2)}
    for name, mask in MASKS.items():
        for opt_name, optimizer in optimizers.items():
            cases[f"batch_scaled_l2+{opt_name}+proximal_l1/{name}"] = _proximal_chain(
                optimizer, mask)
    return cases


CASES = _cases()


def history(tx: optax.GradientTransformation, params: Any, steps: int = 4) -> list[Any]:
    """``(params, updates)`` after each of ``steps`` jitted steps (``jax.disable_jit`` makes
    them op by op); the gradients ``cos(3 w)`` and ``batch_size=16 * step``."""
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def step(params, state, batch_size):
        grads = jax.tree.map(lambda p: jnp.cos(p * 3).astype(p.dtype), params)
        updates, state = tx.update(grads, state, params, batch_size=batch_size)
        return optax.apply_updates(params, updates), state, updates

    state = jax.jit(tx.init)(params)
    out = []
    for b in range(1, steps + 1):
        params, state, updates = step(params, state, 16 * b)
        out.append((params, updates))
    return out


def mismatches(got: list[Any], want: list[Any]) -> list[str]:
    """``step/path`` of every leaf of ``got`` that is not bit-identical to ``want``'s."""
    bad = []
    for i, (step_got, step_want) in enumerate(zip(got, want, strict=True)):
        pairs = zip(jax.tree_util.tree_flatten_with_path(step_got)[0],
                    jax.tree.leaves(step_want), strict=True)
        for (path, a), b in pairs:
            if a.dtype != b.dtype or not np.array_equal(np.asarray(a), np.asarray(b)):
                bad.append(f"step {i + 1}{jax.tree_util.keystr(path)}")
    return bad


def main() -> None:
    """Every case on :func:`params` and on its float32 copy (one buffer: there Adam's bias
    correction has one user, and only ``algsimp`` off keeps its division)."""
    trees = {"mixed": params(), "float32": jax.tree.map(lambda p: p.astype(jnp.float32),
                                                        params())}
    failed = {}
    for name, build in CASES.items():
        for tree_name, tree in trees.items():
            bad = mismatches(history(jaxreg.raveled(build()), tree), history(build(), tree))
            if bad:
                failed[f"{name} ({tree_name})"] = bad[:3]
    flags = os.environ.get("XLA_FLAGS")
    assert not failed, f"not bit-identical under jit with XLA_FLAGS={flags!r}: {failed}"
    print(f"{len(CASES)} cases bit-identical")


if __name__ == "__main__":
    main()

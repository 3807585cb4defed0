"""Optimizer update cost: jaxreg's L2 transform in an optax chain vs optax's own.

One jitted update with ``(params, opt_state)`` donated and the updates applied
(``optax.apply_updates``) in the same function, on pytrees of float32 leaves of the same total
size split three ways (one leaf, 100 leaves, 1000 leaves):

- ``optax.chain(jaxreg.batch_scaled_l2(s, mask=True), optax.sgd(lr, momentum))`` (jaxreg,
  ``batch_size`` passed at every step) against the same maths in optax,
  ``optax.chain(optax.add_decayed_weights(s / b), optax.sgd(lr, momentum))`` (target: at most
  5% slower), and against bare ``optax.sgd(lr, momentum)`` (informational: what the penalty
  costs).
- Per-leaf overhead: the update time of the most-leaves layout over the one-leaf layout of the
  same total size (the issue quotes about 25x for optax on an H100), for both chains.
- Fused paths for many leaves, each over the one-leaf time (target: at most 3x):
  ``optax.flatten(chain)`` (concatenates params and gradients at every step and splits the
  updates back), and a contiguous buffer: params and optimizer state kept as one
  ``ravel_pytree`` vector, the gradient pytree raveled inside the step.

- Many leaves (``many_leaves``): ``jaxreg.raveled(chain)``, the jaxreg chain run over one
  buffer per dtype, on 1000 leaves against optax's per-leaf chain on the same 1000 leaves and
  on one leaf of the same total size (1000 x 100k vs 1 x 100M on GPU, 1000 x 10k vs 1 x 10M on
  CPU, 1000 x 100 vs 1 x 100k with ``--quick``).

The two chains compile to the same executable (their optimized HLO differs only in debug
metadata), so their ratio measures the noise floor. In each round of alternation the first
function measured about 5% slower than its position-swapped twin, so bare SGD goes first.

``mask=True`` because these synthetic leaves are 1-D, which jaxreg's default mask
(``kernels_only``) leaves alone; under ``optax.flatten`` the mask is resolved on the single
flat vector, so it must be ``True`` there in any case.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

import jaxreg
from benchmarks.timing import interleaved_medians, row

LEARNING_RATE, MOMENTUM, STRENGTH, BATCH_SIZE = 0.1, 0.9, 1e-2, 128


def _layouts(quick: bool) -> list[tuple[int, int]]:
    """``(leaves, leaf size)``, one leaf first; the same total size in every layout."""
    if quick:
        return [(1, 100_000), (100, 1_000)]
    if jax.default_backend() == "gpu":
        return [(1, 100_000_000), (100, 1_000_000), (1000, 100_000)]
    return [(1, 10_000_000), (100, 100_000), (1000, 10_000)]


def _label(leaves: int, size: int) -> str:
    def short(n: int) -> str:
        for div, suffix in ((1_000_000, "M"), (1_000, "k")):
            if n % div == 0:
                return f"{n // div}{suffix}"
        return str(n)
    return f"{leaves} x {short(size)} f32"


def _jaxreg_chain() -> optax.GradientTransformation:
    return optax.chain(
        jaxreg.batch_scaled_l2(STRENGTH, mask=True), optax.sgd(LEARNING_RATE, MOMENTUM)
    )


def _optax_chain() -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(STRENGTH / BATCH_SIZE), optax.sgd(LEARNING_RATE, MOMENTUM)
    )


def _stepper(tx: optax.GradientTransformation, params: Any, grads: Any,
             prepare: Callable[[Any], Any] = lambda g: g) -> Callable[[], Any]:
    """A no-argument call running one donated, jitted update; it carries its own state.

    ``prepare`` maps the gradient pytree to what ``tx`` takes, inside the jitted step.
    """
    extra_args_tx = optax.with_extra_args_support(tx)

    def update(params, opt_state, grads):
        updates, opt_state = extra_args_tx.update(prepare(grads), opt_state, params,
                                                  batch_size=BATCH_SIZE)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params), tx.init(params)]

    def call() -> Any:
        carry[:] = update(carry[0], carry[1], grads)
        return carry
    return call


def _params_and_grads(leaves: int, size: int) -> tuple[dict[str, jax.Array], Any]:
    keys = jax.random.split(jax.random.key(leaves), 2)
    params = {
        f"w{i:04d}": jax.random.normal(k, (size,))
        for i, k in enumerate(jax.random.split(keys[0], leaves))
    }
    return params, jax.tree.map(lambda p: 1e-3 * p + 1.0, params)


def many_leaves(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """``jaxreg.raveled(jaxreg chain)`` on 1000 leaves vs optax's chain on 1000 and on 1."""
    total = 100_000 if quick else (100_000_000 if jax.default_backend() == "gpu" else 10_000_000)
    many, one = _label(1000, total // 1000), _label(1, total)
    params, grads = _params_and_grads(1, total)
    one_leaf = interleaved_medians({"optax": _stepper(_optax_chain(), params, grads)},
                                   repeats=repeats, warmup=2)["optax"]
    params, grads = _params_and_grads(1000, total // 1000)
    times = interleaved_medians({
        "optax": _stepper(_optax_chain(), params, grads),
        "raveled": _stepper(jaxreg.raveled(_jaxreg_chain()), params, grads),
    }, repeats=repeats, warmup=2)
    return [
        row("update", f"many leaves: optax chain {many} / {one}", times["optax"],
            f"optax chain, {one}", one_leaf, "info (43x on GPU, issue 26)"),
        row("update", f"many leaves: jaxreg.raveled(jaxreg chain) {many} / {one}",
            times["raveled"], f"optax chain, {one}", one_leaf, "<= 3"),
        row("update", f"many leaves: jaxreg.raveled(jaxreg chain) {many}", times["raveled"],
            f"optax chain, {many}", times["optax"], "info (< 1: faster)"),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    repeats = 7 if quick else 15
    rows, one_leaf = [], {}
    for leaves, size in _layouts(quick):
        params, grads = _params_and_grads(leaves, size)
        fns = {  # the first of each round measured ~5% slow: not one of the two compared chains
            "sgd": _stepper(optax.sgd(LEARNING_RATE, MOMENTUM), params, grads),
            "jaxreg": _stepper(_jaxreg_chain(), params, grads),
            "optax": _stepper(_optax_chain(), params, grads),
        }
        if leaves > 1:
            fns["flatten"] = _stepper(optax.flatten(_jaxreg_chain()), params, grads)
            flat_params, _ = ravel_pytree(params)
            fns["buffer"] = _stepper(
                _jaxreg_chain(), flat_params, grads, prepare=lambda g: ravel_pytree(g)[0]
            )
        times = interleaved_medians(fns, repeats=repeats, warmup=2)
        del fns, params, grads
        config = _label(leaves, size)
        rows.append(row("update", config, times["jaxreg"], "optax add_decayed_weights+sgd",
                        times["optax"], "<= 1.05"))
        rows.append(
            row("update", config, times["jaxreg"], "optax sgd (no penalty)", times["sgd"], "info")
        )
        if leaves == 1:
            one_leaf = times
            continue
        single = _label(1, leaves * size)
        rows.append(
            row(
                "update",
                f"per-leaf overhead: jaxreg chain {config} / {single}",
                times["jaxreg"],
                "jaxreg chain, 1 leaf",
                one_leaf["jaxreg"],
                "info (optax ~25x on H100)",
            )
        )
        rows.append(
            row(
                "update",
                f"per-leaf overhead: optax chain {config} / {single}",
                times["optax"],
                "optax chain, 1 leaf",
                one_leaf["optax"],
                "info (optax ~25x on H100)",
            )
        )
        rows.append(
            row(
                "update",
                f"optax.flatten(jaxreg chain) {config} / {single}",
                times["flatten"],
                "jaxreg chain, 1 leaf",
                one_leaf["jaxreg"],
                "<= 3",
            )
        )
        rows.append(
            row(
                "update",
                f"ravel_pytree buffer jaxreg chain {config} / {single}",
                times["buffer"],
                "jaxreg chain, 1 leaf",
                one_leaf["jaxreg"],
                "<= 3",
            )
        )
    return rows + many_leaves(quick, repeats)

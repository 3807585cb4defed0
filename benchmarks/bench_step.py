"""The scanned step (issue 26 item 2): what ``jaxreg train``'s epoch launches per step.

The program measured is the seed recipe's compiled epoch exactly as ``jaxreg train`` builds it
(:func:`jaxreg.train.plan.make_plan` with :class:`jaxreg.train.config.RunConfig`'s defaults:
``SeedMLP``, Adam 1e-3 through ``make_optimizer``, batch 128, non-finite steps skipped, the
batch gathered in the scan). The reference is a plain ``lax.scan`` of the flax loop's step
(:mod:`benchmarks.flax_loop`: flax's ``TrainState`` and ``BatchNorm``, ``optax.adam``) over
pre-permuted slabs. For each, the instructions of the scan's ``while`` body in the optimized
HLO (``jit(...).lower(...).compile().as_text()``) by opcode (each top-level instruction is a
kernel, a copy or bookkeeping) and by kernel (a fusion named by its root: ``select``,
``reduce``, ``is-finite``, ``gather``, ...), and us per step (median over epochs timed in
alternation).

The other rows toggle one thing of the recipe's step at a time, to attribute the difference:
no non-finite skip, batches from pre-permuted slabs (no gather), ``optax.adam`` instead of
``make_optimizer``'s chain (``inject_hyperparams``, masks), flax's ``BatchNorm`` instead of
jaxreg's (its ill-conditioning ``cond``); and the epoch's data permuted once at its start
(one full-data gather an epoch) instead of a batch gathered per step. Run alone it prints the
table::

    python -m benchmarks.bench_step [--quick]

Sizes: Fashion-MNIST's 60000 training images (468 steps an epoch), 7 epochs timed per
program (5 on GPU, with two variants); ``--quick``: 2048 random images (16 steps), 3
epochs. Rows are yielded as measured: the recipe's first, then the toggles'.
"""
from __future__ import annotations

import collections
import functools
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg.data
from benchmarks import flax_loop
from benchmarks.timing import interleaved_medians, row
from jaxreg.models import SeedMLP
from jaxreg.train import create_train_state, cross_entropy, scan_epoch, train_step
from jaxreg.train.config import RunConfig
from jaxreg.train.plan import make_plan

BATCH_SIZE, SEED = 128, 0
GOAL = "<= 45 us/step (H100/H200)"

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_BOOKKEEPING = ("get-tuple-element", "tuple", "parameter", "constant", "bitcast")


def scan_body_ops(hlo: str) -> tuple[collections.Counter, collections.Counter]:
    """The instructions of the largest ``while`` body in an optimized HLO module's text (a
    scanned epoch's step; threefry's loops are smaller): counts by opcode, and by what each
    does (a fusion counted as its root's opcode, ``multi-output`` for a tuple root)."""
    bodies: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        if line.endswith("{") and not line.startswith((" ", "HloModule")):
            match = _COMPUTATION.match(line)
            current = bodies.setdefault(match.group(1), []) if match else None
        elif line.startswith("}"):
            current = None
        elif current is not None and " = " in line:
            current.append(line)

    def opcode(line: str) -> str:
        return m.group(1) if (m := _INSTRUCTION.match(line)) else "?"

    def root(line: str) -> str:
        called = _CALLS.search(line)
        if opcode(line) != "fusion" or not called or called.group(1) not in bodies:
            return opcode(line)
        last = next(x for x in bodies[called.group(1)] if x.lstrip().startswith("ROOT"))
        return "multi-output" if opcode(last) == "tuple" else opcode(last)

    names = [m.group(1) for lines in bodies.values() for line in lines if " while(" in line
             for m in [re.search(r"body=%?([\w.\-]+)", line)] if m]
    body = max((bodies[n] for n in names), key=len, default=[])
    return (collections.Counter(map(opcode, body)),
            collections.Counter(root(line) for line in body if opcode(line) not in _BOOKKEEPING))


def summary(counts: collections.Counter) -> str:
    """``n (op k, ...)``: the total, then the counts that are work, most first."""
    work = [(op, k) for op, k in counts.most_common() if op not in _BOOKKEEPING]
    return f"{sum(counts.values())} (" + ", ".join(f"{op} {k}" for op, k in work) + ")"


def _data(quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    if quick:
        rng = np.random.default_rng(SEED)
        x = rng.random((2048, 28, 28, 1), dtype=np.float32)
        return x, rng.integers(0, 10, len(x)).astype(np.int32), "random 2048x28x28"
    ds = jaxreg.data.load("fashion-mnist", download=False)
    return ds.x_train, ds.y_train, "Fashion-MNIST 60000x28x28"


def _epochs(run: Callable, state: Any, args: Callable[[int], tuple]) -> Callable[[], Any]:
    """One epoch per call of the donating ``run``, from ``state`` on (its own copy)."""
    carry = [jax.tree.map(jnp.copy, state), 0]

    def call() -> Any:
        carry[0], metrics = run(carry[0], *args(carry[1]))
        carry[1] += 1
        return metrics
    return call


TOGGLES = ("no skip_nonfinite", "optax.adam", "flax BatchNorm", "slabs (no gather)",
           "all four toggled", "pre-permuted epoch")
"""The variants of the recipe's step: one thing toggled, then all four (what is left is
jaxreg's ``TrainState`` and metrics); and the alternative to the in-scan gather with its cost
counted: the epoch's data permuted at its start, in the program, then scanned as slabs."""


def programs(x: np.ndarray, y: np.ndarray,
             variants: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any, Callable]]:
    """``{name: (jitted epoch, initial state, epoch index -> arguments after the state)}``:
    ``recipe`` (``jaxreg train``'s epoch program), ``plain`` (the flax loop's step scanned over
    pre-permuted slabs) and the ``variants`` named (of :data:`TOGGLES`)."""
    plan = make_plan(SeedMLP(), RunConfig().optimizer.kwargs(), (x, y), epochs=100,
                     batch_size=BATCH_SIZE, seed=SEED, test=False)
    recipe = plan.runners[BATCH_SIZE].__wrapped__  # the jitted scan_epoch, without its waiting
    steps = len(x) // BATCH_SIZE
    data_key = jax.random.fold_in(jax.random.key(SEED), 1)
    keys = [jax.random.fold_in(data_key, e) for e in range(8)]
    perm = jax.random.permutation(keys[0], len(x))[: steps * BATCH_SIZE]
    slabs = (plan.x[perm].reshape(steps, BATCH_SIZE, *x.shape[1:]),
             plan.y[perm].reshape(steps, BATCH_SIZE))

    def gathered(e: int) -> tuple:
        return plan.x, plan.y, keys[e % len(keys)]

    def slab_scan(step: Callable) -> Any:
        return jax.jit(lambda s, xs, ys: jax.lax.scan(lambda c, b: step(c, *b), s, (xs, ys)),
                       donate_argnums=0)

    flax_model, adam = flax_loop.SeedMLP(), optax.adam(1e-3)
    variables = flax_model.init(jax.random.key(SEED), x[:1], train=False)
    out = {"recipe": (recipe, plan.placement.state, gathered),
           "plain": (slab_scan(flax_loop.step), flax_loop.State.create(
               apply_fn=flax_model.apply, params=variables["params"], tx=adam,
               batch_stats=variables["batch_stats"]), lambda e: slabs)}
    base = dict(model=plan.model, tx=plan.optimizer.tx, loss_fn=cross_entropy,
                skip_nonfinite=True)
    toggles = {"no skip_nonfinite": dict(skip_nonfinite=False), "optax.adam": dict(tx=adam),
               "flax BatchNorm": dict(model=flax_model), "slabs (no gather)": {}}
    toggles["all four toggled"] = {k: v for t in toggles.values() for k, v in t.items()}
    toggles["pre-permuted epoch"] = {}

    def prepermuted(state: Any, x: jax.Array, y: jax.Array, key: jax.Array, *, step: Callable):
        perm = jax.random.permutation(key, x.shape[0])[: steps * BATCH_SIZE]
        return jax.lax.scan(lambda c, b: step(c, *b), state,
                            (x[perm].reshape(steps, BATCH_SIZE, *x.shape[1:]),
                             y[perm].reshape(steps, BATCH_SIZE)))

    for label in variants:
        kwargs = {**base, **toggles[label]}
        step = functools.partial(train_step, **kwargs)
        state = create_train_state(kwargs["model"], kwargs["tx"], x[:1], SEED)
        if label in ("slabs (no gather)", "all four toggled"):
            out[label] = (slab_scan(step), state, lambda e: slabs)
        else:
            epoch = prepermuted if label == "pre-permuted epoch" else functools.partial(
                scan_epoch, batch_size=BATCH_SIZE)
            out[label] = (jax.jit(functools.partial(epoch, step=step), donate_argnums=0), state,
                          gathered)
    return out


def run(quick: bool) -> Iterator[dict[str, Any]]:
    x, y, name = _data(quick)
    gpu = jax.default_backend() == "gpu"
    # on a GPU (a 15 s part of gpu.sh): the skip, and the gather against the permuted epoch
    progs = programs(x, y, ("no skip_nonfinite", "pre-permuted epoch") if gpu else TOGGLES)
    epochs = 3 if quick else 5 if gpu else 7
    steps = len(x) // BATCH_SIZE
    config = f"seed recipe (SeedMLP, adam, batch {BATCH_SIZE}), {name}"
    counts, roots, fns = {}, {}, {}
    # the recipe against the plain step first (its row is kept if a time limit stops the rest),
    # then the variants, each timed in alternation with the recipe and the plain step
    variants = [k for k in progs if k not in ("recipe", "plain")]
    for labels in (["recipe", "plain"], ["recipe", "plain", *variants]):
        for label in labels:
            if label not in fns:
                jitted, state, args = progs[label]
                counts[label], roots[label] = scan_body_ops(
                    jitted.lower(state, *args(0)).compile().as_text())
                fns[label] = _epochs(jitted, state, args)
        times = interleaved_medians({k: fns[k] for k in labels}, repeats=epochs, warmup=1)
        for label in labels:
            print(f"{label:>18}: {1e6 * times[label] / steps:7.1f} us/step, scan body "
                  f"{summary(counts[label])}\n{'':>20}kernels by root: {summary(roots[label])}",
                  flush=True)
        for label in labels[2:] or ["recipe"]:
            yield row("step", f"{config}, us per step: {label}", times[label],
                      "plain lax.scan of the flax step over pre-permuted slabs", times["plain"],
                      GOAL if gpu and label == "recipe" else "info",
                      us_per_step=1e6 * times[label] / steps,
                      reference_us_per_step=1e6 * times["plain"] / steps,
                      scan_body=dict(counts[label]), reference_scan_body=dict(counts["plain"]),
                      kernels=dict(roots[label]), reference_kernels=dict(roots["plain"]))


if __name__ == "__main__":
    list(run(quick="--quick" in sys.argv[1:]))

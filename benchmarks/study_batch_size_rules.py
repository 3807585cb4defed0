"""The batch-size scaling study (issue 23 item 3), as a script: SeedMLP on Fashion-MNIST at
batch sizes 32..4096, trained with the B0 = 128 hyperparameters unchanged and with each rule
that applies (Adam: ``sqrt``, ``sqrt`` + ``ema``; SGD with momentum: ``linear``), several
seeds; and Smith et al. 2018 (a learning-rate decay vs the batch-size increase replacing it).

Usage: ``python -m benchmarks.study_batch_size_rules OUT.json [--epochs E] [--seeds S]
[--train N]`` (CPU budget: ``--epochs 3 --seeds 3 --train 20000``; a GPU runs the full grid:
``--epochs 10 --seeds 5 --train 60000``). Prints a markdown table: test accuracy mean +- std
over the seeds per rule and batch size; "n/a" where the rule cannot be applied (the sqrt rule
pushes ``b1`` below 0 beyond ``k = 10``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import optax

from jaxreg.data import load
from jaxreg.train import fit
from jaxreg.train.models import SeedMLP

SIZES = (32, 128, 512, 1024, 2048, 4096)
B0 = 128
RULES = {  # name -> (optimizer dict at B0, rules or None for the unchanged baseline)
    "adam: unchanged": (dict(name="adam", learning_rate=1e-3), None),
    "adam: sqrt": (dict(name="adam", learning_rate=1e-3), ["sqrt"]),
    "adam: sqrt+ema": (dict(name="adam", learning_rate=1e-3), ["sqrt", "ema"]),
    "momentum: unchanged": (dict(name="momentum", learning_rate=0.05), None),
    "momentum: linear": (dict(name="momentum", learning_rate=0.05), ["linear"]),
}


def train(data, optimizer, batch_size, seed, epochs):
    t0 = time.perf_counter()
    r = fit(SeedMLP(), optimizer, data, epochs=epochs, batch_size=batch_size, seed=seed,
            progress=False)
    return dict(test_accuracy=r.test["accuracy"], steps=int(r.state.step),
                seconds=time.perf_counter() - t0, curve=r.history["loss"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train", type=int, default=20000)
    args = p.parse_args()
    full = load("fashion-mnist")
    data = dataclasses.replace(full, x_train=full.x_train[:args.train],
                               y_train=full.y_train[:args.train])
    results: dict = {"args": vars(args), "rules": {}, "smith": {}}
    for name, (optimizer, rules) in RULES.items():
        for b in SIZES:
            opt = optimizer if rules is None else {**optimizer, "scaling": rules,
                                                   "scale_from": B0}
            try:
                runs = [train(data, opt, b, seed, args.epochs) for seed in range(args.seeds)]
            except ValueError as e:  # the rule does not apply at this k
                results["rules"].setdefault(name, {})[b] = {"error": str(e)}
                print(name, b, "n/a:", e, flush=True)
                continue
            acc = [r["test_accuracy"] for r in runs]
            results["rules"].setdefault(name, {})[b] = dict(
                mean=float(np.mean(acc)), std=float(np.std(acc)), runs=runs)
            print(name, b, f"{np.mean(acc):.4f} +- {np.std(acc):.4f}", flush=True)
    # Smith et al. 2018: decay eta by 5 at 2/3 of the run, or multiply B by 5 there instead
    n, epochs = args.train, args.epochs
    switch = max(1, 2 * epochs // 3)
    decay = optax.piecewise_constant_schedule(0.05, {switch * (n // B0): 0.2})
    for label, opt, batch in (
            ("decay eta", dict(name="momentum", learning_rate=decay), B0),
            ("increase B", dict(name="momentum", learning_rate=0.05), {0: B0, switch: 5 * B0})):
        runs = [train(data, opt, batch, seed, epochs) for seed in range(args.seeds)]
        acc = [r["test_accuracy"] for r in runs]
        results["smith"][label] = dict(mean=float(np.mean(acc)), std=float(np.std(acc)),
                                       steps=runs[0]["steps"],
                                       seconds=float(np.mean([r["seconds"] for r in runs])))
        print(label, results["smith"][label], flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))


def table(results: dict) -> str:
    lines = ["| rule | " + " | ".join(f"B={b}" for b in SIZES) + " |",
             "|---" * (len(SIZES) + 1) + "|"]
    for name, by_size in results["rules"].items():
        cells = [(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if "mean" in v else "n/a")
                 for v in (by_size.get(b, by_size.get(str(b))) for b in SIZES)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The command a user types: whole-process ``jaxreg train`` vs hand-written loops, in rounds.

Seed 004's recipe (``SeedMLP``, Adam 1e-3, batch 128, ``jaxreg train``'s defaults) for 10 epochs
on Fashion-MNIST (``--quick``: scikit-learn's digits, 2 epochs), found by ``jaxreg.data``
without downloading (else the case fails at once). Every side is a fresh subprocess; a round
runs each once, in an order rotated from round to round (1 round on GPU and with ``--quick``,
3 on CPU), after an untimed ``compileall`` and import of the packages (bytecode, file cache):

- ``jaxreg train``, empty cache: a fresh ``XDG_CACHE_HOME``, so JAX's compilation cache is empty
  and gets written, as in a new user's first run; ``JAX_LOG_COMPILES=1`` counts the programs it
  compiles and their seconds;
- ``jaxreg train``, warm cache: the same command again on that cache;
- ``jaxreg train --deterministic`` (XLA's deterministic GPU kernels, no autotuning): its steady
  epoch against the warm run's is the price of bit-exact resume on a GPU;
- ``python -m benchmarks.flax_loop`` (flax ``TrainState``, per-step jit), ``torch_loop`` (eager,
  data on the device, fused Adam; when torch is importable) and ``nnx_loop`` (flax's NNX
  tutorial loop): their whole process and their ``train_seconds``.

Rows (ratio = jaxreg / loop, lower is better), per loop: the whole process and ``train_seconds``
(the ``fit`` call), empty and warm cache, medians over rounds. Targets (issue 26), against the
flax loop: GPU empty cache ``train_seconds <= 0.5`` and whole process ``<= 0.6``, warm
``<= 0.35``; CPU warm whole process ``<= 0.75``, empty ``train_seconds <= 1``. The jaxreg sides
carry where their ``train_seconds`` went: ``first_epoch_s``, ``steady_epoch_s`` (median of the
later epochs), ``outside_epochs_s`` and, empty cache, ``compilations`` / ``compile_s``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from benchmarks.timing import row
from jaxreg.data import sources

LOOPS = {"flax": "flax TrainState per-step loop script", "torch": "PyTorch eager loop script",
         "nnx": "flax NNX tutorial loop script"}
COMPILED = re.compile(r"Finished XLA compilation of (.+?) in ([0-9.e+-]+) s")


def _targets(gpu: bool) -> dict[str, str]:
    """The flax loop's targets by row kind."""
    if gpu:
        return {"wall empty": "<= 0.6 (GPU)", "wall warm": "<= 0.35 (GPU)",
                "train_seconds empty": "<= 0.5 (GPU)", "train_seconds warm": "info"}
    return {"wall empty": "info", "wall warm": "<= 0.75 (CPU)",
            "train_seconds empty": "<= 1.0 (CPU)", "train_seconds warm": "info"}


def _run(command: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """Wall seconds, stdout and stderr of a subprocess; RuntimeError with its stderr if it
    fails. ``PYTHONDONTWRITEBYTECODE`` is dropped: a user's installed packages have bytecode."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return seconds, done.stdout, done.stderr


def _jaxreg(side: str, dataset: str, epochs: int, tmp: Path, index: int) -> dict[str, Any]:
    """One ``jaxreg train`` process: its wall time and where its ``train_seconds`` went."""
    out = tmp / f"{side}{index}"
    command = [sys.executable, "-m", "jaxreg", "train", "--dataset", dataset, "--epochs",
               str(epochs), "--no-progress", "--out", str(out)]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / f"cache{index}"))
    if side == "empty":
        env["JAX_LOG_COMPILES"] = "1"
    if side == "deterministic":
        command.append("--deterministic")
    wall, _, stderr = _run(command, env)
    metrics = json.loads((out / "metrics.json").read_text())
    epoch_s = metrics["history"]["epoch_seconds"]
    record = {"wall": wall, "train_seconds": metrics["train_seconds"],
              "test_accuracy": metrics["test_accuracy"], "first_epoch_s": epoch_s[0],
              "steady_epoch_s": statistics.median(epoch_s[1:] or epoch_s),
              "outside_epochs_s": metrics["train_seconds"] - sum(epoch_s)}
    compiled = [(name, float(s)) for name, s in COMPILED.findall(stderr)]
    if side == "empty":
        record |= {"compilations": len(compiled), "compile_s": sum(s for _, s in compiled),
                   "slowest_compiles": sorted(compiled, key=lambda c: -c[1])[:6]}
    return record


def _loop(side: str, dataset: str, epochs: int) -> dict[str, Any]:
    """One loop script's process: wall time, ``train_seconds`` and test accuracy."""
    wall, stdout, _ = _run([sys.executable, "-m", f"benchmarks.{side}_loop", "--dataset",
                            dataset, "--epochs", str(epochs)], dict(os.environ))
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "train_seconds": report["train_seconds"],
            "test_accuracy": report["test_accuracy"]}


def _rounds(dataset: str, epochs: int, rounds: int, loops: list[str]) -> list[dict[str, Any]]:
    """``rounds`` rounds of every side, each record printed as it comes (a part stopped at its
    time limit keeps them in its log)."""
    units = [("empty", "warm"), ("deterministic",)] + [(loop,) for loop in loops]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as name:
        tmp = Path(name)
        for i in range(rounds):
            result = {}
            for unit in units[i % len(units):] + units[:i % len(units)]:
                for side in unit:
                    result[side] = (_loop(side, dataset, epochs) if side in LOOPS else
                                    _jaxreg(side, dataset, epochs, tmp, i))
                    print(json.dumps({"round": i, "side": side, **result[side]}), flush=True)
            results.append(result)
    return results


def run(quick: bool) -> Iterator[dict[str, Any]]:
    gpu = jax.default_backend() == "gpu"
    dataset = "digits" if quick else "fashion-mnist"
    if dataset != "digits":
        sources.locate(dataset, download=False)  # DataError now, not a download in each process
    epochs, rounds = (2, 1) if quick else (10, 1 if gpu else 3)
    loops = [k for k in LOOPS if k != "torch" or importlib.util.find_spec("torch") is not None]
    if "torch" not in loops:
        print("bench_cli: torch is not importable; no torch loop rows", flush=True)
    warm_up = "import jaxreg.cli, flax.nnx, optax, sklearn" + (", torch" * ("torch" in loops))
    for command in (["-m", "compileall", "-q", "jaxreg", "benchmarks"], ["-c", warm_up]):
        _run([sys.executable, *command], dict(os.environ))
    results = _rounds(dataset, epochs, rounds, loops)
    config = f"seed 004 MLP, {dataset}, {epochs} epochs, batch 128, L2 0.025/B"

    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in results)

    def extra(side: str) -> dict[str, Any]:
        keys = [k for k in results[0][side] if k not in ("wall", "train_seconds")]
        return {f"jaxreg_{k}": (statistics.median(r[side][k] for r in results)
                                if isinstance(results[0][side][k], float) else results[0][side][k])
                for k in keys}

    targets = _targets(gpu)
    for loop in loops:
        for cache in ("empty", "warm"):
            for key, what in (("wall", "whole process"), ("train_seconds", "train_seconds")):
                kind = f"{'wall' if key == 'wall' else 'train_seconds'} {cache}"
                yield row("cli", f"{config}, {what}, {cache} cache (median of {rounds})",
                          med(cache, key), f"{LOOPS[loop]}, {what}", med(loop, key),
                          targets[kind] if loop == "flax" else "info", **extra(cache),
                          reference_test_accuracy=med(loop, "test_accuracy"))
    yield row("cli", f"{config}, steady epoch, --deterministic", med("deterministic",
              "steady_epoch_s"), "jaxreg train (autotuned kernels), steady epoch",
              med("warm", "steady_epoch_s"), "info (cost of bit-exact resume on GPU)",
              **extra("deterministic"))

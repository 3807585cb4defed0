"""The command a user types: whole-process ``jaxreg train`` vs a hand-written flax loop.

Seed 004's recipe (``SeedMLP``, Adam 1e-3, batch 128, batch-scaled L2 0.025 on kernels:
``jaxreg train``'s defaults) for 10 epochs on Fashion-MNIST (``--quick``: scikit-learn's
digits, no download, 2 epochs, one pair). Both sides run as fresh subprocesses, in pairs with
alternating order, after one untimed pair (which fills ``jaxreg``'s compilation cache and the
OS file cache):

- ``jaxreg train --dataset D --epochs 10 --no-progress --out TMP``: the whole process (Python
  start, imports, data, compilation, epochs, a checkpoint per epoch, test evaluation,
  ``metrics.json`` and ``curves.png``) and its ``train_seconds`` (the ``fit`` call);
- ``python benchmarks/flax_loop.py --dataset D --epochs 10``: the same recipe as a flax user's
  per-step loop (see that file), its whole process and its ``train_seconds``.

Rows (ratio = jaxreg / flax, lower is better; the issue's goal is ``<= 0.77``, 1.3x faster):
whole-process medians, ``train_seconds`` medians, and in-process ``fit(...)`` end to end
(compilation, a checkpoint per epoch and the test evaluation included) against the flax
loop's ``train`` (compilation and test evaluation included). Test accuracies are in each row.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import flax_loop
from benchmarks.timing import row

TARGET = "<= 0.77 (1.3x)"


def _jaxreg_command(dataset: str, out: Path, epochs: int) -> list[str]:
    exe = shutil.which("jaxreg") or None
    head = [exe] if exe else [sys.executable, "-m", "jaxreg.cli"]
    return [*head, "train", "--dataset", dataset, "--epochs", str(epochs), "--no-progress",
            "--out", str(out)]


def _timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of a subprocess and its stdout; raises with its stderr if it fails.

    The subprocess may write bytecode caches (``PYTHONDONTWRITEBYTECODE`` is dropped from its
    environment): a user's installed packages have them, so the untimed pair fills them where
    this environment had turned them off (without them every import compiles its source,
    ~4 s more per process, most of it jax's).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout


def _pair(dataset: str, epochs: int, tmp: Path, index: int) -> dict[str, Any]:
    out = tmp / f"run{index}"
    jaxreg_cmd = _jaxreg_command(dataset, out, epochs)
    flax_cmd = [sys.executable, str(Path(flax_loop.__file__)), "--dataset", dataset,
                "--epochs", str(epochs)]
    result: dict[str, Any] = {}
    order = ("jaxreg", "flax") if index % 2 == 0 else ("flax", "jaxreg")
    for side in order:
        if side == "jaxreg":
            wall, _ = _timed(jaxreg_cmd)
            metrics = json.loads((out / "metrics.json").read_text())
            result["jaxreg"] = (wall, metrics["train_seconds"], metrics["test_accuracy"])
        else:
            wall, stdout = _timed(flax_cmd)
            report = json.loads(stdout.strip().splitlines()[-1])
            result["flax"] = (wall, report["train_seconds"], report["test_accuracy"])
    return result


def _fit_end_to_end(dataset: str, epochs: int, tmp: Path) -> tuple[float, float, float, float]:
    """In-process ``fit`` with checkpoints vs the flax loop's ``train``, compilation included."""
    import jaxreg.data
    from jaxreg.models import SeedMLP
    from jaxreg.train import fit

    ds = jaxreg.data.load(dataset)
    start = time.perf_counter()
    result = fit(SeedMLP(), {"name": "adam", "learning_rate": flax_loop.LEARNING_RATE,
                                  "l2": flax_loop.L2, "batch_scaled": True},
                 ds, epochs=epochs, batch_size=flax_loop.BATCH_SIZE, seed=flax_loop.SEED,
                 progress=False, checkpoint_dir=str(tmp / "fit_checkpoints"))
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    flax_accuracy = flax_loop.train(ds.x_train, ds.y_train, ds.x_test, ds.y_test, epochs)
    flax_s = time.perf_counter() - start
    assert result.test is not None  # fit evaluates the test split by default
    return fit_s, float(result.test["accuracy"]), flax_s, flax_accuracy


def run(quick: bool) -> list[dict[str, Any]]:
    dataset = "digits" if quick else "fashion-mnist"
    pairs, epochs = (1, 2) if quick else (5, 10)
    config = f"seed 004 MLP, {dataset}, {epochs} epochs, batch 128, L2 0.025/B"
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as name:
        tmp = Path(name)
        if not quick:
            _pair(dataset, epochs, tmp, -1)  # untimed: compilation cache and file cache
        results = [_pair(dataset, epochs, tmp, i) for i in range(pairs)]
        fit_s, fit_acc, flax_s, flax_acc = _fit_end_to_end(dataset, epochs, tmp)

    def med(side: str, k: int) -> float:
        return statistics.median(r[side][k] for r in results)

    accuracy = {"jaxreg_test_accuracy": med("jaxreg", 2), "reference_test_accuracy": med("flax", 2),
                "pairs": pairs, "per_pair_ratio": [r["jaxreg"][0] / r["flax"][0] for r in results],
                "per_pair_seconds": [(r["jaxreg"][0], r["flax"][0]) for r in results]}
    return [
        row("cli", f"{config}, whole process (median of {pairs} pairs)", med("jaxreg", 0),
            "flax loop script, whole process", med("flax", 0), TARGET, **accuracy),
        row("cli", f"{config}, train_seconds (median of {pairs} pairs)", med("jaxreg", 1),
            "flax loop script, train_seconds", med("flax", 1), TARGET, **accuracy),
        row("cli", f"{config}, fit(...) end to end incl. compile + checkpoints", fit_s,
            "flax loop incl. compile", flax_s, "info",
            jaxreg_test_accuracy=fit_acc, reference_test_accuracy=flax_acc),
    ]

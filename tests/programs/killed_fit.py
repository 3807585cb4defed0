"""The child process of tests/train/test_checkpoint.py, run as ``python -m
tests.programs.killed_fit CHECKPOINT_DIR KILL_AFTER OUT OPTIMIZER BATCH_SIZE`` (the optimizer
and the batch size, an integer or ``{epoch: size}``, as JSON): 4 epochs of SeedMLP on 640
digits, resumed from ``CHECKPOINT_DIR``, SIGKILLed (no cleanup, no flush) after epoch
``KILL_AFTER`` (0: never). A finished run saves its state's leaves to ``OUT`` and the epochs it
ran and its history to ``OUT.json``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import jax
import numpy as np
from sklearn.datasets import load_digits

from jaxreg import models
from jaxreg.train import fit


def main(ckpt_dir: str, kill_after: int, out: str, optimizer: dict[str, Any],
         batch_size: Any) -> None:
    d = load_digits()
    x, y = (d.images[:640] / 16.0).astype(np.float32)[..., None], d.target[:640].astype(np.int32)

    ran = []

    def die(epoch: int, state: Any, logs: Any) -> None:
        ran.append(epoch)
        if epoch + 1 == kill_after:  # after epoch k's checkpoint began: no cleanup, no flush
            os.kill(os.getpid(), signal.SIGKILL)

    result = fit(models.SeedMLP(), optimizer, (x, y), epochs=4, batch_size=batch_size, seed=5,
                 validation_split=0.2, callbacks=[die], progress=False,
                 checkpoint_dir=ckpt_dir, resume=True)
    s = result.state
    np.savez(out, *jax.tree.leaves(jax.device_get((s.params, s.model_state, s.opt_state, s.step,
                                                   jax.random.key_data(s.key)))))
    with open(out + ".json", "w") as f:
        json.dump({"ran": ran, "history": result.history}, f)


if __name__ == "__main__":
    sizes = json.loads(sys.argv[5])
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]),
         {int(k): v for k, v in sizes.items()} if isinstance(sizes, dict) else sizes)

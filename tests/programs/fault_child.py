"""The child process of tests/train/test_faults.py, run as
``python -m tests.programs.fault_child CHECKPOINT_DIR MODE``: a tiny linear fit resumed from
``CHECKPOINT_DIR``. Mode ``kill``: trains until killed, printing the epoch it (re)started at.
Mode ``sigint``: one fit per line on stdin, each stopped by a SIGINT; after each it prints the
newest checkpoint step and the damaged ones.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from jaxreg import models
from jaxreg.train import checkpoint, fit, interrupt


def main(directory: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)

    def run(**kwargs: Any) -> None:
        fit(models.Linear(num_classes=2), dict(name="sgd", learning_rate=0.1), (x, y),
            epochs=10**6, batch_size=64, progress=False, test=False, checkpoint_dir=directory,
            resume=True, **kwargs)

    if mode == "kill":  # train until killed, saying where it (re)started
        started: list[int] = []

        def report(epoch: int, state: Any, logs: Any) -> None:
            if not started:
                started.append(epoch)
                print("started", epoch, flush=True)

        run(callbacks=[report])
    else:  # one fit per line on stdin, each stopped by a SIGINT
        for _ in sys.stdin:
            try:
                with interrupt.deferred():
                    print("ready", flush=True)
                    run()
                print("finished", flush=True)  # never: only a SIGINT ends the run
            except KeyboardInterrupt:
                steps = checkpoint.manager(directory).all_steps()
                bad = [s for s in steps if checkpoint.verify(f"{directory}/{s}")]
                print("interrupted", max(steps, default=0), "damaged", *bad, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

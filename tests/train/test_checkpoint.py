"""Checkpoint/resume: a training process SIGKILLed after epoch k and resumed ends bit-identical
to an uninterrupted run. Saves are asynchronous: at the kill, epoch k's checkpoint may still be
being written, so the resumed run starts from epoch k or k - 1, whichever is complete."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxreg.train import checkpoint, rundir
from tests.helpers import source_env

OPTIMIZER = dict(name="adam", learning_rate=1e-2, l2=1e-3, batch_scaled=True, schedule="cosine",
                 plateau=dict(factor=0.5, patience=1))


def run_child(tmp_path, kill_after, batch_size=64):
    out = tmp_path / f"out_{kill_after}.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.programs.killed_fit", str(tmp_path / "ckpt"),
         str(kill_after), str(out), json.dumps(OPTIMIZER), json.dumps(batch_size)],
        env=source_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize("batch_size, kill_after", [(64, 2), ({0: 32, 2: 64}, 3)],
                         ids=["fixed", "schedule-killed-after-the-change"])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, batch_size, kill_after):
    killed, _ = run_child(tmp_path, kill_after, batch_size)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    complete = [
        int(p.name) for p in rundir.step_dirs(tmp_path / "ckpt") if checkpoint.verify(p) is None
    ]
    assert complete in (list(range(1, kill_after)), list(range(1, kill_after + 1))), \
        os.listdir(tmp_path / "ckpt")

    resumed, out = run_child(tmp_path, 0, batch_size)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # the uninterrupted reference run, in this process
    from sklearn.datasets import load_digits

    from jaxreg import models
    from jaxreg.train import fit
    d = load_digits()
    x, y = (d.images[:640] / 16.0).astype(np.float32)[..., None], d.target[:640].astype(np.int32)
    ref = fit(
        models.SeedMLP(),
        OPTIMIZER,
        (x, y),
        epochs=4,
        batch_size=batch_size,
        seed=5,
        validation_split=0.2,
        progress=False,
    )

    s = ref.state
    leaves = jax.tree.leaves(jax.device_get((s.params, s.model_state, s.opt_state, s.step,
                                             jax.random.key_data(s.key))))
    with np.load(out) as got:
        assert len(got.files) == len(leaves)
        for i, want in enumerate(leaves):
            np.testing.assert_array_equal(got[f"arr_{i}"], np.asarray(want))
    saved = json.load(open(str(out) + ".json"))
    assert saved["ran"] == list(
        range(max(complete), 4)
    )  # the resumed process trained only the missing epochs
    history = saved["history"]
    for key in ref.history:
        if key != "epoch_seconds":
            assert history[key] == ref.history[key], key
    assert len(history["epoch_seconds"]) == 4

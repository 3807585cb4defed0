"""Data-parallel and multi-process training (jaxreg.train.distributed) against 1-device runs.

Several devices are simulated CPU devices in subprocesses (tests/programs/distributed.py,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``); this pytest process keeps its one
device and computes the references with plain single-device ``fit``. Two processes join
through ``jax.distributed`` on a loopback coordinator (gloo collectives on CPU). Every
subprocess has a timeout, so a hang fails the test instead of blocking.

The run: SeedMLP (batch normalization) with SGD + momentum and a batch-scaled L2 penalty, so
the comparison covers parameters, running statistics, optimizer state and the global batch
size. (Adam would amplify float noise in the pre-BN bias, whose true gradient is 0, into
O(lr) differences: a property of Adam there, not of the sharding.)
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import models
from jaxreg.train import distributed, fit, make_optimizer, train_step
from jaxreg.train.state import create_train_state
from tests.helpers import cpu_devices_env
from tests.programs.distributed import host, run

PROGRAM = "tests.programs.distributed"  # run as python -m PROGRAM SCENARIO [PORT ID]

TIMEOUT = 240

def _env(devices: int, port: int | None = None) -> dict[str, str]:
    env = cpu_devices_env(devices)
    if port is not None:  # the coordinator listens on loopback only
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    return env


def _run(scenario: str, devices: int, cwd) -> None:
    proc = subprocess.run([sys.executable, "-m", PROGRAM, scenario], env=_env(devices), cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(argv, devices: int, cwd) -> list[str]:
    """Runs ``argv(port, i)`` as processes ``i = 0, 1`` with a free coordinator port; returns
    their stdouts."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            argv(port, i),
            env=_env(devices, port),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return [out for out, _ in outs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1-device run of 3 epochs: the state after each epoch, and the history."""
    states = []
    result = run(
        epochs=3, callbacks=[lambda e, state, logs: states.append(host(state))]
    )
    return states, result.history


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """On 8 devices: 2 epochs in scan mode (checkpointed); 1 streamed, 1 accumulated, 1 on a
    data=4, fsdp=2 mesh."""
    out = tmp_path_factory.mktemp("eight")
    _run("eight", 8, out)
    return out


def _load(path) -> tuple[list[np.ndarray], dict]:
    with np.load(f"{path}.npz") as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    with open(f"{path}.json") as f:
        return leaves, json.load(f)


def _assert_states_close(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_eight_devices_equal_one_device(eight, reference):
    states, history = reference
    scan, info = _load(eight / "scan")
    assert info["devices"] == 8
    _assert_states_close(scan, states[1])  # params, batch_stats, opt_state (momentum), step counts
    h = info["history"]
    np.testing.assert_allclose(h["loss"], history["loss"][:2], rtol=1e-5)
    np.testing.assert_allclose(h["val_loss"], history["val_loss"][:2], rtol=1e-5)
    # the batch-scaled penalty divides by the global batch (32), not the 4 examples per device
    assert h["l2_strength"] == pytest.approx([0.05 / 32] * 2)
    for name in ("stream", "fsdp"):
        _assert_states_close(_load(eight / name)[0], states[0])


def test_a_mesh_run_compiles_its_programs_ahead_and_once(tmp_path):
    """make_plan on a mesh (4 devices; data only, and data=2 x fsdp=2 with a split kernel)
    compiles the epoch, its keys and the evaluation in the background thread while the sharded
    state compiles, for the shardings the calls then use: each program is compiled once."""
    _run("compiles", 4, tmp_path)
    runs = json.loads((tmp_path / "compiles.json").read_text())
    ahead = "jaxreg-compile_0"
    sharded = [["jit(evaluation_sums)", ahead], ["jit(scan_epoch)", ahead]]
    assert runs["data"] == [["jit(create_train_state)", "MainThread"],
                            ["jit(epoch_key)", ahead], *sharded], runs["data"]
    # the epoch keys' program (no sharding) is the first run's
    assert runs["fsdp"] == [["jit(create_train_state)", "MainThread"], *sharded], runs["fsdp"]


def test_eight_device_accumulation_equals_one_device(eight):
    accumulated, _ = _load(eight / "accumulate")
    _assert_states_close(accumulated, host(run(epochs=1, accumulate=2).state))


def test_checkpoint_from_eight_devices_resumes_on_one_and_four(eight, reference, tmp_path):
    states, history = reference
    shutil.copytree(eight / "ckpt", tmp_path / "one")
    resumed = run(epochs=3, checkpoint_dir=str(tmp_path / "one"), resume=True)
    _assert_states_close(host(resumed.state), states[2])
    np.testing.assert_allclose(resumed.history["loss"], history["loss"], rtol=1e-5)

    shutil.copytree(eight / "ckpt", tmp_path / "ckpt")
    _run("resume", 4, tmp_path)
    four, info = _load(tmp_path / "four")
    assert info["devices"] == 4
    _assert_states_close(four, states[2])


def test_two_processes_train_together(reference, tmp_path):
    """Two processes x 2 devices: a fresh run (checkpointed by orbax from both processes, then
    resumed here on one device), its streamed twin, and a global batch from per-process rows."""
    states, history = reference
    _run_two_processes(
        lambda port, i: [sys.executable, "-m", PROGRAM, "two_processes", str(port), str(i)], 2,
        tmp_path
    )
    scan, info = _load(tmp_path / "scan")
    assert info["devices"] == 4
    _assert_states_close(scan, states[1])
    np.testing.assert_allclose(info["history"]["val_loss"], history["val_loss"][:2], rtol=1e-5)
    _assert_states_close(_load(tmp_path / "stream")[0], states[0])
    resumed = run(epochs=3, checkpoint_dir=str(tmp_path / "ckpt"), resume=True)
    _assert_states_close(host(resumed.state), states[2])


def test_cli_two_processes(tmp_path):
    """``jaxreg train --coordinator ... --num-processes 2 --process-id I`` in two processes
    (2 devices each) trains like one process on one device; process 0 writes the run files."""
    flags = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
             "--optimizer", "momentum", "--lr", "0.05", "--no-progress"]
    outs = _run_two_processes(lambda port, i: [
        sys.executable, "-m", "jaxreg.cli", *flags, "--out", "run",
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        2, tmp_path)
    assert all("digits: 1 epochs" in out for out in outs)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock", "checkpoints", "config.json", "curves.png", "metrics.json"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["devices"]) == 4

    from jaxreg.cli import main
    assert main(flags + ["--out", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for key in ("test_loss", "train_loss", "test_accuracy"):
        assert metrics[key] == pytest.approx(single[key], rel=1e-5), key
    np.testing.assert_allclose(metrics["history"]["loss"], single["history"]["loss"], rtol=1e-5)


def test_accumulation_semantics():
    """accumulate=k: gradients of the k micro-batches (rows j::k) averaged into one step,
    regularizers told the effective batch size, BN running stats updated once per micro-batch."""
    model = models.SeedMLP(hidden=8)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(12, 5)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 12).astype(np.int32))
    seen = []

    def spy(updates, state, params=None, *, batch_size):  # records the batch size regularizers see
        seen.append(batch_size)
        return updates, state

    tx = optax.chain(
        optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), spy), optax.sgd(0.1)
    )
    state = create_train_state(model, tx, x[:1], seed=0)
    new, metrics = jax.jit(lambda s: train_step(s, x, y, model=model, tx=tx, accumulate=3))(state)
    assert seen == [12] and int(new.step) == 1

    @jax.jit
    def micro(stats, xm, ym):  # one micro-batch: its gradient and BN update, by hand
        def loss(params):
            out, upd = model.apply(
                {"params": params, "batch_stats": stats}, xm, train=True, mutable=["batch_stats"]
            )
            value = optax.softmax_cross_entropy_with_integer_labels(out, ym).mean()
            return value, upd["batch_stats"]

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        return value, stats, grads

    stats, grads, values = state.model_state, [], []
    for j in range(3):
        value, stats, g = micro(stats, x[j::3], y[j::3])
        values.append(value)
        grads.append(g)
    expected = jax.tree.map(lambda p, *g: p - 0.1 * sum(g) / 3, state.params, *grads)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.params, expected
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.model_state, stats
    )
    np.testing.assert_allclose(metrics["loss"], np.mean(values), rtol=1e-6)


def test_accumulation_without_batchnorm_is_the_full_batch_step():
    """No BN: accumulate=4 equals accumulate=1 at the same (effective) batch size, including
    the batch-scaled L2 penalty l2 / B with B = 4 micro-batches x 8."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(96, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1 * rng.normal(size=96)).astype(np.float32)
    runs = [
        fit(
            models.Linear(),
            make_optimizer("adam", 0.05, l2=0.5, batch_scaled=True),
            (x, y),
            epochs=2,
            batch_size=32,
            accumulate=k,
            progress=False,
            test=False,
        )
        for k in (1, 4)
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 runs[0].state.params, runs[1].state.params)
    assert runs[1].history["l2_strength"] == pytest.approx([0.5 / 32] * 2)


def test_mesh_helpers():
    assert distributed.parse_mesh("data=8") == {"data": 8}
    assert distributed.parse_mesh("data=4, fsdp=2") == {"data": 4, "fsdp": 2}
    for bad in ("data", "data=0", "model=2", "data=2,data=2", "data=x"):
        with pytest.raises(ValueError, match="mesh spec"):
            distributed.parse_mesh(bad)
    mesh = distributed.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1} and distributed.default_mesh() is None
    with pytest.raises(ValueError, match="needs 2 devices"):
        distributed.make_mesh(data=2)
    data = (np.zeros((64, 2), np.float32), np.zeros(64, np.float32))
    for batch_size, accumulate, match in ((30, 4, "must be a multiple of accumulate"),
                                          (32, 0, "`accumulate` must be an integer >= 1")):
        with pytest.raises(ValueError, match=match):
            fit(models.Linear(), optax.sgd(0.1), data, batch_size=batch_size,
                accumulate=accumulate, progress=False)
    P = jax.sharding.PartitionSpec  # fsdp splits the largest divisible dimension of big leaves
    assert distributed._leaf_spec((6, 10), 2, 60) == P(None, "fsdp")
    assert distributed._leaf_spec((6, 9), 2, 1) == P("fsdp", None)
    assert distributed._leaf_spec((5, 7), 2, 1) == distributed._leaf_spec((6, 10), 2, 61) == P()

"""``--deterministic`` (jaxreg.cli.determinism): XLA's deterministic GPU kernels asked for before
jax starts, the user's XLA_FLAGS kept, the setting recorded in config.json, and the resume note.
(That the flag makes a resumed run bit-exact on a GPU is checked there, by benchmarks/gpu.sh.)"""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxreg.cli import determinism, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, on", [
    ("", False),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops", True),
    ("--xla_gpu_deterministic_ops=1", True),
    ("--xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=false --xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops_level=2", False),
    ("--xla_force_host_platform_device_count=2", False),
])
def test_enabled_reads_the_last_occurrence_of_the_flag(monkeypatch, flags, on):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert determinism.enabled() is on


def test_request_before_jax_starts_adds_the_flag_and_keeps_the_users():
    code = ("import os; from jaxreg.cli import determinism; determinism.request(True); "
            "determinism.request(True); import jax; jax.numpy.ones(2).sum().block_until_ready(); "
            "print(os.environ['XLA_FLAGS']); print(jax.device_count())")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    flags, devices = done.stdout.split("\n")[:2]
    assert flags == "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true"
    assert devices == "2"  # the user's flag still reached XLA, which accepted ours on CPU


def test_request_after_jax_started_is_refused_in_one_line(monkeypatch, tmp_path):
    jax.numpy.ones(1).block_until_ready()  # this process's backend has started
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    determinism.request(False)  # nothing asked: nothing to refuse
    with pytest.raises(ValueError, match="XLA_FLAGS=--xla_gpu_deterministic_ops=true"):
        determinism.request(True)
    assert "XLA_FLAGS" not in os.environ
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["train", "--dataset", "digits", "--deterministic", "--out",
                       str(tmp_path / "run")])
    assert status == 2
    assert err.getvalue().count("\n") == 1 and "--deterministic" in err.getvalue()
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_already_on_is_not_refused(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    determinism.request(True)
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"


@pytest.mark.parametrize("started, flags, backend, note", [
    (False, "", "gpu", None),
    (True, "--xla_gpu_deterministic_ops=true", "gpu", None),
    (True, "", "cpu", None),  # CPU kernels are deterministic either way
    (True, "", "gpu", "started with deterministic GPU kernels on and resumes with them off"),
    (False, "--xla_gpu_deterministic_ops=true", "gpu",
     "started with deterministic GPU kernels off and resumes with them on"),
])
def test_resume_note_says_when_the_setting_changed_on_a_gpu(monkeypatch, started, flags, backend,
                                                            note):
    monkeypatch.setenv("XLA_FLAGS", flags)
    got = determinism.resume_note(started, backend)
    assert got is None if note is None else (note in got and got.count("\n") == 0)


@pytest.mark.slow
def test_config_json_records_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for flags, recorded in (("", False), ("--xla_gpu_deterministic_ops=true", True)):
        monkeypatch.setenv("XLA_FLAGS", flags)  # already "on": request() has nothing to add
        out = tmp_path / f"run{int(recorded)}"
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
                           "--out", str(out)] + ["--deterministic"] * recorded)
        assert status == 0
        assert json.loads((out / "config.json").read_text())["deterministic"] is recorded

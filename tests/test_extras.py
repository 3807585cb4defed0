"""The lean core and the ``[train]`` extra: what each import loads, and the missing-extra error.

Each case runs in a fresh interpreter (``sys.modules`` of this one already holds everything).
A missing extra is simulated with ``sys.modules[name] = None``, which makes ``import name``
raise and ``importlib.util.find_spec(name)`` report it absent, as on a core-only install.
"""
import os
import subprocess
import sys
import textwrap

import pytest

import jaxreg
from jaxreg import _extras
from tests.helpers import source_env

HEAVY = ("orbax", "tqdm", "matplotlib", "sklearn")
CORE = ("jaxreg", "jaxreg.masks", "jaxreg.penalties", "jaxreg.transforms", "jaxreg.proximal",
        "jaxreg.schedules", "jaxreg.plateau", "jaxreg.batchnorm", "jaxreg.nn", "jaxreg.nnx",
        "jaxreg.models")
BLOCK = f"import sys\nfor name in {HEAVY!r}:\n    sys.modules[name] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_core_modules_load_none_of_the_train_extra():
    result = run_python(f"""
        import importlib, importlib.util, sys
        for name in {CORE!r}:
            if name == "jaxreg" or importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_core_works_without_the_extra():
    result = run_python(BLOCK + """
import jax, jax.numpy as jnp, optax, jaxreg, jaxreg.nn
params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
tx = optax.chain(jaxreg.batch_scaled_l2(0.5), optax.sgd(1.0))
update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch_size=4))
updates, _ = update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
print(float(updates["kernel"][0, 0]), float(updates["bias"][0]))
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["-0.125", "-0.0"]  # -(0.5/4) * 1 on kernels only


@pytest.mark.parametrize("module", ["jaxreg.train", "jaxreg.data", "jaxreg.cli"])
def test_importing_the_training_side_without_the_extra_names_the_install(module):
    result = run_python(BLOCK + f"""
try:
    import {module}
except ModuleNotFoundError as e:
    print(e)
""")
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert len(message.splitlines()) == 1, message
    assert "needs the [train] extra" in message and 'pip install "jaxreg[train]"' in message
    assert "missing: orbax.checkpoint, tqdm, matplotlib, sklearn" in message


def test_the_command_without_the_extra_is_one_line_and_status_1():
    result = run_python(BLOCK + """
from jaxreg.__main__ import main
sys.exit(main(["train"]))
""")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("jaxreg: error: the jaxreg command needs the [train] extra")
    assert result.stderr.count("\n") == 1 and 'pip install "jaxreg[train]"' in result.stderr


def test_python_m_jaxreg_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "jaxreg", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "sweep" in result.stdout


@pytest.mark.parametrize("module", ["jaxreg", "jaxreg.cli"])
def test_python_m_jaxreg_handles_a_signal_while_importing_as_the_console_script(tmp_path, module):
    """``python -m jaxreg`` (and ``jaxreg.cli``): a SIGINT while Python imports the package,
    before its ``__main__`` runs, is one line and status 130 (was a KeyboardInterrupt
    traceback). A stand-in ``jax`` first on the path sends it, during the import of jaxreg."""
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    env = source_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (130, "jaxreg: interrupted\n", "")


def test_missing_reports_only_absent_modules(monkeypatch):
    assert _extras.missing() == []
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert _extras.missing() == ["tqdm"]
    assert _extras.missing(("json", "no_such_module_xyz", "no_such_pkg_xyz.sub")) == [
        "no_such_module_xyz", "no_such_pkg_xyz.sub"]


def test_version_has_one_source():
    import importlib.metadata

    assert jaxreg.__version__ == importlib.metadata.version("jaxreg")

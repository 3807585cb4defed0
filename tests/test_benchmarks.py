"""The benchmark suite runs (``python -m benchmarks.run --quick``) and reports well-formed rows.

No timing thresholds: speed targets are judged in ``benchmarks/RESULTS.md`` on a quiet machine;
this test only checks that every case runs and that its figures are usable.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_results_name_the_environment_and_cases(quick_run):
    _, results = quick_run
    assert results["quick"] is True
    assert {"date", "backend", "jax", "optax", "flax"} <= set(results["environment"])
    assert {r["case"] for r in results["rows"]} <= set(CASES)


@pytest.mark.slow
def test_rows_are_well_formed(quick_run):
    _, results = quick_run
    for r in results["rows"]:
        for key in ("case", "config", "reference", "target"):
            assert isinstance(r[key], str) and r[key], (key, r)
        for key in ("jaxreg_s", "reference_s"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (
                key,
                r,
            )
        assert r["ratio"] == pytest.approx(r["jaxreg_s"] / r["reference_s"], rel=1e-12), r


@pytest.mark.slow
def test_table_is_printed(quick_run):
    stdout, results = quick_run
    lines = stdout.splitlines()
    assert lines[0].startswith("date=")
    headers = [line for line in lines if line.split()[:3] == ["case", "config", "jaxreg"]]
    assert len(headers) == len(CASES)  # one table per case, so every case ran
    for r in results["rows"]:
        assert any(
            line.split()[:1] == [r["case"]] and r["config"] in line and f"{r['ratio']:.3f}" in line
            for line in lines
        ), r


# --- benchmarks/gpu.sh: its logic, checked without running it (its --dry-run runs it on CPU) ---

GPU_SH = ROOT / "benchmarks" / "gpu.sh"
PART = re.compile(r"^\s*(?:part|bench) (\w+) (\d+) (\d+)\b", re.MULTILINE)


def test_gpu_script_parses_and_explains_itself():
    assert subprocess.run(["bash", "-n", str(GPU_SH)], check=False).returncode == 0
    done = subprocess.run(["bash", str(GPU_SH), "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    for needed in ("command:   bash benchmarks/gpu.sh --out $OUT", 'carry:     [".data"]',
                   "timeout_s: 480", "--dry-run"):
        assert needed in done.stdout, needed
    assert subprocess.run(["bash", str(GPU_SH), "--bogus"], capture_output=True,
                          check=False).returncode == 2


def test_gpu_script_parts_fit_one_device_call():
    """Every part has a GPU and a dry-run limit; the GPU limits fit the budget, and the budget
    plus the summary fits 7 minutes (one 8-minute device call, with room to spare)."""
    text = GPU_SH.read_text()
    parts = PART.findall(text)
    names = [name for name, _, _ in parts]
    assert len(names) == len(set(names)) and {"setup", "cli", "tests", "resume"} <= set(names)
    budget = int(re.search(r"^BUDGET=(\d+)", text, re.MULTILINE).group(1))
    assert sum(int(gpu) for _, gpu, _ in parts) <= budget <= 7 * 60 - 20
    for name, gpu, dry in parts:
        assert 0 < int(gpu) <= int(dry), name  # the dry run's CPU is slower, never faster
    for case in re.findall(r"^bench (\w+) ", text, re.MULTILINE):
        assert case in CASES, case
    for test_file in set(re.findall(r"tests/[\w/]+\.py", text)):
        assert (ROOT / test_file).is_file(), test_file
    assert "available()" not in text  # jaxreg.data has no available(); load() decides

#!/usr/bin/env bash
# The GPU benchmarks and the GPU correctness tests in one device call: < 7 minutes of parts.
#
#   benchmarks/gpu.sh [--dry-run] [--out DIR]
#
# The device call (the `run` tool; one NVIDIA H200, python3 with jax[cuda], flax, optax, orbax,
# torch, pytest; no network). Once, here, in the repository's root, bring Fashion-MNIST's four
# .gz files (30 MB) in a folder git ignores:
#
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
#   echo /.data/ >> "$(git rev-parse --git-common-dir)/info/exclude"
#
# then call run with
#
#   command:   bash benchmarks/gpu.sh --out $OUT
#   carry:     [".data"]
#   timeout_s: 480
#
# and read $OUT/results.md (the table), results.json (environment, rows, parts, tests),
# rows.jsonl, parts.jsonl, log.txt (every part's output), tests.xml and resume.xml (junit):
# 7 files, each written as the parts go, so a call stopped early keeps what ran.
# JAXREG_DATA_DIR defaults to ./.data (jaxreg.data.load reads $JAXREG_DATA_DIR/fashion-mnist;
# the loop scripts too); nothing is downloaded: a missing dataset fails the setup part, and the
# parts that need it fail on their own, all recorded.
#
# Parts, each under its own limit (GPU / dry run seconds) inside a BUDGET of 400 s:
#   setup      jax sees a GPU; Fashion-MNIST found by jaxreg.data.load(download=False)
#   update     jaxreg chain vs optax, 1x100M / 100x1M / 1000x100k, and the many-leaf case
#              where bench_update has it (benchmarks.run --only update)
#   training   seed MLP epochs vs flax / torch loops
#   step       jaxreg train's scanned step vs a plain lax.scan step: us per step, and the
#              scan body's HLO instructions by opcode and by kernel root (bench_step)
#   batchnorm  128x56x56x256 fp32 / bf16: jaxreg vs flax.linen and torch cuDNN
#   sweep      K=16 vmapped sweep vs 16 fits (4 run, scaled)
#   cnn        SmallCNN scanned epoch vs flax Conv + max_pool
#   cli        whole processes: jaxreg train (empty / warm cache, --deterministic) vs the flax,
#              torch and NNX loop scripts
#   tests      the GPU correctness tests (BatchNorm, tools, step, NNX, models, CNN, sharding)
#   resume     with --xla_gpu_deterministic_ops=true: the kill-and-resume bit-exactness test
#              and the NNX / linen twins test
# A part that fails or runs out of time is recorded as such and the others still run; the exit
# status is 1 if any part failed.
#
# --dry-run: CPU (JAX_PLATFORMS=cpu), --quick sizes, CPU limits: checks the logic here.
set -uo pipefail

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)$([ $DRY = 1 ] && echo -dry)}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAXREG_DATA_DIR="${JAXREG_DATA_DIR:-$PWD/.data}"
BUDGET=400  # seconds for the parts on the GPU; the summary after them takes ~10 s: < 7 minutes
[ $DRY = 1 ] && BUDGET=2400
LOG="$OUT/log.txt" PARTS="$OUT/parts.jsonl" ROWS="$OUT/rows.jsonl"
: > "$LOG"; : > "$PARTS"; : > "$ROWS"

part() {  # part NAME GPU_SECONDS DRY_SECONDS COMMAND...: COMMAND under min(limit, budget left)
  local name="$1" limit="$2"; shift 2
  [ $DRY = 1 ] && limit="$1"
  shift
  local left=$((BUDGET - SECONDS))
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -le 5 ]; then
    echo "{\"part\": \"$name\", \"rc\": null, \"seconds\": 0, \"note\": \"no budget left\"}" >> "$PARTS"
    echo "[$name] skipped: no budget left"; return
  fi
  local start=$SECONDS
  echo "===== $name (limit $limit s) $(date -u +%T)" >> "$LOG"
  timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" >> "$PARTS"
  echo "[$name] rc=$rc in $((SECONDS - start)) s (limit $limit s)"
}

bench() {  # bench CASE GPU_SECONDS DRY_SECONDS: one benchmarks.run case, rows to rows.jsonl
  local quick=()
  [ $DRY = 1 ] && quick=(--quick)
  part "$1" "$2" "$3" "$PY" -m benchmarks.run "${quick[@]}" --only "$1" --jsonl "$ROWS"
}

if [ $DRY = 1 ]; then
  export JAX_PLATFORMS=cpu
  WANT=cpu
  TESTS=(tests/nn/test_layers.py -k "first_maximum or rejects")
else
  WANT=gpu
  TESTS=(tests/batchnorm/test_tools.py tests/train/test_nnx_bridge.py tests/batchnorm/test_linen.py
         tests/train/test_step.py tests/models/test_models.py tests/nn/test_layers.py
         tests/train/test_distributed.py)  # the files that failed on the H200 first
fi

part setup 15 120 "$PY" -c "
import jax, jaxreg.data
print(jax.devices())
assert jax.default_backend() == '$WANT', f'jax backend {jax.default_backend()}, not $WANT'
ds = jaxreg.data.load('fashion-mnist', download=False)
print('fashion-mnist from', ds.source, ds.x_train.shape, ds.x_test.shape)"
bench update 40 200
bench training 30 300
bench step 15 200
bench batchnorm 35 200
bench sweep 55 300
bench cnn 20 300
bench cli 105 600
# The tests start processes beside a parent that may hold the GPU (kill-and-resume, multi-process):
# no process preallocates 75% of its memory. -v: each result in log.txt as it comes, kept if the
# limit stops the part before junit is written.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
part tests 50 200 "$PY" -m pytest -v --tb=short -p no:cacheprovider --junitxml="$OUT/tests.xml" \
  "${TESTS[@]}"
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" \
  part resume 35 400 "$PY" -m pytest -v --tb=short -p no:cacheprovider --junitxml="$OUT/resume.xml" \
  tests/train/test_checkpoint.py tests/train/test_nnx_bridge.py -k "killed_and_resumed or twins"

"$PY" - "$OUT" "$DRY" <<'PYEOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
from benchmarks.run import environment, format_table
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()]
rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
tests = {}
for name in ("tests", "resume"):
    path = out / f"{name}.xml"
    if path.exists():
        cases = ET.parse(path).getroot().iter("testcase")
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases
                  if c.find("failure") is not None or c.find("error") is not None]
        suite = next(ET.parse(path).getroot().iter("testsuite"))
        tests[name] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        tests[name]["failed"] = failed
results = {"environment": environment(), "dry_run": dry, "parts": parts, "rows": rows,
           "tests": tests}
(out / "results.json").write_text(json.dumps(results, indent=2))
lines = [f"# GPU benchmarks{' (dry run: CPU, quick sizes)' if dry else ''}", "",
         " ".join(f"{k}={v}" for k, v in results["environment"].items()), "",
         "| case | config | jaxreg s | reference | ref s | ratio | target |", "|---|---|---|---|---|---|---|"]
lines += [f"| {r['case']} | {r['config']} | {r['jaxreg_s']:.4g} | {r['reference']} | "
          f"{r['reference_s']:.4g} | {r['ratio']:.3f} | {r['target']} |" for r in rows]
for name, t in tests.items():
    lines += ["", f"{name}: {t['tests']} tests, {t['failures']} failed, {t['errors']} errors, "
              f"{t['skipped']} skipped" + "".join(f"\n- {f}" for f in t["failed"])]
lines += ["", "| part | exit | seconds | limit |", "|---|---|---|---|"]
lines += [f"| {p['part']} | {p['rc']} | {p['seconds']} | {p.get('limit', '')} |" for p in parts]
(out / "results.md").write_text("\n".join(lines) + "\n")
print(format_table(rows) if rows else "no rows")
print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
sys.exit(int(any(p["rc"] != 0 for p in parts)))
PYEOF

#!/usr/bin/env bash
# The GPU benchmark suite and the GPU correctness tests in one call, under 8 minutes wall.
#
#   benchmarks/gpu.sh [--dry-run] [--out DIR]
#
# On a machine with an NVIDIA GPU: installs jax[cuda12] if jax has no GPU backend (and torch,
# best effort, for the reference rows), then runs each part under its own timeout, all inside
# a global 420 s budget: the benchmark cases at their GPU sizes (update 1x100M / 100x1M /
# 1000x100k; training: seed recipe vs flax loop and torch; batchnorm 128x56x56x256 fp32/bf16
# vs flax and torch; sweep K=16; cnn: SmallCNN steps), SmallCNN's 10-epoch accuracy
# (`jaxreg train --model small-cnn --schedule cosine --l2 0.5`, the recipe chosen on CPU), and
# the GPU correctness tests (distributed/sharded fit, BatchNorm and its sync, SmallCNN pieces,
# train step and fit). Not yet here: a timed one-device sharded-vs-unsharded row (no benchmark
# case measures it yet). Writes DIR/results.json (environment, every row, each part's exit
# status and seconds) and DIR/results.md (the table). A part that fails or times out is
# recorded as such and the others still run; the exit status is 1 if any part failed.
#
# Fashion-MNIST is never downloaded here: set JAXREG_DATA_DIR (a directory holding
# fashion-mnist/) for the full-size training/sweep/accuracy parts; without it the accuracy run
# uses digits and the parts that need Fashion-MNIST fail fast, recorded as failed.
#
# --dry-run: CPU (JAX_PLATFORMS=cpu), --quick sizes, 2 epochs, no installs: checks the logic.
set -uo pipefail

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)$([ $DRY = 1 ] && echo -dry)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
BUDGET=420  # seconds for the parts; the merge at the end took 31 s on a loaded CPU: < 8 min in all
PARTS="$OUT/parts.jsonl"
: > "$PARTS"

part() {  # part NAME SECONDS COMMAND...: runs COMMAND with min(SECONDS, budget left), logs it
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET - SECONDS))
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -le 5 ]; then
    echo "{\"part\": \"$name\", \"rc\": null, \"seconds\": 0, \"note\": \"no budget left\"}" >> "$PARTS"
    echo "[$name] skipped: no budget left"; return
  fi
  local start=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" >> "$PARTS"
  echo "[$name] rc=$rc in $((SECONDS - start)) s (limit $limit s), log $OUT/$name.log"
}

if [ $DRY = 1 ]; then
  export JAX_PLATFORMS=cpu
  QUICK=(--quick); EPOCHS=2
else
  QUICK=(); EPOCHS=10
  if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    part install_jax 120 "$PY" -m pip install -q "jax[cuda12]"
  fi
  "$PY" -c "import torch" 2>/dev/null || part install_torch 60 "$PY" -m pip install -q torch
  "$PY" -c "import jax, sys; print(jax.devices()); sys.exit(jax.default_backend() != 'gpu')" \
    || echo "gpu.sh: warning: jax has no GPU backend; the rows below are not GPU rows" >&2
fi

for case_limit in update:60 training:90 batchnorm:45 sweep:75 cnn:30; do
  case="${case_limit%%:*}"
  part "bench_$case" "${case_limit##*:}" "$PY" -m benchmarks.run "${QUICK[@]}" --only "$case" \
    --json "$OUT/bench_$case.json"
done

if "$PY" -c "import jaxreg.data as d, sys; sys.exit('fashion-mnist' not in d.available())" 2>/dev/null; then
  CNN_DATA=fashion-mnist
else
  CNN_DATA=digits
fi
[ $DRY = 1 ] && CNN_DATA=digits
part cnn_accuracy 90 "$PY" -m jaxreg.cli train --model small-cnn --dataset "$CNN_DATA" \
  --schedule cosine --l2 0.5 --epochs "$EPOCHS" --no-progress --out "$OUT/cnn_run"

TESTS=(tests/test_distributed.py tests/test_batchnorm.py tests/test_batchnorm_sync.py
       tests/test_small_cnn_cpu.py tests/test_train_step.py tests/test_train_fit.py)
[ $DRY = 1 ] && TESTS=(tests/test_small_cnn_cpu.py -k "first_maximum or rejects")
part tests 100 "$PY" -m pytest -q -x "${TESTS[@]}"

"$PY" - "$OUT" "$CNN_DATA" "$DRY" <<'PYEOF'
import json, sys
from pathlib import Path
from benchmarks.run import environment, format_table
out, cnn_data, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()]
rows = []
for path in sorted(out.glob("bench_*.json")):
    rows += json.loads(path.read_text())["rows"]
metrics = out / "cnn_run" / "metrics.json"
cnn = json.loads(metrics.read_text()) if metrics.exists() else None
accuracy = None if cnn is None else {
    "dataset": cnn_data, "epochs": cnn["epochs_completed"], "test_accuracy": cnn["test_accuracy"],
    "train_seconds": cnn["train_seconds"], "target": ">= 0.92 (fashion-mnist)"}
results = {"environment": environment(), "dry_run": dry, "parts": parts, "rows": rows,
           "cnn_accuracy": accuracy}
(out / "results.json").write_text(json.dumps(results, indent=2))
lines = [f"# GPU benchmarks{' (dry run: CPU, quick sizes)' if dry else ''}", "",
         " ".join(f"{k}={v}" for k, v in results["environment"].items()), "",
         "| case | config | jaxreg s | reference | ref s | ratio | target |", "|---|---|---|---|---|---|---|"]
lines += [f"| {r['case']} | {r['config']} | {r['jaxreg_s']:.4g} | {r['reference']} | "
          f"{r['reference_s']:.4g} | {r['ratio']:.3f} | {r['target']} |" for r in rows]
if accuracy:
    lines += ["", f"SmallCNN, {accuracy['dataset']}, {accuracy['epochs']} epochs: test accuracy "
              f"{accuracy['test_accuracy']:.4f} ({accuracy['train_seconds']:.1f} s)"]
lines += ["", "| part | exit | seconds |", "|---|---|---|"]
lines += [f"| {p['part']} | {p['rc']} | {p['seconds']} |" for p in parts]
(out / "results.md").write_text("\n".join(lines) + "\n")
print(format_table(rows) if rows else "no rows")
print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
sys.exit(int(any(p["rc"] != 0 for p in parts)))
PYEOF

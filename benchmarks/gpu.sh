#!/usr/bin/env bash
# One prepared GPU benchmark (issue: benchmarks), within 10 minutes on one H100/H200-class GPU:
#  1. training-step throughput and peak memory at the cpu-small and gpu presets (fs 48, 96^3, bf16);
#  2. the quality benchmark's short mode (benchmarks/quality.py --mode short: federated vs centralised vs single
#     sites, MAE vs scratch at 100/25 % labels, the privacy scope's cost, held-out hospital, 3 seeds), for
#     QUALITY_SECONDS (default 330); arms still running then are stopped and the summary covers the finished ones;
#  3. the gpu preset with torch.compile, if at least COMPILE_SECONDS (default 120) are left of BUDGET (540).
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default: $OUT (device runner) or workspace/bench_gpu
#
# Needs the project's packages (make setup, or pip install -e . on the GPU node: the torch==2.13.0 pin pulls the
# CUDA build there). Paste OUT_DIR/gpu_table.md and OUT_DIR/quality.md into docs/BENCHMARKS.md with the date and
# the GPU named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-workspace/bench_gpu}}"
WORK="${WORK_DIR:-/tmp/ecefl_gpu_bench}"
BUDGET="${BUDGET:-540}"; QUALITY_SECONDS="${QUALITY_SECONDS:-330}"; COMPILE_SECONDS="${COMPILE_SECONDS:-120}"
mkdir -p "$OUT_DIR" "$WORK"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONUNBUFFERED=1
"$PY" - <<'PY' || exit 1
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA GPU visible to torch; run it on a GPU machine")
import monai, nvflare, pydicom, nibabel  # noqa: F401  (fail here, not half-way)
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| monai", monai.__version__,
      "| nvflare", nvflare.__version__)
PY
RAW="$OUT_DIR/gpu_steps.jsonl"
: > "$RAW"
step() {
  echo "== step.py $*"
  timeout "$1" "$PY" benchmarks/step.py "${@:2}" | tee -a "$RAW" || echo "{\"failed\": \"${*:2}\"}" | tee -a "$RAW"
}
step 120 --preset cpu-small --steps 20
step 120 --preset gpu --steps 20

# quality, short mode: a soft deadline (no arm starts after it), then a hard stop and a summary of what finished
Q="$WORK/quality_short"
# its own session, so the hard stop ends its arm processes and simulators, and nothing else on the machine
setsid "$PY" benchmarks/quality.py --mode short --out "$Q" \
  --deadline-min "$(awk "BEGIN{print ($QUALITY_SECONDS - 150) / 60}")" > "$OUT_DIR/quality_log.txt" 2>&1 &
QPID=$!
( for _ in $(seq "$QUALITY_SECONDS"); do kill -0 "$QPID" 2>/dev/null || exit 0; sleep 1; done
  kill -9 -- -"$QPID" 2>/dev/null ) &
wait "$QPID"
kill -9 -- -"$QPID" 2>/dev/null; wait; sleep 2
grep -v -e "nvImageCodec" -e "warnings.warn" -e "^  case-" -e "^  outputs:" "$OUT_DIR/quality_log.txt"
"$PY" benchmarks/quality.py --mode short --out "$Q" --deadline-min 0 > "$Q/summary_log.txt" 2>&1 \
  || tail -20 "$Q/summary_log.txt"
for f in quality.json quality.md roc_heldout.png; do cp "$Q/$f" "$OUT_DIR/" 2>/dev/null; done
cat "$OUT_DIR/quality.md" 2>/dev/null

if [ $((BUDGET - SECONDS)) -ge "$COMPILE_SECONDS" ]; then
  step $((BUDGET - SECONDS - 10)) --preset gpu --steps 20 --compile
else
  echo "== torch.compile step skipped: $((BUDGET - SECONDS)) s left of the $BUDGET s budget"
fi
"$PY" - "$RAW" "$OUT_DIR/gpu_table.md" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
lines = [f"GPU benchmark, {datetime.date.today()}: `bash benchmarks/gpu.sh`", "",
         "| preset | device | bf16 | compile | batch x patch | params | step s (median) | voxels/s | peak GPU MiB |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "failed" in r:
        lines.append(f"| {r['failed']} | failed | | | | | | | |")
        continue
    lines.append(f"| {r['preset']} | {r['device']} | {r['amp_bf16']} | {r['compile']} | {r['batch']} x "
                 f"{'x'.join(map(str, r['patch']))} | {r['params']:,} | {r['step_s_median']} | {r['voxels_per_s']:,} | "
                 f"{r.get('peak_gpu_mib', '-')} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "gpu.sh done in ${SECONDS}s"

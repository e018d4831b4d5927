#!/usr/bin/env bash
# One prepared GPU benchmark, within 10 minutes on one H100/H200-class GPU:
#  1. training-step throughput and peak memory at the cpu-small and gpu presets (fs 48, 96^3, bf16);
#  2. BENCH=mae (default; issue #13): benchmarks/mae.py --mode gpu — data generated on the device, one MAE
#     pretraining at the gpu preset (MAE_INITS, default "scratch maeunet": the whole-U-Net MAE, the CPU benchmark's
#     best), then fine-tuning from MAE vs from scratch at 10/25/100 % of the labels, 3 seeds,
#     scored on the unseen hospital, for BENCH_SECONDS (default 420); arms still running then are stopped and the
#     summary covers the finished ones.
#     BENCH=quality: benchmarks/quality.py --mode short (federated vs centralised vs single sites, the privacy
#     scope's cost, held-out hospital, 3 seeds) for the same time;
#  3. the gpu preset with torch.compile, if at least COMPILE_SECONDS (default 120) are left of BUDGET (540);
#  beside 2 (BYTES=1, default): benchmarks/speed.py --parts bytes, the bytes per message with NVFlare's quantization
#     filters, blockwise8 and 4-bit included (bitsandbytes on CUDA), into OUT_DIR/speed.json.
#  STEP_PRESETS="" skips step 1 (and its gpu_table.md); MAE_ARGS adds arguments to mae.py (e.g. "--seeds 0
#  --fractions 10 --pretrain-seconds 110"); DEADLINE_SECONDS (default BENCH_SECONDS - 150): no arm starts after it.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default: $OUT (device runner) or workspace/bench_gpu
#   REQUIRE_GPU=0 STEP_PRESETS=test-tiny MAE_MODE=tiny BENCH_SECONDS=240 bash benchmarks/gpu.sh /tmp/gpu_dry
#                                             # the same script end to end on a CPU at tiny size (before a GPU run)
#
# Needs the project's packages (make setup, or pip install -e . on the GPU node: the torch==2.13.0 pin pulls the
# CUDA build there). Paste OUT_DIR/gpu_table.md and OUT_DIR/mae.md (or quality.md) into docs/BENCHMARKS.md with
# the date and the GPU named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-workspace/bench_gpu}}"
WORK="${WORK_DIR:-/tmp/ecefl_gpu_bench}"
BUDGET="${BUDGET:-540}"; BENCH="${BENCH:-mae}"; BENCH_SECONDS="${BENCH_SECONDS:-${QUALITY_SECONDS:-420}}"
COMPILE_SECONDS="${COMPILE_SECONDS:-120}"; STEP_PRESETS="${STEP_PRESETS-cpu-small gpu}"; MAE_MODE="${MAE_MODE:-gpu}"
REQUIRE_GPU="${REQUIRE_GPU:-1}"; BYTES="${BYTES:-1}"
MAE_INITS="${MAE_INITS:-scratch maeunet}"; MAE_ARGS="${MAE_ARGS:-}"
DEADLINE_SECONDS="${DEADLINE_SECONDS:-$((BENCH_SECONDS - 150))}"  # no arm starts after it
mkdir -p "$OUT_DIR" "$WORK"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONUNBUFFERED=1
REQUIRE_GPU="$REQUIRE_GPU" "$PY" - <<'PY' || exit 1
import os, torch, sys
if not torch.cuda.is_available() and os.environ["REQUIRE_GPU"] != "0":
    sys.exit("benchmarks/gpu.sh: no CUDA GPU visible to torch; run it on a GPU machine")
import monai, nvflare, pydicom, nibabel  # noqa: F401  (fail here, not half-way)
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (REQUIRE_GPU=0)"
print("GPU:", gpu, "| torch", torch.__version__, "| monai", monai.__version__, "| nvflare", nvflare.__version__)
PY
if [ "$BYTES" = 1 ]; then  # CPU-bound except the quantizers: beside the benchmark, it barely slows it
  timeout 200 "$PY" benchmarks/speed.py --out "$WORK/bytes" --parts bytes > "$OUT_DIR/bytes_log.txt" 2>&1 &
  BYTES_PID=$!
fi
RAW="$WORK/gpu_steps.jsonl"
: > "$RAW"
step() {
  echo "== step.py $*"
  timeout "$1" "$PY" benchmarks/step.py "${@:2}" | tee -a "$RAW" || echo "{\"failed\": \"${*:2}\"}" | tee -a "$RAW"
}
for preset in $STEP_PRESETS; do step 120 --preset "$preset" --steps 20; done

# step 2: a soft deadline (no arm starts after it), then a hard stop and a summary of what finished
Q="$WORK/$BENCH"
if [ "$BENCH" = mae ]; then
  # shellcheck disable=SC2206  # MAE_INITS and MAE_ARGS are lists of words
  CMD=(benchmarks/mae.py --mode "$MAE_MODE" --out "$Q" --inits $MAE_INITS $MAE_ARGS)
  RESULTS=(mae.json mae.md mae_curves.png)
else
  CMD=(benchmarks/quality.py --mode short --out "$Q"); RESULTS=(quality.json quality.md roc_heldout.png)
fi
# its own session, so the hard stop ends its arm processes and simulators, and nothing else on the machine
setsid "$PY" "${CMD[@]}" --deadline-min "$(awk "BEGIN{print $DEADLINE_SECONDS / 60}")" \
  > "$OUT_DIR/${BENCH}_log.txt" 2>&1 &
QPID=$!
# every 15 s the results so far go to OUT_DIR (mae.py rewrites them after each finished task): a run stopped from
# outside (the device's time limit) still returns what finished
( for i in $(seq "$BENCH_SECONDS"); do kill -0 "$QPID" 2>/dev/null || exit 0; sleep 1
    if [ $((i % 15)) = 0 ]; then for f in "${RESULTS[@]}"; do cp "$Q/$f" "$OUT_DIR/" 2>/dev/null; done; fi; done
  kill -9 -- -"$QPID" 2>/dev/null ) &
wait "$QPID"
kill -9 -- -"$QPID" 2>/dev/null; wait; sleep 2
grep -v -e "nvImageCodec" -e "warnings.warn" -e "^  case-" -e "^  outputs:" "$OUT_DIR/${BENCH}_log.txt"
# the summary of what finished (finished arms are kept; nothing new starts at deadline 0)
"$PY" "${CMD[@]}" --deadline-min 0 > "$Q/summary_log.txt" 2>&1 || tail -20 "$Q/summary_log.txt"
for f in "${RESULTS[@]}"; do cp "$Q/$f" "$OUT_DIR/" 2>/dev/null; done
cat "$OUT_DIR/${RESULTS[1]}" 2>/dev/null

if [ "$REQUIRE_GPU" = 0 ]; then
  echo "== torch.compile step skipped: REQUIRE_GPU=0 (a dry run)"
elif [ $((BUDGET - SECONDS)) -ge "$COMPILE_SECONDS" ]; then
  step $((BUDGET - SECONDS - 10)) --preset gpu --steps 20 --compile
else
  echo "== torch.compile step skipped: $((BUDGET - SECONDS)) s left of the $BUDGET s budget"
fi
if [ -n "${BYTES_PID:-}" ]; then
  wait "$BYTES_PID" 2>/dev/null
  cp "$WORK/bytes/speed.json" "$OUT_DIR/" 2>/dev/null \
    && grep -o '"[a-z0-9]*_ratio": [0-9.]*' "$OUT_DIR/speed.json" || tail -5 "$OUT_DIR/bytes_log.txt"
fi
[ -s "$RAW" ] && "$PY" - "$RAW" "$OUT_DIR/gpu_table.md" <<'PY'
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

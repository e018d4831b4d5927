#!/usr/bin/env bash
# One prepared GPU benchmark (issue: benchmarks), well within 10 minutes on one H100/H200-class GPU:
# training-step throughput and peak memory at the cpu-small and gpu presets (fs 48, 96^3, bf16), with and without
# torch.compile, then a short sliding-window inference timing. Writes a Markdown table and the raw JSON lines.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default: $OUT (device runner) or workspace/bench_gpu
#
# Needs the project environment (make setup, or pip install -e . on the GPU node: the torch==2.13.0 pin pulls
# the CUDA build there). Paste OUT_DIR/gpu_table.md into docs/BENCHMARKS.md with the date and the GPU named.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-workspace/bench_gpu}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
"$PY" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA GPU visible to torch; run it on a GPU machine")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
RAW="$OUT_DIR/gpu_steps.jsonl"
: > "$RAW"
for args in "--preset cpu-small --steps 20" "--preset gpu --steps 20" "--preset gpu --steps 20 --compile"; do
  echo "== step.py $args"
  timeout 240 "$PY" benchmarks/step.py $args | tee -a "$RAW" || echo "{\"failed\": \"$args\"}" | tee -a "$RAW"
done
"$PY" - "$RAW" "$OUT_DIR/gpu_table.md" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
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

#!/usr/bin/env bash
# Re-runs the CPU measurements recorded in the README (one after another, so they do not share the CPU).
# Usage: bash scripts/measure_all.sh [OUTDIR]   (logs per benchmark in OUTDIR, default runs/measure)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/measure}"; mkdir -p "$out"
py=.venv/bin/python
bundle=models/facelift_mbv1_fast_96
run() { local name=$1; shift; echo "== $name: $*"; "$@" > "$out/$name.log" 2>&1; echo "   exit $? ($out/$name.log)"; }
run decode_detect     $py benchmarks/bench_decode_detect.py
run landmarks         $py benchmarks/bench_landmarks.py --bundle $bundle --backends onnxruntime torch --batches 1 8 32 --seconds 3
run end_to_end        $py benchmarks/bench_end_to_end.py --bundle $bundle
run end_to_end_fast   $py benchmarks/bench_end_to_end.py --bundle $bundle --input-size 320 --detect-every 5
run int8              $py benchmarks/bench_int8.py --bundle $bundle
run evaluate          $py -m training.evaluate --model $bundle --baseline teacher --dataset synthetic --limit 200 --threads 2 --out runs/eval/synthetic

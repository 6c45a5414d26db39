#!/usr/bin/env bash
# GPU checks in one go (issue 15): runs benchmarks/gpu_check.py with python3 (or $PYTHON), forwarding the
# arguments. On the GPU machine source the setup first, in the repository root (carry .whl):
#     . benchmarks/gpu_setup.sh && bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"

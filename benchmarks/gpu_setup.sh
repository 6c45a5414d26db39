# Source this (do not execute it) in the repository root on the GPU machine, before benchmarks/gpu_check.sh:
#
#     . benchmarks/gpu_setup.sh && bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json
#
# Installs the wheels in .whl/ (filled here by `python3 benchmarks/gpu_fetch.py`; carry `.whl` to the GPU
# machine) into /tmp/site, and exports PYTHONPATH=/tmp/site:<repo> (the project is used from its root, not
# pip-installed) and, where ../shared is missing, FACELIFT_SHARED=.whl/shared (the ICT FaceKit subset the
# gpu-marked tests need). Returns non-zero (without exiting the calling shell) when something is missing.
_gpu_setup() {
    local repo site=/tmp/site
    repo=$(pwd)
    if ! ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
        echo "gpu_setup: no wheels in $repo/.whl (run python3 benchmarks/gpu_fetch.py here and carry .whl)" >&2
        return 1
    fi
    python3 -c "import lzma" || { echo "gpu_setup: this python has no lzma module (the PyAV wheel needs it)" >&2; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$repo"/.whl/*.whl \
        || { echo "gpu_setup: pip install of .whl/*.whl failed" >&2; return 1; }
    export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
    if [ -z "${FACELIFT_SHARED:-}" ] && [ ! -d "$repo/../shared/assets" ] && [ -d "$repo/.whl/shared/assets" ]; then
        export FACELIFT_SHARED="$repo/.whl/shared"
    fi
    echo "gpu_setup: PYTHONPATH=$PYTHONPATH FACELIFT_SHARED=${FACELIFT_SHARED:-(default ../shared)}"
}
_gpu_setup

#!/usr/bin/env bash
# Wheels of actfocus_kernels against PYTHON's torch (no build isolation), into WHEEL_DIR (dist/):
#   scripts/build_wheels.sh                      # one wheel: the release archs of setup.py
#                                                #   (RELEASE_CUDA_ARCHS) with a CUDA torch, else CPU
#   scripts/build_wheels.sh "8.0" "9.0a;12.0+PTX"  # one wheel per TORCH_CUDA_ARCH_LIST
#   scripts/build_wheels.sh --device             # the device wheel: setup.py's DEVICE_CUDA_ARCHS
#                                                #   (sm_80 + sm_90a), PYTHON = the 2.11 / 3.12 venv
# Each wheel's version names what it holds (+cu130.torch214.sm80.sm90a.sm100.sm120, +cpu.torch213);
# setup.py finds the CUDA toolkit (also behind a wrapper nvcc). With a CPU-only torch, or
# ACTFOCUS_CUDA=0, arch lists do not apply and the CPU wheel is built. MAX_JOBS bounds the parallel
# compile jobs (default 2). scripts/check_wheel.py checks a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEEL_DIR=${WHEEL_DIR:-dist}
export MAX_JOBS=${MAX_JOBS:-2}
# the in-tree build's metadata would shadow the installed distribution's for `python -m` from here
trap 'rm -rf ./*.egg-info' EXIT

build_one() {  # build_one [arch list]
  rm -rf build/temp.* build/lib.* build/bdist.* ./*.egg-info
  local start=$SECONDS
  if [ $# -gt 0 ]; then
    echo "== wheel for TORCH_CUDA_ARCH_LIST=$1"
    TORCH_CUDA_ARCH_LIST="$1" "$PYTHON" -m pip wheel -q . --no-build-isolation --no-deps -w "$WHEEL_DIR"
  else
    echo "== wheel"
    "$PYTHON" -m pip wheel -q . --no-build-isolation --no-deps -w "$WHEEL_DIR"
  fi
  echo "   built in $(( SECONDS - start )) s"
}

if [ "${1:-}" = --device ]; then
  set -- "$("$PYTHON" -c 'import sys; sys.path.insert(0, "scripts")
from check_wheel import setup_constant; print(setup_constant("DEVICE_CUDA_ARCHS"))')"
fi
cuda_torch=$("$PYTHON" -c 'import torch; print(int(torch.version.cuda is not None))')
if [ $# -eq 0 ]; then
  build_one
elif [ "$cuda_torch" = 1 ] && [ "${ACTFOCUS_CUDA:-1}" != 0 ]; then
  for archs in "$@"; do build_one "$archs"; done
else
  echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') has no CUDA (or ACTFOCUS_CUDA=0): arch lists $* do not apply"
  build_one
fi
ls -1 "$WHEEL_DIR"/actfocus_kernels-*.whl

#!/usr/bin/env bash
# One wheel per CUDA arch set, each tagged with its archs in the version's local part:
#   scripts/build_wheels.sh "8.0" "9.0a"        -> ...+cu130.torch213.sm80..., ...+cu130.torch213.sm90a...
#   scripts/build_wheels.sh "8.0;9.0a"          -> one wheel for both
# Wheels go to dist/ (WHEEL_DIR). With a CPU-only torch (or ACTFOCUS_CUDA=0) the arch sets do not
# apply: one CPU wheel (+cpu.torchXYZ) is built. Builds against the installed torch (no isolation);
# MAX_JOBS bounds the parallel compile jobs (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEEL_DIR=${WHEEL_DIR:-dist}
export MAX_JOBS=${MAX_JOBS:-2}
[ $# -gt 0 ] || set -- "8.0" "9.0a"

build_one() {  # build_one [arch list]
  rm -rf build/temp.* build/lib.* build/bdist.* ./*.egg-info
  if [ $# -gt 0 ]; then
    echo "== wheel for TORCH_CUDA_ARCH_LIST=$1"
    TORCH_CUDA_ARCH_LIST="$1" "$PYTHON" -m pip wheel . --no-build-isolation --no-deps -w "$WHEEL_DIR"
  else
    echo "== CPU wheel"
    "$PYTHON" -m pip wheel . --no-build-isolation --no-deps -w "$WHEEL_DIR"
  fi
}

with_cuda=$("$PYTHON" -c '
import os, torch
from torch.utils import cpp_extension
cuda = os.environ.get("ACTFOCUS_CUDA", "1") != "0" and (
    os.environ.get("ACTFOCUS_FORCE_CUDA", "0") == "1"
    or (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None))
print(int(cuda))')
if [ "$with_cuda" = 1 ]; then
  for archs in "$@"; do build_one "$archs"; done
else
  echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') has no CUDA (or ACTFOCUS_CUDA=0): arch sets $* do not apply"
  build_one
fi
ls -1 "$WHEEL_DIR"/actfocus_kernels-*.whl

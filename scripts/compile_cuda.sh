#!/usr/bin/env bash
# Compile-check of the CUDA sources without a GPU or a CUDA build of torch (what CI runs).
#
# 0. The torch-free folders (csrc/core, csrc/cuda/kernels) include no torch header
#    (scripts/check_torch_free.sh); this runs with or without a CUDA toolkit.
# 1. Every torch-free kernel file csrc/cuda/kernels/*.cu -> build/cuda_objs/<name>.o with nvcc and
#    no torch include path, for sm_80 and sm_90a (ACTFOCUS_CUDA_ARCHS="80 90a"), with the flags
#    torch's cpp_extension adds.
# 2. When torch is importable: a syntax check of the torch CUDA glue (csrc/cuda/*.cpp and the
#    bindings with ACTFOCUS_WITH_CUDA) against torch's headers, with a stub for the one header a
#    CPU wheel of torch lacks (c10/cuda/impl/cuda_cmake_macros.h).
# Exits non-zero on the first error. The toolkit: CUDA_HOME, else the one behind the nvcc on PATH
# (scripts/cuda_home.py, as setup.py finds it); none: steps 1 and 2 are skipped. Env: MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/check_torch_free.sh csrc
PYTHON=${PYTHON:-python3}
if ! CUDA_HOME=$("$PYTHON" scripts/cuda_home.py); then
  echo "no CUDA toolkit (CUDA_HOME unset, no nvcc on PATH): CUDA compile check skipped"
  exit 0
fi
NVCC=$CUDA_HOME/bin/nvcc
ARCHS=${ACTFOCUS_CUDA_ARCHS:-"80 90a"}
OUT=build/cuda_objs
JOBS=${MAX_JOBS:-2}
mkdir -p "$OUT"

GENCODE=()
for arch in $ARCHS; do GENCODE+=("-gencode" "arch=compute_${arch},code=sm_${arch}"); done
NVCC_FLAGS=(-std=c++20 -O3 -Icsrc -DACTFOCUS_WITH_SM90 --expt-relaxed-constexpr -Werror all-warnings
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
            -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ "${GENCODE[@]}")

echo "nvcc: $("$NVCC" --version | tail -1) ($CUDA_HOME); archs: $ARCHS"
export NVCC OUT
printf '%s\n' csrc/cuda/kernels/*.cu | xargs -P "$JOBS" -I{} bash -c '
  name=$(basename "{}" .cu)
  "$NVCC" "$@" -c "{}" -o "$OUT/$name.o" && echo "  compiled {} -> $OUT/$name.o"
' _ "${NVCC_FLAGS[@]}"

if TORCH_INCLUDE=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null); then
  STUB=build/cuda_stub/c10/cuda/impl
  mkdir -p "$STUB"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$STUB/cuda_cmake_macros.h"
  INCLUDES=(-Icsrc -Ibuild/cuda_stub -I"$CUDA_HOME/include")
  for dir in $TORCH_INCLUDE; do INCLUDES+=(-I"$dir"); done
  export INCLUDES_STR="${INCLUDES[*]}"
  printf '%s\n' csrc/cuda/*.cpp csrc/torch_bindings.cpp | xargs -P "$JOBS" -I{} bash -c '
    ${CXX:-c++} -std=c++20 -fsyntax-only -DACTFOCUS_WITH_CUDA -DACTFOCUS_WITH_SM90 \
      -DACTFOCUS_CUDA_ARCHS=sm_80,sm_90a $INCLUDES_STR "{}" && echo "  syntax ok {}"
  '
else
  echo "torch not importable: skipped the CUDA glue syntax check"
fi
echo "CUDA compile check passed"

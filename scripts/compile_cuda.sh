#!/usr/bin/env bash
# Compile-check of the CUDA sources without a GPU or a CUDA build of torch (what CI runs).
#
# 1. Every torch-free kernel file csrc/cuda/kernels/*.cu -> build/cuda_objs/<name>.o with nvcc, for
#    sm_80 and sm_90a (ACTFOCUS_CUDA_ARCHS="80 90a"), with the flags torch's cpp_extension adds.
# 2. When torch is importable: a syntax check of the torch CUDA glue (csrc/cuda/*.cpp and the
#    bindings with ACTFOCUS_WITH_CUDA) against torch's headers, with a stub for the one header a
#    CPU wheel of torch lacks (c10/cuda/impl/cuda_cmake_macros.h).
# Exits non-zero on the first error. Env: NVCC (default: $CUDA_HOME/bin/nvcc or nvcc), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$( [ -n "${CUDA_HOME:-}" ] && echo "$CUDA_HOME/bin/nvcc" || echo nvcc )}
ARCHS=${ACTFOCUS_CUDA_ARCHS:-"80 90a"}
OUT=build/cuda_objs
JOBS=${MAX_JOBS:-2}
mkdir -p "$OUT"

GENCODE=()
for arch in $ARCHS; do GENCODE+=("-gencode" "arch=compute_${arch},code=sm_${arch}"); done
NVCC_FLAGS=(-std=c++20 -O3 -Icsrc -DACTFOCUS_WITH_SM90 --expt-relaxed-constexpr -Werror all-warnings
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
            -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ "${GENCODE[@]}")

echo "nvcc: $("$NVCC" --version | tail -1); archs: $ARCHS"
export NVCC OUT
printf '%s\n' csrc/cuda/kernels/*.cu | xargs -P "$JOBS" -I{} bash -c '
  name=$(basename "{}" .cu)
  "$NVCC" "$@" -c "{}" -o "$OUT/$name.o" && echo "  compiled {} -> $OUT/$name.o"
' _ "${NVCC_FLAGS[@]}"

PYTHON=${PYTHON:-python}
if TORCH_INCLUDE=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null); then
  STUB=build/cuda_stub/c10/cuda/impl
  mkdir -p "$STUB"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$STUB/cuda_cmake_macros.h"
  # the toolkit's include directory, as nvcc itself reports it (nvcc may be a wrapper script)
  CUDA_INCLUDE=$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)$/\1/p' | head -1)/include
  INCLUDES=(-Icsrc -Ibuild/cuda_stub -I"$CUDA_INCLUDE")
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

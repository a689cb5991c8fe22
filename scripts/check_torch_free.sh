#!/usr/bin/env bash
# The torch-free folders of csrc (ARCHITECTURE.md, "Layout"): csrc/core/ (row math shared by CPU and
# CUDA) and csrc/cuda/kernels/ (kernels and launchers on raw pointers) include no torch, ATen, c10,
# caffe2, pybind11 or Python header. Checked two ways, failing (exit 1) with the offending lines:
# 1. no such #include line in them;
# 2. every csrc/core header compiles on its own with the C++ compiler and no torch include path
#    (scripts/compile_cuda.sh gives the kernels the same proof: nvcc compiles them with -Icsrc only).
#
#   scripts/check_torch_free.sh [CSRC]     # default: csrc
set -euo pipefail
CSRC=${1:-csrc}
DIRS=("$CSRC/core" "$CSRC/cuda/kernels")
for dir in "${DIRS[@]}"; do
  [ -d "$dir" ] || { echo "check_torch_free: no folder $dir" >&2; exit 1; }
done

PATTERN='^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"](torch/|ATen/|c10/|caffe2/|pybind11/|Python\.h)'
if hits=$(grep -rnE "$PATTERN" "${DIRS[@]}"); then
  echo "check_torch_free: torch headers included in a torch-free folder:" >&2
  echo "$hits" >&2
  exit 1
fi

for header in "$CSRC"/core/*.h; do
  if ! printf '#include "%s"\n' "${header#"$CSRC"/}" |
      ${CXX:-c++} -std=c++20 -fsyntax-only -Wall -Werror -I"$CSRC" -x c++ -; then
    echo "check_torch_free: $header does not compile without torch's headers" >&2
    exit 1
  fi
done
echo "torch-free: ${DIRS[*]} include no torch/ATen/c10/pybind11 header; $CSRC/core/*.h compile without torch"

#!/usr/bin/env bash
# CI stages 2 and 3: a CUDA wheel built for real, checked, installed and tested.
#   PYTHON=.venv-cu/bin/python bash scripts/test_wheel.sh            # stage 2 (make test-wheel)
#   PYTHON=.venv-211/bin/python bash scripts/test_wheel.sh --device  # stage 3 (make test-device)
# PYTHON's torch must be a CUDA build (it runs on the CPU). Steps, each timed:
# 1. the CUDA wheel for setup.py's release archs, or with --device the device wheel (torch 2.11,
#    cp312, sm_80 + sm_90a: scripts/build_wheels.sh --device), into build/wheels-cuda/;
# 2. its checks (scripts/check_wheel.py [--device]: SASS per arch, PTX, NEEDED libraries, torch pin,
#    size, and its _C imported by PYTHON's torch);
# 3. installed into PYTHON's environment (replacing whatever actfocus_kernels was there);
# 4. the test suite from a copy of tests/ and benchmarks/ outside the source tree, so that
#    `import actfocus_kernels` is the installed wheel; ACTFOCUS_EXPECT_WHEEL=cuda has
#    tests/test_build.py assert that, and that the CUDA kernels are registered (none runs on the CPU).
# With --device, steps 3 and 4 are benchmarks/gpu_check.sh --dry-run instead, from a copy of the
# tracked files with the wheel carried in .whl/, as a lease carries it: it installs the wheel
# (--target), checks that its _C is what imports, runs the same test suite from a copy outside the
# tree, then every benchmark entry point, the vocab-parallel check and the TRL step at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:?PYTHON must name the stage-2 python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, the venv's own (not resolved)
DEVICE=()
[ "${1:-}" = --device ] && DEVICE=(--device)
START=$SECONDS
step() { echo "== [$(( SECONDS - START )) s] $*"; }

"$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' ||
  { echo "test_wheel: the torch of $PY is not a CUDA build" >&2; exit 1; }
WHEELS=build/wheels-cuda
rm -rf "$WHEELS"
step "build the CUDA wheel (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
WHEEL_DIR=$WHEELS PYTHON=$PY bash scripts/build_wheels.sh "${DEVICE[@]}"
wheel=$(ls "$WHEELS"/actfocus_kernels-*.whl)
step "check $wheel"
"$PY" scripts/check_wheel.py "${DEVICE[@]}" --import-with "$PY" "$wheel"
suite=$(mktemp -d)
trap 'rm -rf "$suite"' EXIT
if [ ${#DEVICE[@]} -gt 0 ]; then
  step "benchmarks/gpu_check.sh --dry-run with the device wheel carried"
  git ls-files -z | xargs -0 cp --parents -t "$suite"  # the tree a lease carries: the tracked files
  mkdir -p "$suite/.whl" && cp "$wheel" "$suite/.whl/"
  PYTHON=$PY bash "$suite/benchmarks/gpu_check.sh" --dry-run
else
  step "install it"
  "$PY" -m pip install -q --no-deps --force-reinstall "$wheel"
  step "the test suite against the installed wheel"
  cp -r tests benchmarks pyproject.toml README.md "$suite"/  # README: its snippets are tested
  rm -rf "$suite/benchmarks/out"
  (cd "$suite" && ACTFOCUS_EXPECT_WHEEL=cuda bash "$ROOT/scripts/run_tests.sh" "$PY" tests)
fi
step "done"

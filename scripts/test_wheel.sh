#!/usr/bin/env bash
# CI stage 2 (make test-wheel): the CUDA wheel built for real, checked, installed and tested.
#   PYTHON=.venv-cu/bin/python bash scripts/test_wheel.sh
# PYTHON's torch must be a CUDA build (it runs on the CPU). Steps, each timed:
# 1. the CUDA wheel for setup.py's release archs (scripts/build_wheels.sh) into build/wheels-cuda/;
# 2. its checks (scripts/check_wheel.py: SASS per arch, PTX, NEEDED libraries, torch pin, size);
# 3. installed into PYTHON's environment (replacing whatever actfocus_kernels was there);
# 4. the test suite from a copy of tests/ and benchmarks/ outside the source tree, so that
#    `import actfocus_kernels` is the installed wheel; ACTFOCUS_EXPECT_WHEEL=cuda has
#    tests/test_build.py assert that, and that the CUDA kernels are registered (none runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:?PYTHON must name the stage-2 python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, the venv's own (not resolved)
START=$SECONDS
step() { echo "== [$(( SECONDS - START )) s] $*"; }

"$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' ||
  { echo "test_wheel: the torch of $PY is not a CUDA build" >&2; exit 1; }
WHEELS=build/wheels-cuda
rm -rf "$WHEELS"
step "build the CUDA wheel (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
WHEEL_DIR=$WHEELS PYTHON=$PY bash scripts/build_wheels.sh
wheel=$(ls "$WHEELS"/actfocus_kernels-*.whl)
step "check $wheel"
"$PY" scripts/check_wheel.py "$wheel"
step "install it"
"$PY" -m pip install -q --no-deps --force-reinstall "$wheel"
step "the test suite against the installed wheel"
suite=$(mktemp -d)
trap 'rm -rf "$suite"' EXIT
cp -r tests benchmarks pyproject.toml README.md "$suite"/  # README: its snippets are tested
rm -rf "$suite/benchmarks/out"
(cd "$suite" && ACTFOCUS_EXPECT_WHEEL=cuda bash "$ROOT/scripts/run_tests.sh" "$PY" tests)
step "stage 2 done"

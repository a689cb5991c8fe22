#!/usr/bin/env bash
# A test venv for one torch (CI stages 2 and 3, make wheels):
#   scripts/make_venv.sh VENV PYTHON TORCH_REQUIREMENTS [NO_DEPS_PACKAGE...]
# 1. PYTHON -m venv VENV (a fresh one when VENV has no stamp);
# 2. torch from TORCH_REQUIREMENTS (requirements-torch<minor>.txt), which is also the constraints file
#    of every install here (PIP_CONSTRAINT): it replaces a machine-wide cap on torch (a pip config
#    `constraint`), and nothing installed later moves torch;
# 3. requirements-dev.txt without its triton pin (stage 1's): the triton this torch pins stays;
# 4. NO_DEPS_PACKAGES with --no-deps (peers whose own requirements conflict: verl) and without build
#    isolation (deepspeed's sdist imports torch to build);
# then touches VENV/.deps-installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: make_venv.sh VENV PYTHON TORCH_REQUIREMENTS [NO_DEPS_PACKAGE...]}
PYTHON=${2:?PYTHON}
TORCH_REQ=$(realpath "${3:?TORCH_REQUIREMENTS}")
shift 3
export PIP_CONSTRAINT=$TORCH_REQ
rm -f "$VENV/.deps-installed"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -r "$TORCH_REQ"
grep -v '^triton==' requirements-dev.txt > "$VENV/requirements-dev.txt"
"${PIP[@]}" install -q -r "$VENV/requirements-dev.txt"
[ $# -eq 0 ] || "${PIP[@]}" install -q --no-deps --no-build-isolation "$@"
"$VENV/bin/python" -c 'import sys, torch, triton; print(f"{sys.argv[1]}: Python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")' "$VENV"
touch "$VENV/.deps-installed"

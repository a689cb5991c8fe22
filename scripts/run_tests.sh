#!/usr/bin/env bash
# The test suite, as both CI stages run it:  scripts/run_tests.sh PYTHON [pytest arguments]
# pytest's own exit status, except that collecting no test at all (its exit 5) is a failure too.
set -uo pipefail
PY=$1
shift
"$PY" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"

#!/usr/bin/env bash
# One timed CI stage (make test):  scripts/timed_stage.sh "NAME" COMMAND...
# Runs COMMAND, prints "== NAME: passed|FAILED in N s" and exits with COMMAND's status.
set -uo pipefail
name=$1
shift
start=$(date +%s)
"$@"
rc=$?
echo "== $name: $( [ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit $rc

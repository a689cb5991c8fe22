#!/usr/bin/env bash
# The path of a Python interpreter of a given minor version:  scripts/find_python.sh 3.12
# python3.12 on PATH when it runs (a pyenv shim for a version not selected does not), else the newest
# pyenv installation of that minor. Exits 1, saying so, when there is none.
set -euo pipefail
minor=${1:?usage: find_python.sh MAJOR.MINOR}
if command -v "python$minor" >/dev/null && "python$minor" -c '' 2>/dev/null; then
  command -v "python$minor"
  exit 0
fi
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
found=$(ls -d "$root"/versions/"$minor".*/bin/"python$minor" 2>/dev/null | sort -V | tail -1)
if [ -z "$found" ]; then
  echo "find_python: no Python $minor (python$minor on PATH or under $root/versions)" >&2
  exit 1
fi
echo "$found"

#!/usr/bin/env bash
# Regenerate constraints.txt: the exact version of every package in the demo/test environment.
#
# pyproject.toml keeps ranges (flywheel is also a library); `make` installs with
# `-c constraints.txt`, so a fresh clone gets the versions that were measured, not the
# newest ones of the day. Run this to move to newer versions on purpose, then re-run
# `make test` and `make demo` and update the README's figures.
#   scripts/lock.sh            (PYTHON=python3.11 scripts/lock.sh to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
pip="$scratch/venv/bin/pip"
"$pip" install -q --upgrade pip
"$pip" install -q torch==2.13.0          # first and pinned: an unpinned torch pulls a multi-GB CUDA build
"$pip" install -q uv                     # the Makefile installs with uv (README: measured against pip)
"$pip" install -q ".[test]"              # the newest versions inside pyproject.toml's ranges
{
  echo "# Exact versions of the demo/test environment (make setup installs with -c constraints.txt)."
  echo "# Regenerate with scripts/lock.sh; tests/test_lock.py checks the installed versions against it."
  # Names and versions only; local labels (torch's +cpu) dropped so the file also fits other builds.
  "$pip" freeze --all --exclude flywheel | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) packages"

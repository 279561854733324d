#!/usr/bin/env bash
# Regenerate images/constraints.txt: the one lock both images install from, for Linux x86_64 and Python
# 3.11, with vLLM. It starts from the dev lock (constraints.txt, whose pins uv keeps where it can) and moves
# only what vLLM forces; tests/test_images.py lists those packages and fails if the two locks drift further.
#   images/lock.sh        (after scripts/lock.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
grep -v '^#' constraints.txt > images/constraints.txt.tmp
printf 'torch==2.13.0\nvllm==0.32.0\npsycopg2-binary==2.9.13\nboto3==1.43.117\n' > images/extra.in.tmp
trap 'rm -f images/extra.in.tmp images/constraints.txt.tmp' EXIT
"$uv" pip compile pyproject.toml images/extra.in.tmp --extra gpu --extra cluster --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --no-header --no-annotate -q -o images/constraints.txt.tmp
{
  echo "# Exact versions of both images (images/*.Dockerfile), Linux x86_64, Python 3.11, with vLLM."
  echo "# Regenerate with images/lock.sh; tests/test_images.py compares it with constraints.txt."
  cat images/constraints.txt.tmp
} > images/constraints.txt
echo "images/constraints.txt: $(grep -c '==' images/constraints.txt) packages"

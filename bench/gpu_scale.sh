#!/usr/bin/env bash
# The efficacy benchmark at a larger scale, on a GPU (configs/gpu-scale.yaml; docs/experiments.md): trains the
# seed, runs the arms 6 at a time on the one GPU, then prints the table of what finished.
#
#   bench/gpu_scale.sh [OUT] [SECONDS] [-s key=value ...]
#
# OUT: where the seed and the runs go (default runs/gpu-scale). SECONDS: stop the arms after this long (0: never)
# and show every run at the last round all of them finished (efficacy.py --collect); a device lent for minutes
# gets a table either way; the same command again continues the runs (--reuse). The -s overrides apply to the
# seed and every arm. Environment: ARMS (default,oracle), SEEDS (0,1,2), JOBS (6 runs at a time), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-scale}
limit=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
config=configs/gpu-scale.yaml
arms=${ARMS:-default,oracle}
seeds=${SEEDS:-0,1,2}
jobs=${JOBS:-6}
python=${PYTHON:-python}

mkdir -p "$out"
start=$SECONDS
# The seed is kept between calls only if it was trained with the same overrides (a changed one retrains it,
# and --reuse then sees a new seed: every run starts over).
if [ ! -f "$out/seed/flywheel-model.json" ] || [ "$(cat "$out/seed.args" 2>/dev/null)" != "$*" ]; then
    "$python" -m flywheel.cli seed -c "$config" -s "seed.path=$out/seed" -s loop.progress=false "$@" >"$out/seed.json"
    printf '%s' "$*" >"$out/seed.args"
fi
echo "seed: $((SECONDS - start)) s" >&2
common=(-c "$config" -s "seed.path=$out/seed" "$@" --arms "$arms" --seeds "$seeds" --out "$out")
left=$(( limit > 0 ? limit - (SECONDS - start) : 0 ))
if [ "$limit" -gt 0 ] && [ "$left" -le 0 ]; then
    echo "no time left for the arms after the seed" >&2
    exit 1
fi
if [ "$left" -eq 0 ]; then
    exec "$python" bench/efficacy.py "${common[@]}" --jobs "$jobs" --reuse
fi
# timeout signals its whole process group, so the runs efficacy.py started stop with it (-k: killed 30 s later
# if they have not). 124: stopped at the limit; any other failure is a run's error, passed on.
status=0
timeout -k 30 "$left" "$python" bench/efficacy.py "${common[@]}" --jobs "$jobs" --reuse || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "stopped after $left s; the runs as they stand (bench/gpu_scale.sh again continues them):" >&2
    exec "$python" bench/efficacy.py "${common[@]}" --collect
fi
exit "$status"

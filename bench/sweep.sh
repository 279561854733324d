#!/usr/bin/env bash
# Variants of one recipe side by side on one machine: each variant is `flywheel run --no-track`
# with its own overrides and out_dir, all started at once, each stopped after SECONDS.
# Every variant prints its per-round table as rounds finish, so a stopped run still says
# what its finished rounds did; each round's JSON files stay under runs/sweep/<name>/.
#
#   bench/sweep.sh CONFIG SECONDS NAME "OVERRIDES" [NAME "OVERRIDES" ...]
#
# COMMON holds overrides for every variant; THREADS the torch threads per variant (default 2).
# What the README's sweep ran on one H200 (16 cores, 7 variants at once, 440 s):
#   COMMON="-s loop.device=cuda -s loop.rounds=12 -s generate.batch_size=2048 -s evaluate.batch_size=2048" \
#   bench/sweep.sh configs/default.yaml 440 base "" \
#     p12k "-s prompts.per_round=12000 -s prompts.replay_per_round=4000" \
#     p12k-lr "-s prompts.per_round=12000 -s prompts.replay_per_round=4000 -s train.learning_rate=1e-3"
#   (and four more variants, README). That machine's image has torch 2.11 and transformers 5.17 but no
#   MLflow, TRL or datasets: TRL, datasets, pyarrow 25 and their pure-Python needs came as wheels, an empty
#   `mlflow` module stood in for the logger setup `--no-track` never uses, and datasets' table
#   fingerprint (a dill pickle that failed there on pyarrow's MonthDayNano type) was replaced by a
#   random one; none of it touches what the rounds compute.
set -u
if [ $# -lt 4 ] || [ $(( $# % 2 )) -ne 0 ]; then
    echo "usage: bench/sweep.sh CONFIG SECONDS NAME \"OVERRIDES\" [NAME \"OVERRIDES\" ...]" >&2
    exit 2
fi
config=$1 seconds=$2
shift 2
flywheel=${FLYWHEEL:-flywheel}
out=${SWEEP_DIR:-runs/sweep}
mkdir -p "$out"
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} PYTHONUNBUFFERED=1
names=()
while [ $# -gt 0 ]; do
    name=$1 overrides=$2
    shift 2
    names+=("$name")
    # shellcheck disable=SC2086  # the overrides are meant to split into words
    (timeout "$seconds" "$flywheel" run -c "$config" --restart --no-track ${COMMON:-} -s loop.progress=false \
        -s loop.out_dir="$out/$name" $overrides >"$out/$name.log" 2>&1
     echo "exit status $?" >>"$out/$name.log") &
done
wait
for name in "${names[@]}"; do
    echo "== $name"
    grep -A 100 "^round bucket" "$out/$name.log" | grep -v "^exit status" || tail -n 5 "$out/$name.log"
done

#!/usr/bin/env bash
# On the GPU machine: the captured frame of several source trees, timed in one run, the trees alternating
# (the order reversed every other round), after one tree's GPU tests; then that tree's bf16 numerics.
#
#   [SIZES="0.6b 1.7b"] [MAX_BATCH=4] [ROUNDS=2] [TESTS=NAME] [NUMERICS=NAME] [LIMIT=560] \
#       bash bench/ab_frames.sh NAME=DIR[,PROBE_ARG...] ...
#
# Each DIR holds a tree's `src/` (and `tests/` for the TESTS tree), e.g. `git archive REV src tests
# pyproject.toml | tar -x -C .carry/NAME`, carried with `.whl` (bench/fetch_wheels.sh). Arguments after the
# commas go to that tree's `engine_probe.py` (`fg4=.carry/fg,--row-kernel-rows,4`). Every tree runs this
# tree's `bench/engine_probe.py --parts frames` on one random real-size CustomVoice checkpoint per size,
# built with this tree's `src`. Lines go to $OUT/NAME/ (the probe's JSON) and to standard output; a step
# that would overrun LIMIT seconds is skipped, so the results of a long call still come back.
set -u
LIMIT=${LIMIT:-560}
SIZES=${SIZES:-0.6b 1.7b}
MAX_BATCH=${MAX_BATCH:-4}
ROUNDS=${ROUNDS:-2}
T0=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
step() { echo "== $(($(date +%s) - T0)) s: $*"; }

declare -A TREE ARGS
NAMES=()
for spec in "$@"; do
  name=${spec%%=*}
  IFS=, read -r -a parts <<< "${spec#*=}"
  TREE[$name]=$(cd "${parts[0]}" && pwd)
  ARGS[$name]="${parts[*]:1}"
  NAMES+=("$name")
done

nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pip install -q --no-index --no-deps --target /tmp/deps .whl/shared/*.whl 2>&1 | tail -2
for size in $SIZES; do
  step checkpoint "$size"
  PYTHONPATH=$PWD/src:/tmp/deps python -m qtts.cli make-checkpoint "/tmp/cv-$size" --size "$size" \
    --variant custom_voice --vocabulary qwen > /dev/null || exit 1
done

if [ -n "${TESTS:-}" ]; then
  step "gpu tests of $TESTS"
  rm -rf /tmp/ab-tests && cp -r "${TREE[$TESTS]}" /tmp/ab-tests
  (cd /tmp/ab-tests && PYTHONPATH=/tmp/ab-tests/src:/tmp/deps timeout 150 python -m pytest -q -n 8 -m gpu \
    tests/test_kernels.py tests/test_scheduler.py -p no:cacheprovider 2>&1 | tail -4) | tee "$OUT/$TESTS-gpu-tests.txt"
fi

probe() {  # name size
  step "$1" "$2"
  [ "$(left)" -gt 40 ] || return
  mkdir -p "$OUT/$1"
  # shellcheck disable=SC2086  # the probe arguments are words
  OUT=$OUT/$1 PYTHONPATH=${TREE[$1]}/src:/tmp/deps timeout $(( $(left) - 5 )) python bench/engine_probe.py \
    --checkpoint "/tmp/cv-$2" --size "$2" --max-batch "$MAX_BATCH" --parts frames --reps 10 ${ARGS[$1]} 2>&1 \
    | grep '^{' | grep -v startup | grep greedy | cut -c1-160
}
for round in $(seq "$ROUNDS"); do
  order=("${NAMES[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=(); for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do order+=("${NAMES[i]}"); done
  fi
  for size in $SIZES; do for name in "${order[@]}"; do probe "$name" "$size"; done; done
done

if [ -n "${NUMERICS:-}" ] && [[ " $SIZES " == *" 1.7b "* ]]; then
  step "numerics 1.7b $NUMERICS"
  [ "$(left)" -gt 70 ] && PYTHONPATH=${TREE[$NUMERICS]}/src:/tmp/deps timeout $(( $(left) - 10 )) python bench/numerics.py \
    /tmp/cv-1.7b --device cuda --frames 96 --json "$OUT/numerics-1.7b-$NUMERICS.json" 2>&1 | tail -8
fi
step done

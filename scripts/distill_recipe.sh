#!/usr/bin/env bash
# The shipped default's distillation (docs/train-your-own.md; rows W and Z14 of docs/benchmarks.md)
# from a given teacher, on one core, then its servable folders and quick evals:
#
#     scripts/distill_recipe.sh TEACHER OUT [CORE]
#
# OUT/wm (sinks 4, window 2 and the channel-mean guard from DATA, as shipped), OUT/wm-init,
# OUT/wm-nosink (window 8), and
# OUT/eval, OUT/eval-nosink from `wm eval --quick`. Every stage resumes when rerun.
# DATA (runs/data-play/train), TOKENIZER (assets/default/tokenizer), SEED (0), DMD_MINUTES
# (8), INIT_FLAGS and DMD_FLAGS (extra `wm distill init` / `dmd` flags) may be set in the
# environment; STUDENT=S skips the ODE pairs and the init and runs DMD from student S (a
# world-model folder's `student`, e.g. assets/default/student, or a run's `model`).
set -euo pipefail
T=${1:?teacher checkpoint, e.g. runs/teacher/model}
R=${2:?output folder}
CORE=${3:-0}
DATA=${DATA:-runs/data-play/train}
TOK=${TOKENIZER:-assets/default/tokenizer}
SEED=${SEED:-0}
WM=${WM:-.venv/bin/wm}
export OMP_NUM_THREADS=1
run() { taskset -c "$CORE" "$WM" "$@"; }
mkdir -p "$R"
worlds=(--tokenizer "$TOK" --worlds 6,7,8,9)
idm=(--idm assets/default/eval/idm --threads 1)
init=()
if [ -z "${STUDENT:-}" ]; then
    run distill ode --preset cpu --data "$DATA" --teacher "$T" --out "$R/ode" --clips 40 \
        --max-minutes 4 --student-steps 2 --teacher-steps 32 --seed "$SEED"
    # shellcheck disable=SC2086
    run distill init --preset cpu --pairs "$R/ode" --teacher "$T" --out "$R/student-init" \
        --steps 600 --max-minutes 4 --seed "$SEED" ${INIT_FLAGS:-}
    STUDENT=$R/student-init/model
    run distill pack --student "$STUDENT" --out "$R/wm-init" "${worlds[@]}" --sinks 4 --window 2
    init=(--student-init "$R/wm-init")
fi
# shellcheck disable=SC2086
run distill dmd --preset cpu --data "$DATA" --teacher "$T" --student "$STUDENT" \
    --out "$R/student-dmd" --teacher-cfg 3 --real-weight 2 --rollout-frames 12 --steps 2000 \
    --max-minutes "${DMD_MINUTES:-8}" --seed "$SEED" ${DMD_FLAGS:-}
run distill pack --student "$R/student-dmd/model" --out "$R/wm" "${worlds[@]}" --sinks 4 --window 2 \
    --mean-bounds "$DATA"
run distill pack --student "$R/student-dmd/model" --out "$R/wm-nosink" "${worlds[@]}" --sinks 0 --window 8
run eval --quick --checkpoint "$R/wm" --teacher "$T" --teacher-cfg 3 "${init[@]}" "${idm[@]}" \
    --out "$R/eval"
run eval --quick --checkpoint "$R/wm-nosink" "${idm[@]}" --out "$R/eval-nosink"

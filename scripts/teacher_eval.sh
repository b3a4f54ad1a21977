#!/usr/bin/env bash
# A teacher judged on its own frames, before any distillation: stand, walk and turn probes of
# 17 frames in a trained-on and a never-trained-on world (SEEDS=3: three of each), 16 Euler
# steps, CFG 1 unless CFG= is set; its teacher-forced one-step, the IDM on its frames; the
# default student runs beside it as the eval needs one. Print the row with
# `python scripts/levers_table.py --teacher "name=OUT"`.
#
#     scripts/teacher_eval.sh TEACHER OUT [CORE]
set -euo pipefail
teacher=${1:?usage: scripts/teacher_eval.sh TEACHER OUT [CORE]}
out=${2:?usage: scripts/teacher_eval.sh TEACHER OUT [CORE]}
core=${3:-0}
export OMP_NUM_THREADS=1
taskset -c "$core" "${WM:-.venv/bin/wm}" eval --checkpoint default --teacher "$teacher" --teacher-cfg "${CFG:-1}" \
  --teacher-steps 16 --teacher-probe-frames 17 --probe-frames 17 --probes stand,walk,turn \
  --probe-worlds "${SEEDS:-1}" --seeds "${SEEDS:-1}" --rollouts 1 --horizons 1,4,16 --stability-frames 100 \
  --response-frames 0 --one-step-windows 8 --video-seconds 0 \
  --idm assets/default/eval/idm --threads 1 --out "$out"

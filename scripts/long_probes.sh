#!/usr/bin/env bash
# Standing and walking for 1,001 frames, in a trained-on world and one never trained on,
# without the rest of the card's eval: what a long walk turns into, in about 4 minutes.
#
#     scripts/long_probes.sh CHECKPOINT OUT [CORE]
#
# OUT gets `wm eval`'s strips (strip_seen_walk_student.png: frames 0 to 1,000) and report.
set -euo pipefail
C=${1:?checkpoint folder, e.g. runs/wm}
OUT=${2:?output folder}
CORE=${3:-0}
WM=${WM:-.venv/bin/wm}
export OMP_NUM_THREADS=1
taskset -c "$CORE" "$WM" eval --checkpoint "$C" --idm assets/default/eval/idm --seeds 1 \
    --rollouts 1 --horizons 1,4,16,64 --probes stand,walk --probe-frames 1001 \
    --stability-frames 2 --response-frames 0 --one-step-windows 1 --threads 1 --out "$OUT"

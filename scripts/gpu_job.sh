#!/usr/bin/env bash
# The default's whole training recipe (docs/train-your-own.md) as one command for a GPU
# machine (one GPU, 16 cores, no registry access, about 10 minutes a command): play data
# from the default's worlds on every core, latents from the shipped tokenizer, a teacher
# that sees the previous frame moved by the action, ODE pairs for a 2-step student, its
# initialisation, DMD with the regression term on rollouts of 12 and then 24 frames, and a
# servable folder with the channel-mean guard. What must come back (teacher, initialised
# student, servable student: the DMD weights, and logs) is one tar split into parts of at
# most 15 MiB under $OUT, with its sha256.
#
#   OUT=/path/out scripts/gpu_job.sh                        # on the GPU machine
#   SCALE=rehearsal OUT=/tmp/out scripts/gpu_job.sh         # on a CPU: same steps, seconds each
#   scripts/gpu_job.sh --unpack /path/out runs/gpu          # back here: check and unpack
#
# Every stage is a `wm` command with a minute budget; each resumes when rerun with the same
# WORK folder, so a command cut off at its limit loses only the stage it was in. Set
# MINUTES_* to change a stage's budget; the defaults sum to 7.5 minutes of training, about
# 9.5 with the data and the start-ups.
set -euo pipefail

if [[ "${1:-}" == "--unpack" ]]; then
    src=${2:?folder the parts came back in}; dest=${3:?folder to unpack into}
    (cd "$src" && sha256sum --quiet -c job.sha256) ||
        { echo "gpu_job: the parts do not match job.sha256" >&2; exit 1; }
    mkdir -p "$dest"
    cat "$src"/job.tar.part* | tar -x -C "$dest"
    echo "unpacked into $dest: $(ls "$dest" | tr '\n' ' ')"
    exit 0
fi

OUT=${OUT:?set OUT to the folder that comes back}
SCALE=${SCALE:-gpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/wm-job}
PY=${PY:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TOKENIZER="$ROOT/assets/default/tokenizer"

case "$SCALE" in
    gpu)  # sizes for one H200: cuda, big batches, data from 16 processes
        DEVICE=cuda; WORKERS=16; LOADERS=4; EPISODES=400; FRAMES=500
        TEACHER_BATCH=128; TEACHER_STEPS=8000; ODE_CLIPS=1024; ODE_BATCH=128
        INIT_BATCH=64; INIT_STEPS=3000; DMD_BATCH=16; DMD_STEPS=600
        : "${MINUTES_TEACHER:=3.5}" "${MINUTES_ODE:=1}" "${MINUTES_INIT:=1}" "${MINUTES_DMD:=1}"
        : "${MINUTES_DMD24:=1}";;
    rehearsal)  # the same commands on a CPU, tiny budgets: checks the job, not the model
        DEVICE=cpu; WORKERS=2; LOADERS=1; EPISODES=4; FRAMES=60
        TEACHER_BATCH=4; TEACHER_STEPS=20; ODE_CLIPS=4; ODE_BATCH=2
        INIT_BATCH=2; INIT_STEPS=4; DMD_BATCH=1; DMD_STEPS=2
        : "${MINUTES_TEACHER:=0.3}" "${MINUTES_ODE:=0.5}" "${MINUTES_INIT:=0.3}" "${MINUTES_DMD:=1}"
        : "${MINUTES_DMD24:=1}";;
    *) echo "gpu_job: SCALE must be gpu or rehearsal, got $SCALE" >&2; exit 2;;
esac

wm() { "$PY" -m worldmodel.cli "$@"; }
mkdir -p "$WORK" "$OUT"
LOG="$WORK/job.log"
stage() { echo "$(date +%T) $*" | tee -a "$LOG"; }
START=$(date +%s)

stage "start: scale $SCALE, device $DEVICE, work $WORK"
"$PY" - <<'EOF' | tee -a "$LOG"
import torch
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF

stage "data: $EPISODES episodes of $FRAMES frames, worlds 6-9, $WORKERS processes"
wm collect --out "$WORK/data" --episodes "$EPISODES" --frames "$FRAMES" --worlds 6-9 \
    --policy play --policy-seed 0 --workers "$WORKERS" > "$WORK/collect.log" 2>&1

stage "latents"
wm cache-latents --data "$WORK/data" --tokenizer "$TOKENIZER" --device "$DEVICE" \
    --batch 1024 > "$WORK/latents.log" 2>&1

stage "teacher: $MINUTES_TEACHER min"
wm train teacher --model cpu-16 --data "$WORK/data" --tokenizer "$TOKENIZER" \
    --out "$WORK/teacher" --batch-size "$TEACHER_BATCH" --steps "$TEACHER_STEPS" \
    --prev-frame --prev-warp --max-minutes "$MINUTES_TEACHER" --workers "$LOADERS" \
    --device "$DEVICE" > "$WORK/teacher.log" 2>&1

stage "ODE pairs: $MINUTES_ODE min"
wm distill ode --preset cpu --data "$WORK/data" --teacher "$WORK/teacher/model" \
    --out "$WORK/ode" --clips "$ODE_CLIPS" --batch-size "$ODE_BATCH" --student-steps 2 \
    --teacher-steps 32 --max-minutes "$MINUTES_ODE" --device "$DEVICE" > "$WORK/ode.log" 2>&1

stage "student init: $MINUTES_INIT min"
wm distill init --preset cpu --pairs "$WORK/ode" --teacher "$WORK/teacher/model" \
    --out "$WORK/student-init" --batch-size "$INIT_BATCH" --steps "$INIT_STEPS" \
    --max-minutes "$MINUTES_INIT" --device "$DEVICE" > "$WORK/init.log" 2>&1

stage "DMD: $MINUTES_DMD min"
wm distill dmd --preset cpu --data "$WORK/data" --teacher "$WORK/teacher/model" \
    --student "$WORK/student-init/model" --out "$WORK/student-dmd" --teacher-cfg 3 \
    --real-weight 2 --rollout-frames 12 --batch-size "$DMD_BATCH" --steps "$DMD_STEPS" \
    --max-minutes "$MINUTES_DMD" --device "$DEVICE" > "$WORK/dmd.log" 2>&1

stage "DMD on rollouts of 24 frames: $MINUTES_DMD24 min"
wm distill dmd --preset cpu --data "$WORK/data" --teacher "$WORK/teacher/model" \
    --student "$WORK/student-dmd/model" --out "$WORK/student-dmd24" --teacher-cfg 3 \
    --real-weight 2 --rollout-frames 24 --batch-size "$DMD_BATCH" --steps "$DMD_STEPS" \
    --max-minutes "$MINUTES_DMD24" --device "$DEVICE" > "$WORK/dmd24.log" 2>&1

stage "pack"
wm distill pack --student "$WORK/student-dmd24/model" --tokenizer "$TOKENIZER" --out "$WORK/wm" \
    --worlds 6,7,8,9 --sinks 4 --window 2 --mean-bounds "$WORK/data" > "$WORK/pack.log" 2>&1

stage "done in $(( $(date +%s) - START )) s; packing the parts"
cd "$WORK"
files=()
for f in teacher/model.* student-init/model.* wm/student.* \
         {teacher,student-init,student-dmd,student-dmd24}/{log.jsonl,train.json} ./*.log; do
    [[ -e "$f" ]] && files+=("$f")  # a stage too short to log has no log.jsonl
done
tar -cf job.tar "${files[@]}"
rm -f "$OUT"/job.tar.part*
split -b 15M -d job.tar "$OUT/job.tar.part"
(cd "$OUT" && sha256sum job.tar.part* > job.sha256)
cp "$LOG" "$OUT/job.log"
ls -l "$OUT"

"""scripts/gpu_job.sh, the whole recipe as one command for a GPU machine: its CPU
rehearsal runs every stage, the parts it leaves fit what such a machine sends back, and
they unpack here into a student that plays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldmodel.actions import Action
from worldmodel.game import Game
from worldmodel.session import ASSETS, WorldSession

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_job.sh"
MiB = 2**20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ASSETS / "default" / "tokenizer.json").is_file(),
                       reason="the job uses the shipped tokenizer"),
]


def test_the_rehearsal_runs_every_stage_and_unpacks_into_a_student(tmp_path):
    out, work, back = tmp_path / "out", tmp_path / "work", tmp_path / "back"
    env = {**os.environ, "SCALE": "rehearsal", "OUT": str(out), "WORK": str(work),
           "PY": sys.executable, "OMP_NUM_THREADS": "1",
           "MINUTES_TEACHER": "0.1", "MINUTES_INIT": "0.1", "MINUTES_DMD": "0.3",
           "MINUTES_DMD24": "0.3"}
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for stage in ("data", "latents", "teacher", "ODE pairs", "student init", "DMD",
                  "rollouts of 24 frames", "pack"):
        assert stage in (out / "job.log").read_text()
    # what a device machine sends back: at most 8 files of at most 16 MiB, 64 MiB in all
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.stat().st_size <= 15 * MiB for f in files)
    assert sum(f.stat().st_size for f in files) <= 64 * MiB

    unpack = subprocess.run(["bash", str(SCRIPT), "--unpack", str(out), str(back)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    for stem in ("teacher/model", "student-init/model", "wm/student"):
        assert (back / f"{stem}.safetensors").is_file() and (back / f"{stem}.json").is_file()
    meta = json.loads((back / "wm" / "student.json").read_text())
    assert meta["sampler"]["steps"] == 2 and meta["worlds"] == [6, 7, 8, 9]
    assert meta["model"]["prev_warp"] and len(meta["sampler"]["mean_bounds"][0]) == 8
    assert meta["distill"]["student"].endswith("student-dmd24/model")
    for name in ("tokenizer.json", "tokenizer.safetensors"):  # the job ships the weights only
        shutil.copy(ASSETS / "default" / name, back / "wm" / name)
    session = WorldSession.from_checkpoint(back / "wm")
    game = Game(6, session.size)
    session.reset(np.stack(
        [game.reset()] + [game.step(Action()) for _ in range(session.context_length - 1)]))
    assert session.step(Action(forward=True)).shape == (session.size, session.size, 3)

    part = sorted(out.glob("job.tar.part*"))[0]
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF  # one byte off: refused, and nothing unpacked
    part.write_bytes(bytes(data))
    again = subprocess.run(["bash", str(SCRIPT), "--unpack", str(out), str(tmp_path / "bad")],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "do not match" in again.stderr
    assert not (tmp_path / "bad").exists()

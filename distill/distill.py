"""`wm distill ode|init|dmd|pack`: distil the teacher into the few-step causal student.

    ode    ODE pairs: the teacher's many-step trajectories from real context   (distill.ode)
    init   the student (teacher weights, causal, KV cache) regresses them      (distill.student_init)
    dmd    DMD with Self-Forcing rollouts: teacher = real score, critic = fake (distill.dmd)
    pack   tokenizer + student + sampler settings -> a servable checkpoint folder

Every stage takes `--preset tiny|cpu|gpu` (default cpu) and any field of its config as a
flag; flags win over the preset. Stages are resumable: rerun the same command to continue,
or to extend with a larger --steps / --clips. `--max-minutes` bounds each run; progress bars
on the terminal, log.jsonl and loss.png in the output folder.

tiny (seconds on CPU; tests/test_distill.py runs it on random weights):

    wm train teacher --data data/tiny --tokenizer runs/tok-tiny/model --out runs/t-tiny \\
                     --model tiny --steps 20      # after tokenizer and cache-latents, tiny
    wm distill ode  --preset tiny     # --data data/tiny --teacher runs/t-tiny/model --out runs/ode-tiny
    wm distill init --preset tiny     # --pairs runs/ode-tiny --out runs/init-tiny
    wm distill dmd  --preset tiny     # --student runs/init-tiny/model --out runs/dmd-tiny
    wm distill pack --student runs/dmd-tiny/model --tokenizer runs/tok-tiny/model --out runs/wm-tiny

cpu (64x64 frames; on 2 cores init about 20 min and dmd about 40 min, ode pairs about an hour):

    wm distill ode  --preset cpu --data data/train --teacher runs/teacher/model --out runs/ode
    wm distill init --preset cpu --pairs runs/ode --teacher runs/teacher/model --out runs/student-init
    wm distill dmd  --preset cpu --data data/train --teacher runs/teacher/model \\
                    --student runs/student-init/model --out runs/student-dmd
    wm distill pack --student runs/student-dmd/model --tokenizer runs/tokenizer/model \\
                    --out runs/world-model
    wm play --checkpoint runs/world-model

Under torchrun each stage runs on every rank (`torchrun --nproc_per_node N -m distill.distill
init ...`): ode shares out its shards, init and dmd average gradients.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distill import dmd, ode, student_init
from distill.cache_latents import latent_mean_range
from distill.common import teardown_distributed
from worldmodel import checkpoint, flags
from worldmodel.checkpoint import load_student, load_tokenizer
from worldmodel.flags import add_config_arguments
from worldmodel.session import save_world_model


@dataclass
class PackConfig:
    student: str = "runs/student-dmd/model"  # or runs/student-init/model
    tokenizer: str = "runs/tokenizer/model"
    out: str = "runs/world-model"
    worlds: str | None = None  # the game seeds trained on, "0-199" or "3,5,8"; None: any world
    # the sampler's sinks and window at inference, when not the student's own (-1: its own)
    sinks: int = -1
    window: int = -1
    # a dataset whose latents were cached with this tokenizer: the range of its frames'
    # channel means becomes the sampler's mean_bounds (see worldmodel.sampling.StudentConfig)
    mean_bounds: str | None = None


def parse_worlds(text: str | None) -> list[int] | None:
    """"0-3,7" -> [0, 1, 2, 3, 7]; None or "" -> None (any procedural world)."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def pack(cfg: PackConfig) -> Path:
    """Write a servable checkpoint folder (WorldSession.from_checkpoint loads it)."""
    tok, _ = load_tokenizer(cfg.tokenizer)
    student, s_meta = load_student(cfg.student)
    meta = s_meta.sidecar
    known = s_meta.tokenizer_hash  # recorded when the teacher was trained
    if known and known != checkpoint.file_hash(f"{cfg.tokenizer}.safetensors"):
        raise ValueError(f"{cfg.tokenizer} is not the tokenizer the teacher's latents came from")
    latent = (tok.cfg.latent_channels, tok.cfg.latent_size)
    if latent != (student.cfg.latent_channels, student.cfg.latent_size):
        raise ValueError(f"tokenizer latents {latent} (channels, size) do not fit the student's "
                         f"{(student.cfg.latent_channels, student.cfg.latent_size)}")
    sampler = s_meta.sampler
    if cfg.sinks >= 0 or cfg.window >= 0:
        sampler = replace(sampler, sinks=cfg.sinks if cfg.sinks >= 0 else sampler.sinks,
                          window=cfg.window if cfg.window >= 0 else sampler.window)
        if sampler.window < 1:
            raise ValueError(f"--window must be at least 1 (the new frame), not {sampler.window}")
    if cfg.mean_bounds:
        sampler = replace(sampler, mean_bounds=latent_mean_range(cfg.mean_bounds, cfg.tokenizer))
    # a training run's student, or a packed folder's (its run's facts kept, its worlds too
    # unless --worlds names others)
    run = meta.get("distill", meta)
    worlds = parse_worlds(cfg.worlds) if cfg.worlds else meta.get("worlds")
    folder = save_world_model(cfg.out, tok, student, sampler, {
        "distill": {"stage": run["stage"], "step": run["step"], "teacher": run["teacher"],
                    "student": cfg.student, "tokenizer": cfg.tokenizer},
        "worlds": worlds})
    print(f"world model written to {folder} (student from {cfg.student}, {run['stage']} "
          f"step {run['step']}); try: wm play --checkpoint {folder}")
    return folder


# name -> (config class, presets, what runs it)
STAGES: dict[str, tuple[type, dict[str, Any], Callable[[Any], Any]]] = {
    "ode": (ode.OdeConfig, ode.PRESETS, ode.generate),
    "init": (student_init.InitConfig, student_init.PRESETS, student_init.train),
    "dmd": (dmd.DmdConfig, dmd.PRESETS, dmd.train),
    "pack": (PackConfig, {}, pack),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", required=True)
    for name, (cls, presets, run) in STAGES.items():
        sp = sub.add_parser(name, help=(run.__doc__ or "").strip().splitlines()[0])
        add_config_arguments(sp, presets["cpu"] if presets else cls(), presets=presets or None)


def config_from_args(args: argparse.Namespace) -> Any:
    cls, presets, _ = STAGES[args.stage]
    return flags.config_from_args(cls, args, presets=presets or None)


def main(args: argparse.Namespace) -> int:
    try:
        STAGES[args.stage][2](config_from_args(args))
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m distill.distill")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))

"""ODE pairs: many-step teacher trajectories that the student's initialisation regresses.

    wm distill ode --preset cpu --data data/train --teacher runs/teacher/model --out runs/ode

From the first `context` latents of a real clip and the clip's real actions, the teacher
(with classifier-free guidance on actions) integrates the flow ODE from noise for every later
frame. Each generated frame is kept at the student's K noise levels, which lie on the Euler
grid because `teacher_steps` is a multiple of K, together with the ODE end point x0. Two targets:

  autoregressive  frame by frame as `teacher_rollout` samples: the new frame is the last of the
                  clip and the frames before it are clean (the real context, then the frame's
                  own generated predecessors), so no frame depends on later ones. This is
                  the student's situation at play time, hence the default.
  joint           all generated frames of a clip denoised together, the CausVid way; with a
                  bidirectional teacher a frame's trajectory then depends on later frames.

A folder of pairs holds shards `shard_NNNNNN.safetensors`, each with a JSON sidecar, with
    context (S, Fc, C, h, w)    the real latents the generation starts from
    actions (S, F, A)           the real actions of the whole clip (actions[:, i] led into frame i)
    levels  (S, N, K, C, h, w)  each generated frame at the K student levels, noisiest first
    target  (S, N, C, h, w)     the ODE end points
    real    (S, N, C, h, w)     the real latents of those frames, for reference
and `index.json`, which lists them. Shard i draws its clips and noise from (seed, i), so a
stopped run resumes at the next missing shard. Under torchrun the ranks share out the shards.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from distill.common import Run, plot_log, print0, setup_distributed
from distill.data import PAIR_KEYS, ClipDataset
from worldmodel import checkpoint, flow
from worldmodel.checkpoint import load_teacher
from worldmodel.episode import write_json_atomic
from worldmodel.model import DiT
from worldmodel.sampling import StudentConfig, TeacherConfig, teacher_denoise, teacher_rollout

TARGETS = ("autoregressive", "joint")


@dataclass
class OdeConfig:
    data: str = "data/train"
    teacher: str = "runs/teacher/model"
    out: str = "runs/ode"
    target: str = "autoregressive"
    clips: int = 1024  # clips in the folder when done (a rerun with more adds shards)
    context: int = StudentConfig.context_length  # real frames each clip starts from
    clip_len: int = 8  # context + generated frames
    teacher_steps: int = TeacherConfig.steps  # Euler steps, a multiple of student_steps
    # the Euler grid's shift: the student's, so that its levels lie on the grid
    shift: float = StudentConfig.shift
    student_steps: int = StudentConfig.steps
    teacher_cfg: float = TeacherConfig.cfg_scale
    batch_size: int = 16
    shard_size: int = 256
    max_minutes: float = 600.0
    seed: int = 0
    device: str = "auto"


PRESETS: dict[str, OdeConfig] = {
    "tiny": OdeConfig(data="data/tiny", teacher="runs/t-tiny/model", out="runs/ode-tiny",
                      clips=8, context=2, clip_len=4, teacher_steps=8, batch_size=4, shard_size=4,
                      max_minutes=5.0),
    "cpu": OdeConfig(clips=512, batch_size=8, shard_size=64, max_minutes=90.0),
    "gpu": OdeConfig(clips=8192, batch_size=64, shard_size=512, max_minutes=480.0),
}


@torch.no_grad()
def ode_pairs(teacher: DiT, context: torch.Tensor, context_actions: torch.Tensor,
              actions: torch.Tensor, cfg: TeacherConfig, *, target: str = "autoregressive",
              levels: int = StudentConfig.steps, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher ODE trajectories of the N frames that follow a real context.

    context (B, Fc, C, h, w) clean latents led into by context_actions (B, Fc, A); actions
    (B, N, A) for the frames to generate. cfg.clip_len is the most frames the teacher sees at
    once (the autoregressive target keeps the last clip_len - 1 frames clean). Noise is drawn
    one frame at a time from `generator`, in the order `teacher_rollout` draws it, for both
    targets. Returns the frames at the times `flow.ode_timesteps(steps, shift)[::steps //
    levels]` (the student's levels), (B, N, levels, C, h, w), and the ODE end points
    (B, N, C, h, w).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if cfg.steps % levels:
        raise ValueError(f"steps ({cfg.steps}) must be a multiple of the student's {levels} levels")
    every = cfg.steps // levels
    if target == "autoregressive":
        end, path = teacher_rollout(teacher, context, context_actions, actions, cfg, generator,
                                    trajectory=True)
        return path[:, :, :-1:every], end
    B, N = actions.shape[:2]
    noise = torch.cat([torch.randn((B, 1, *context.shape[2:]), generator=generator,
                                   device=context.device, dtype=context.dtype) for _ in range(N)], 1)
    end, path = teacher_denoise(teacher, context, torch.cat([context_actions, actions], 1), noise,
                                cfg, trajectory=True)
    return path[:-1:every].movedim(0, 2), end


# ---------------------------------------------------------------------------------------------
# A folder of pairs


def _sidecars(out: Path) -> list[tuple[Path, dict]]:
    """Finished shards (the sidecar is written after the tensors) in order."""
    return [(p, json.loads(p.read_text())) for p in sorted(out.glob("shard_*.json"))]


def write_index(out: Path, settings: dict, extra: dict) -> dict:
    shards = [{"file": p.with_suffix(".safetensors").name, "clips": m["clips"]}
              for p, m in _sidecars(out)]
    index = {"format": 1, "clips": sum(s["clips"] for s in shards), "shards": shards,
             "settings": settings, **extra}
    write_json_atomic(out / "index.json", index)
    return index


# ---------------------------------------------------------------------------------------------
# The stage


def generate(cfg: OdeConfig) -> Path:
    """Write ODE pairs from the teacher (resumable, time-budgeted)."""
    if cfg.target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {cfg.target!r}")
    if not 0 < cfg.context < cfg.clip_len:
        raise ValueError(f"need 0 < context < clip_len, got {cfg.context}, {cfg.clip_len}")
    if cfg.teacher_steps % cfg.student_steps:
        raise ValueError(f"teacher_steps ({cfg.teacher_steps}) must be a multiple of "
                         f"{cfg.student_steps}")
    d = setup_distributed(cfg.device)
    teacher, meta = load_teacher(cfg.teacher, d.device)
    if cfg.target == "joint" and cfg.clip_len > meta.clip_len:
        raise ValueError(f"joint targets denoise a whole clip, and the teacher was trained on "
                         f"clips of {meta.clip_len} frames, not {cfg.clip_len}")
    sampling = TeacherConfig(steps=cfg.teacher_steps, cfg_scale=cfg.teacher_cfg, shift=cfg.shift,
                             clip_len=meta.clip_len, mode=meta.mode)
    every = cfg.teacher_steps // cfg.student_steps
    times = flow.ode_timesteps(cfg.teacher_steps, cfg.shift)[:-1:every]
    # the sidecars' keys predate the flag names; kept so that existing folders resume
    settings = {"teacher_hash": checkpoint.file_hash(f"{cfg.teacher}.safetensors"),
                "mode": meta.mode, "target": cfg.target, "steps": cfg.teacher_steps,
                "shift": cfg.shift, "levels": cfg.student_steps, "cfg_scale": cfg.teacher_cfg,
                "context": cfg.context, "clip_len": cfg.clip_len}
    extra = {"teacher": cfg.teacher, "model": asdict(meta.model), "times": times.tolist(),
             "frames": cfg.clip_len - cfg.context}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    finished = _sidecars(out)
    for p, m in finished:
        if m["settings"] != settings:
            raise ValueError(f"{p} was made with other settings ({m['settings']}); "
                             f"use a new --out for {settings}")
    done = sum(m["clips"] for _, m in finished)
    first = int(finished[-1][0].stem.split("_")[1]) + 1 if finished else 0
    todo = max(0, cfg.clips - done)
    sizes = [min(cfg.shard_size, todo - i) for i in range(0, todo, cfg.shard_size)]
    mine = [(first + i, n) for i, n in enumerate(sizes)][d.rank::d.world]

    ds = ClipDataset(cfg.data, clip_len=cfg.clip_len, seed=cfg.seed, latents=True)
    run = Run(out, "ode", asdict(cfg), d)
    print0(f"ODE pairs ({cfg.target}, {cfg.teacher_steps} steps, CFG {cfg.teacher_cfg}) from the "
           f"{meta.mode} teacher {cfg.teacher}: {done} of {cfg.clips} clips done, "
           f"levels t = {[round(t, 3) for t in times.tolist()]}")
    began = time.monotonic()
    bar = tqdm(total=cfg.clips, initial=done, desc="ode", unit="clip", disable=not d.main,
               dynamic_ncols=True)
    out_of_time = False
    for shard, size in mine:
        rng = np.random.default_rng([cfg.seed, shard])
        gen = torch.Generator(d.device).manual_seed(int(rng.integers(2**62)))
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in PAIR_KEYS}
        for s in range(0, size, cfg.batch_size):
            clips = [ds.sample(rng) for _ in range(min(cfg.batch_size, size - s))]
            lat = torch.stack([c["latents"] for c in clips]).to(d.device)  # (B, F, C, h, w)
            act = torch.stack([c["actions"] for c in clips]).to(d.device)  # (B, F, A)
            Fc = cfg.context
            levels, end = ode_pairs(teacher, lat[:, :Fc], act[:, :Fc], act[:, Fc:], sampling,
                                    target=cfg.target, levels=cfg.student_steps, generator=gen)
            for k, v in zip(PAIR_KEYS, (lat[:, :Fc], act, levels, end, lat[:, Fc:])):
                parts[k].append(v.cpu())
            bar.update(len(clips))
            out_of_time = time.monotonic() - began > cfg.max_minutes * 60
            if out_of_time:
                break  # keep the clips made so far as a shorter shard
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        n = len(tensors["target"])
        checkpoint.save(out / f"shard_{shard:06d}", tensors, {"clips": n, "settings": settings})
        run.log({"step": shard, "clips": n, "seconds": round(time.monotonic() - began, 1),
                 # how far the teacher's continuation lands from the real one
                 "target_real_loss": (tensors["target"] - tensors["real"]).pow(2).mean().item()})
        if d.main:
            write_index(out, settings, extra)
        if out_of_time:
            print0(f"\ntime budget of {cfg.max_minutes} min reached; rerun to continue")
            break
    bar.close()
    if dist.is_initialized():
        dist.barrier()
    if d.main:
        index = write_index(out, settings, extra)
        plot_log(run.log_path, out / "loss.png", title=f"ode: {out.name}")
        print0(f"{index['clips']} of {cfg.clips} clips of ODE pairs in {out}")
    return out

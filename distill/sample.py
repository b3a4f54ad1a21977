"""`wm sample`: roll a teacher out from real context under real actions, next to the game.

    wm sample --teacher runs/teacher/model --tokenizer runs/tokenizer/model \\
              --seed 1000000 --context 4 --frames 32 --teacher-steps 32 --teacher-cfg 1.5 \\
              --out sample.mp4

The game plays world `--seed` under a scripted explorer (or `--script`, a comma list such
as "forward:20,yaw=1:10,pitch=-0.5:5,idle:5"); the first `--context` frames are given to
the model, which then dreams the rest under the same actions. The video shows the game on
the left and the dream on the right; per-frame PSNR against the game is printed and saved
next to the video as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.collect import Explorer
from worldmodel.actions import Action, parse_script, stack
from worldmodel.checkpoint import TeacherMeta, load_teacher, load_tokenizer
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.game import Game
from worldmodel.metrics import psnr
from worldmodel.model import DiT
from worldmodel.sampling import TeacherConfig, teacher_rollout
from worldmodel.tokenizer import Tokenizer, frames_to_tensor, tensor_to_frames
from worldmodel.video import export


@dataclass
class SampleConfig:
    teacher: str = "runs/teacher/model"
    tokenizer: str = "runs/tokenizer/model"
    seed: int = 1_000_000
    context: int = 4
    frames: int = 32
    teacher_steps: int = TeacherConfig.steps
    teacher_cfg: float = TeacherConfig.cfg_scale
    script: str | None = None
    out: str = "sample.mp4"
    device: str = "cpu"


def play_game(seed: int, size: int, n: int, script: list[Action] | None = None):
    """n frames of the real game and the actions that led into them (action 0 = none)."""
    game = Game(seed, size)
    frames, actions = [game.reset()], [Action()]
    player = Explorer(seed)
    for i in range(n - 1):
        a = script[i % len(script)] if script else player.act(game)
        frames.append(game.step(a))
        actions.append(a)
    return np.stack(frames), actions


@torch.no_grad()
def dream_teacher(model: DiT, meta: TeacherMeta, tok: Tokenizer, frames: np.ndarray,
                  actions: list[Action], context: int, steps: int, cfg_scale: float,
                  seed: int = 0) -> np.ndarray:
    """Frames after the first `context`, dreamt by the teacher: uint8 [n - context, S, S, 3]."""
    dev = next(model.parameters()).device
    z = tok.encode(frames_to_tensor(torch.from_numpy(frames[:context])).to(dev))[None]
    a = torch.from_numpy(stack(actions))[None].to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = teacher_rollout(model, z, a[:, :context], a[:, context:], meta.sampling(steps, cfg_scale),
                          generator=g)
    return tensor_to_frames(tok.decode(out[0]).cpu()).numpy()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SampleConfig(), helps={
        "seed": "world seed (held-out by default)", "frames": "frames to dream",
        "teacher_steps": "Euler steps per frame", "teacher_cfg": "guidance scale on actions",
        "script": "scripted actions instead of the explorer", "out": ".mp4 or .gif"})


def main(args: argparse.Namespace) -> int:
    args = config_from_args(SampleConfig, args)
    tok, _ = load_tokenizer(args.tokenizer, args.device)
    model, meta = load_teacher(args.teacher, args.device)
    script = parse_script(args.script) if args.script else None
    n = args.context + args.frames
    frames, actions = play_game(args.seed, tok.cfg.frame_size, n, script)
    dream = dream_teacher(model, meta, tok, frames, actions, args.context, args.teacher_steps,
                          args.teacher_cfg)
    real = frames[args.context:]
    scores = psnr(real, dream)
    side = np.concatenate([frames, np.concatenate([frames[:args.context], dream])], axis=2)
    out = export(side, args.out, fps=Game.fps)
    report = {"seed": args.seed, "context": args.context, "steps": args.teacher_steps,
              "cfg": args.teacher_cfg,
              "psnr": [round(float(x), 3) for x in scores],
              "psnr_repeat_last": [round(float(x), 3) for x in
                                   psnr(real, np.repeat(frames[args.context - 1:args.context],
                                                        len(real), 0))]}
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    for h in (1, 4, 16):
        if h <= len(scores):
            print(f"PSNR {h:>2} frame(s) ahead: {scores[h - 1]:.2f} dB "
                  f"(repeat last frame: {report['psnr_repeat_last'][h - 1]:.2f} dB)")
    print(f"wrote {out} (game left, dream right)")
    return 0

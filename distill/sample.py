"""`wm sample`: roll a teacher out from real context under real actions, next to the game.

    wm sample --teacher runs/teacher/model --tokenizer runs/tokenizer/model \\
              --seed 1000000 --context 4 --frames 32 --steps 32 --cfg 1.5 --out sample.mp4

The game plays world `--seed` under a scripted explorer (or `--script`, a comma list such
as "forward:20,yaw=1:10,pitch=-0.5:5,idle:5"); the first `--context` frames are given to
the model, which then dreams the rest under the same actions. The video shows the game on
the left and the dream on the right; per-frame PSNR against the game is printed and saved
next to the video as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distill.collect import Explorer
from worldmodel import checkpoint
from worldmodel.actions import Action, parse_script, stack
from worldmodel.game import Game
from worldmodel.metrics import psnr
from worldmodel.model import DiT, DiTConfig
from worldmodel.sampling import teacher_rollout
from worldmodel.tokenizer import Tokenizer, frames_to_tensor, load_tokenizer, tensor_to_frames
from worldmodel.video import export


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


def load_teacher(stem, device="cpu") -> tuple[DiT, dict]:
    tensors, meta = checkpoint.load(stem, device)
    if meta.get("kind") not in ("teacher", "causal_teacher"):
        raise ValueError(f"{stem} is a {meta.get('kind')!r} checkpoint, not a teacher")
    model = DiT(DiTConfig(**meta["model"]))
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


@torch.no_grad()
def dream_teacher(model: DiT, meta: dict, tok: Tokenizer, frames: np.ndarray,
                  actions: list[Action], context: int, steps: int, cfg_scale: float,
                  seed: int = 0) -> np.ndarray:
    """Frames after the first `context`, dreamt by the teacher: uint8 [n - context, S, S, 3]."""
    dev = next(model.parameters()).device
    z = tok.encode(frames_to_tensor(torch.from_numpy(frames[:context])).to(dev))[None]
    a = torch.from_numpy(stack(actions))[None].to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = teacher_rollout(model, z, a[:, :context], a[:, context:], mode=meta["mode"],
                          clip_len=meta["clip_len"], steps=steps, shift=meta["shift"],
                          cfg_scale=cfg_scale, generator=g)
    return tensor_to_frames(tok.decode(out[0]).cpu()).numpy()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint stem (runs/teacher/model)")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint stem")
    p.add_argument("--seed", type=int, default=1_000_000, help="world seed (held-out by default)")
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--frames", type=int, default=32, help="frames to dream")
    p.add_argument("--steps", type=int, default=32, help="Euler steps per frame")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance scale on actions")
    p.add_argument("--script", default=None, help="scripted actions instead of the explorer")
    p.add_argument("--out", default="sample.mp4", help=".mp4 or .gif")
    p.add_argument("--device", default="cpu")


def main(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer, args.device)
    model, meta = load_teacher(args.teacher, args.device)
    script = parse_script(args.script) if args.script else None
    n = args.context + args.frames
    frames, actions = play_game(args.seed, tok.cfg.frame_size, n, script)
    dream = dream_teacher(model, meta, tok, frames, actions, args.context, args.steps, args.cfg)
    real = frames[args.context:]
    scores = psnr(real, dream)
    side = np.concatenate([frames, np.concatenate([frames[:args.context], dream])], axis=2)
    out = export(side, args.out, fps=20)
    report = {"seed": args.seed, "context": args.context, "steps": args.steps, "cfg": args.cfg,
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

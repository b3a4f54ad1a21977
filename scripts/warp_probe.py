"""Print what a --prev-warp network learnt: the zoom and shift its warp gives the previous
frame for each single input, in latent cells (and as a zoom factor).

    python scripts/warp_probe.py runs/teacher/model [more checkpoints ...]
"""

from __future__ import annotations

import argparse
import math

import torch

from worldmodel.actions import Action
from worldmodel.checkpoint import load_teacher
from worldmodel.model import DiT

INPUTS = {
    "none": Action(), "forward": Action(forward=True), "back": Action(back=True),
    "left": Action(left=True), "right": Action(right=True),
    "sprint forward": Action(forward=True, sprint=True),
    "yaw +1": Action(yaw=1.0), "yaw -1": Action(yaw=-1.0), "pitch +1": Action(pitch=1.0),
}


def learnt_warp(net: DiT) -> dict[str, tuple[float, float, float]]:
    """Per input of INPUTS: (zoom factor, shift x, shift y in latent cells) of the warp."""
    half = net.cfg.latent_size / 2  # grid units -> cells
    out = {}
    with torch.no_grad():
        for name, a in INPUTS.items():
            z, sx, sy = net.warp(torch.from_numpy(a.to_vector()).to(net.warp.weight)).tolist()
            out[name] = (math.exp(z), sx * half, sy * half)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="teacher checkpoint stems")
    for stem in p.parse_args().checkpoints:
        net, meta = load_teacher(stem)
        if not meta.model.prev_warp:
            raise SystemExit(f"{stem} has no prev_warp")
        print(f"{stem}: input | zoom | shift x, y (cells, + samples right / down)")
        for name, (zoom, dx, dy) in learnt_warp(net).items():
            print(f"  {name:15s} | {zoom:.4f} | {dx:+.3f}, {dy:+.3f}")


if __name__ == "__main__":
    main()

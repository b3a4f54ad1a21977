"""Per-channel spatial std and 3x3 high-pass energy of a student's standing rollout, beside the
play data's per-frame ranges: does a drifting picture leave the statistics of real latents?

    python scripts/latent_stats.py STUDENT SINKS WINDOW [DATA]

STUDENT is a student checkpoint stem (e.g. assets/default/student); SINKS and WINDOW replace
its sampler's; DATA (runs/data-play/train) must hold latents cached with its tokenizer. The
rollout starts from 4 real frames of one episode and runs 200 frames with no input.
"""

from __future__ import annotations

import glob
import sys
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.checkpoint import load_student
from worldmodel.sampling import StudentSampler


def stats(z) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C, h, w) latents -> per-frame, per-channel spatial std and high-pass energy."""
    z = torch.as_tensor(z).float()
    high = z - F.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    return z.std(dim=(-2, -1)), high.pow(2).mean(dim=(-2, -1))


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    episodes = sorted(glob.glob(f"{argv[3] if len(argv) > 3 else 'runs/data-play/train'}/ep_*/latents.npy"))
    if not episodes:
        raise SystemExit("no cached latents: run `wm cache-latents` on the data first")
    std, high = (torch.cat(x) for x in zip(*(stats(np.load(p)[::5]) for p in episodes[::4])))
    for name, v in (("std", std), ("high-pass", high)):
        print(f"data {name} per channel: median {v.quantile(.5, 0).numpy().round(3)}, "
              f"max {v.max(0).values.numpy().round(3)}")
    student, meta = load_student(argv[0])
    cfg = replace(meta.sampler, sinks=int(argv[1]), window=int(argv[2]))
    context = torch.as_tensor(np.load(episodes[min(5, len(episodes) - 1)])[100:104]).float()[None]
    still = torch.zeros(1, 1, student.cfg.action_dim)
    sampler = StudentSampler(student.eval(), cfg, 1)
    sampler.prefill(context, still.expand(1, 4, -1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        frames = torch.stack([sampler.step(still, g)[0, 0] for _ in range(200)])
    s, h = stats(frames)
    for i in (0, 3, 7, 15, 31, 63, 127, 199):
        mse = float((frames[i] - context[0, -1]).pow(2).mean())
        print(f"frame {i + 1}: std {s[i].numpy().round(2)}, high-pass {h[i].numpy().round(3)}, "
              f"mse to the last context frame {mse:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

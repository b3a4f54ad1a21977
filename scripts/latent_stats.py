"""Per-channel spatial std and 3x3 high-pass energy of a student's standing rollout, beside the
play data's per-frame ranges: does a drifting picture leave the statistics of real latents?

    python scripts/latent_stats.py STUDENT SINKS WINDOW TOKENIZER [DATA]

STUDENT is a student checkpoint stem (e.g. assets/default/student); SINKS and WINDOW replace
its sampler's; DATA (runs/data-play/train) must hold latents cached with TOKENIZER (e.g.
assets/default/tokenizer). The rollout starts from the sampler's context frames taken from
one episode and runs 200 frames with no input.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

from distill.cache_latents import cached_latents
from worldmodel.checkpoint import load_student
from worldmodel.sampling import StudentSampler


def stats(z) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C, h, w) latents -> per-frame, per-channel spatial std and high-pass energy."""
    z = torch.as_tensor(z).float()
    high = z - F.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    return z.std(dim=(-2, -1)), high.pow(2).mean(dim=(-2, -1))


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    data = argv[4] if len(argv) > 4 else "runs/data-play/train"
    sample = [z[::5] for z in cached_latents(data, argv[3], every=4)]
    std, high = (torch.cat(x) for x in zip(*(stats(z) for z in sample)))
    for name, v in (("std", std), ("high-pass", high)):
        print(f"data {name} per channel: median {v.quantile(.5, 0).numpy().round(3)}, "
              f"max {v.max(0).values.numpy().round(3)}")
    student, meta = load_student(argv[0])
    cfg = replace(meta.sampler, sinks=int(argv[1]), window=int(argv[2]))
    n = cfg.context_length
    episode = next(z for i, z in enumerate(cached_latents(data, argv[3])) if i == 5)
    context = torch.as_tensor(episode[100:100 + n])[None]
    still = torch.zeros(1, 1, student.cfg.action_dim)
    sampler = StudentSampler(student.eval(), cfg, 1)
    sampler.prefill(context, still.expand(1, n, -1))
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

"""The realism measure on the game's own frames and on degenerate copies of them.

    python scripts/realism_controls.py [--worlds 6,1000002] [--frames 200] [--size 64]

For each world: the mixed probe's game frames, scored against views around their own poses
(1.0 by construction), then the controls `wm eval` reports (flat, tiled, shuffled, blurred)
and box blurs of 2-16 px, alone and with Gaussian noise (sd 12 of 255) on top. A measure
that a soft dream cannot fool scores every one of them clearly below 1.
"""

from __future__ import annotations

import argparse

import numpy as np

from distill.collect import EVAL_SEED_START
from distill.probes import play
from distill.realism import RealismConfig, RealismJudge, box_blur, controls, realism


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", default=f"6,{EVAL_SEED_START + 2}")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for world in (int(w) for w in args.worlds.split(",")):
        ep = play(world, args.size, args.frames, "mixed", 1, seen=world < EVAL_SEED_START)
        judge = RealismJudge.around(ep.world, args.size, ep.states, RealismConfig())
        d_game = judge.distance(ep.frames)
        scores = {n: realism(judge.distance(f), d_game) for n, f in controls(ep.frames).items()}
        for k in (2, 4, 8, 16):
            b = box_blur(ep.frames, k)
            scores[f"blur {k}"] = realism(judge.distance(b), d_game)
            noisy = np.clip(b + rng.normal(0, 12, b.shape), 0, 255).astype(np.uint8)
            scores[f"blur {k} + noise"] = realism(judge.distance(noisy), d_game)
        print(f"world {world}: " + ", ".join(f"{n} {v:.2f}" for n, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()

"""A teacher's next frame when its first context frames are old, as a student's sinks are.

    python scripts/gap_probe.py --teacher runs/teacher/model [--teacher T2 ...] --data runs/data-play/val

At play with sinks, the KV cache holds the session's first frames, then the recent ones,
at consecutive positions however long ago the first were made. Here, at `--clips` random
places of the data set, the context is the 4 frames at s..s+3 and the `--recent` real frames
from s+4+g, g frames later (`--sinks` sets the 4); the teacher (`--steps` Euler steps, CFG `--cfg`) makes the frame
after them, with its real action, and it is decoded and compared with the game's frame. For
each gap g of `--gaps`, per teacher: that PSNR ("sinks"), the PSNR with the recent frames
alone as context ("recent"), and repeating the last real frame ("repeat"). PSNR is over the
mean squared error of all clips. Prints a markdown table; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from distill.probes import mse, psnr_of_mse
from worldmodel.checkpoint import load_teacher, load_tokenizer
from worldmodel.episode import Episode, find_episodes
from worldmodel.sampling import teacher_denoise
from worldmodel.tokenizer import frames_to_tensor, tensor_to_frames


def indices(start: int, gap: int, sinks: int, recent: int) -> np.ndarray:
    """Frame indices of one probe: the sinks at start.., `recent` frames `gap` frames after
    them, and the frame to make."""
    after = start + sinks + gap
    return np.r_[start:start + sinks, after:after + recent + 1]


def places(data: str, clips: int, span: int, seed: int) -> list[tuple[Episode, int]]:
    eps = [Episode(p) for p in find_episodes(data)]
    eps = [e for e in eps if len(e) > span]
    if not eps:
        raise SystemExit(f"no episode in {data} has more than {span} frames")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(clips):
        ep = eps[int(rng.integers(len(eps)))]
        out.append((ep, int(rng.integers(0, len(ep) - span))))
    return out


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", action="append", required=True, help="teacher checkpoint (repeatable)")
    ap.add_argument("--tokenizer", default="assets/default/tokenizer")
    ap.add_argument("--data", default="runs/data-play/val")
    ap.add_argument("--gaps", default="0,8,32")
    ap.add_argument("--sinks", type=int, default=4, help="first frames kept, as the default's sinks")
    ap.add_argument("--recent", type=int, default=2, help="real frames after the gap")
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gaps = [int(g) for g in args.gaps.split(",")]
    tok, _ = load_tokenizer(args.tokenizer)
    teachers = {t: load_teacher(t) for t in args.teacher}
    for t, (_, meta) in teachers.items():
        if args.sinks + args.recent + 1 > meta.clip_len:
            raise SystemExit(f"{t} sees {meta.clip_len} frames; {args.sinks} sinks + {args.recent} "
                             "recent + 1 new do not fit")
    span = args.sinks + max(gaps) + args.recent + 1
    spots = places(args.data, args.clips, span, args.seed)
    errs: dict[tuple[str, int, str], list[float]] = {}
    for k, (ep, s) in enumerate(spots):
        for g in gaps:
            idx = indices(s, g, args.sinks, args.recent)
            frames = np.asarray(ep.frames[idx])
            actions = torch.from_numpy(np.asarray(ep.actions[idx]))[None].float()
            z = tok.encode(frames_to_tensor(torch.from_numpy(frames)))[None]  # (1, F, C, h, w)
            target = frames[-1:]
            errs.setdefault(("", g, "repeat"), []).extend(mse(frames[-2:-1], target))
            noise = torch.randn((1, 1, *z.shape[2:]), generator=torch.Generator().manual_seed(k))
            for name, (net, meta) in teachers.items():
                cfg = meta.sampling(args.steps, args.cfg)
                for stream, first in (("sinks", 0), ("recent", args.sinks)):
                    new = teacher_denoise(net, z[:, first:-1], actions[:, first:], noise, cfg)
                    gen = tensor_to_frames(tok.decode(new[0])).numpy()
                    errs.setdefault((name, g, stream), []).extend(mse(gen, target))
        print(f"\r{k + 1}/{len(spots)} places", end="", file=sys.stderr)
    print(file=sys.stderr)
    table = {f"{name or 'repeat'} {stream} gap {g}": psnr_of_mse(e) for (name, g, stream), e in errs.items()}
    head = "| teacher | stream | " + " | ".join(f"gap {g}" for g in gaps) + " |"
    print(head)
    print("|" + " --- |" * (2 + len(gaps)))
    rows = [("", "repeat")] + [(t, s) for t in teachers for s in ("sinks", "recent")]
    for name, stream in rows:
        cells = " | ".join(f"{psnr_of_mse(errs[(name, g, stream)]):.2f}" for g in gaps)
        print(f"| {name or '-'} | {stream} | {cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "psnr": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`wm cache-latents`: encode every episode of a dataset once with a trained tokenizer.

    wm cache-latents --data data/train --tokenizer runs/tokenizer/model

Writes `latents.npy` (float16 [T, C, h, w], normalised) beside each episode's frames, so
teacher training never re-encodes frames. Episodes already encoded with the same tokenizer
(its hash is kept in `latents.json`) are skipped, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from distill.data import LATENTS
from worldmodel import checkpoint
from worldmodel.checkpoint import load_tokenizer
from worldmodel.episode import Episode, find_episodes
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.tokenizer import frames_to_tensor


@dataclass
class CacheConfig:
    data: str = "data/train"
    tokenizer: str = "runs/tokenizer/model"
    device: str = "cpu"
    batch: int = 256  # frames encoded at once


STAMP = "latents.json"  # beside the latents: the hash of the tokenizer that wrote them


def _cached_with(ep: Episode, tok_hash: str) -> bool:
    """Whether `ep`'s latents were written by the tokenizer with this hash."""
    stamp = ep.path / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("tokenizer") == tok_hash


@torch.no_grad()
def cache_latents(data: str, tokenizer: str, device: str = "cpu", batch: int = 256) -> int:
    tok, _ = load_tokenizer(tokenizer, device)
    tok_hash = checkpoint.file_hash(f"{tokenizer}.safetensors")
    episodes = [Episode(p) for p in find_episodes(data)]
    done = 0
    for ep in tqdm(episodes, desc="encode", unit="episode"):
        if _cached_with(ep, tok_hash):
            continue
        zs = []
        for i in range(0, len(ep), batch):
            x = frames_to_tensor(torch.from_numpy(np.array(ep.frames[i:i + batch]))).to(device)
            zs.append(tok.encode(x).cpu().to(torch.float16).numpy())
        tmp = ep.path / (LATENTS + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.concatenate(zs))
        os.replace(tmp, ep.path / LATENTS)
        (ep.path / STAMP).write_text(json.dumps({"tokenizer": tok_hash, "frames": len(ep)}))
        done += 1
    return done


def cached_latents(data: str, tokenizer: str, every: int = 1):
    """Each `every`-th episode's latents (T, C, h, w) float32 from `data`, which must have been
    cached with `tokenizer` (a checkpoint stem); a clear error where they were not."""
    tok_hash = checkpoint.file_hash(f"{tokenizer}.safetensors")
    episodes = [Episode(p) for p in find_episodes(data)]
    if not episodes:
        raise ValueError(f"no episodes in {data}")
    for ep in episodes[::every]:
        if not _cached_with(ep, tok_hash):
            raise ValueError(f"{ep.path} has no latents from {tokenizer}: run "
                             f"`wm cache-latents --data {data} --tokenizer {tokenizer}` first")
        yield np.load(ep.path / LATENTS).astype(np.float32)


def latent_mean_range(data: str, tokenizer: str) -> list[list[float]]:
    """[lo, hi] per latent channel: the extremes of the per-frame spatial channel means over
    every frame of `data`, whose latents must have been cached with `tokenizer` (the sampler's
    `mean_bounds`)."""
    lo = hi = None
    for z in cached_latents(data, tokenizer):
        means = z.mean(axis=(2, 3))  # (T, C)
        lo = means.min(0) if lo is None else np.minimum(lo, means.min(0))
        hi = means.max(0) if hi is None else np.maximum(hi, means.max(0))
    return [lo.tolist(), hi.tolist()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CacheConfig(), helps={
        "data": "dataset folder", "tokenizer": "tokenizer checkpoint stem",
        "batch": "frames encoded at once"})


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(CacheConfig, args)
    n = cache_latents(cfg.data, cfg.tokenizer, cfg.device, cfg.batch)
    print(f"encoded {n} episode(s) in {cfg.data}")
    return 0

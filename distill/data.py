"""Streaming random clips from a dataset of episodes (see docs/data.md).

Nothing is loaded whole: each DataLoader worker memory-maps the episodes it samples from
and copies out only the clips it returns. The stream is infinite and seeded per worker
(and per rank), so any number of workers gives different, reproducible clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import IterableDataset, get_worker_info

from worldmodel.episode import Episode, EpisodeError, find_episodes

LATENTS = "latents.npy"  # per-episode cache written by `wm cache-latents`
PAIR_KEYS = ("context", "actions", "levels", "target", "real")  # a shard of ODE pairs (distill.ode)


def open_episodes(root: str | Path, min_length: int) -> list[Episode]:
    """Every episode under root with at least min_length frames; a clear error if none."""
    paths = find_episodes(root)
    episodes = [e for e in map(Episode, paths) if len(e) >= min_length]
    if not episodes:
        raise EpisodeError(
            f"no episode under {root} has {min_length} frames or more "
            f"({len(paths)} episode(s) found); run `wm collect` first"
        )
    return episodes


class ClipDataset(IterableDataset):
    """Infinite stream of random clips: {"frames": uint8 (F, S, S, 3), "actions": (F, A)}.

    With latents=True it yields {"latents": float32 (F, C, h, w), "actions": ...} from the
    cache that `wm cache-latents` writes beside each episode's frames.

    With gap=G, a clip is, with probability p_gap, gapped: its first `gap_frames` frames are
    followed by the rest of the clip taken g frames later (g uniform in 1..G), as a student's
    sinks (the session's first frames) precede its recent frames in the KV cache at play. The
    actions of the skipped frames are not in the clip. Such datasets also yield "gap": the g
    of each clip (0 for a contiguous one).
    """

    def __init__(self, root: str | Path, clip_len: int, seed: int = 0, latents: bool = False,
                 gap: int = 0, gap_frames: int = 4, p_gap: float = 0.5):
        if gap < 0 or (gap and not 0 < gap_frames < clip_len) or not 0 <= p_gap <= 1:
            raise ValueError(f"need gap >= 0, 0 < gap_frames < clip_len and p_gap in [0, 1], "
                             f"got {gap}, {gap_frames}, {p_gap}")
        self.gap, self.gap_frames, self.p_gap = gap, gap_frames, p_gap
        self.episodes = open_episodes(root, clip_len + gap)
        if latents:
            missing = [e.path for e in self.episodes if not (e.path / LATENTS).is_file()]
            if missing:
                raise EpisodeError(
                    f"{len(missing)} episode(s) have no cached latents (first: {missing[0]}); "
                    "run `wm cache-latents` with the tokenizer first"
                )
        self.clip_len = clip_len
        self.seed = seed
        self.latents = latents
        lengths = np.array([len(e) - clip_len + 1 for e in self.episodes], dtype=np.float64)
        self.weights = lengths / lengths.sum()  # every start position equally likely
        self.rank = 0

    @property
    def frames_total(self) -> int:
        return sum(len(e) for e in self.episodes)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker])
        while True:
            yield self.sample(rng)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        ep = self.episodes[rng.choice(len(self.episodes), p=self.weights)]
        g = int(rng.integers(1, self.gap + 1)) if self.gap and rng.random() < self.p_gap else 0
        start = int(rng.integers(0, len(ep) - self.clip_len - g + 1))
        idx = np.arange(start, start + self.clip_len)
        idx[self.gap_frames if g else self.clip_len:] += g
        out = {"actions": torch.from_numpy(np.array(ep.actions[idx]))}
        if self.latents:
            lat = np.load(ep.path / LATENTS, mmap_mode="r")
            out["latents"] = torch.from_numpy(np.array(lat[idx], dtype=np.float32))
        else:
            out["frames"] = torch.from_numpy(np.array(ep.frames[idx]))
        if self.gap:
            out["gap"] = torch.tensor(g)
        return out


class PairSet:
    """Random access to a folder of ODE pairs; shards are memory-mapped, rows read on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "index.json"
        if not path.is_file():
            raise FileNotFoundError(f"no ODE pairs at {folder} (no index.json); "
                                    "run `wm distill ode` first")
        self.index = json.loads(path.read_text())
        shards = self.index["shards"]
        if not shards:
            raise ValueError(f"{folder} holds no finished shard of pairs yet")
        self._files = [safe_open(str(self.folder / s["file"]), framework="pt") for s in shards]
        self._rows = [(f, r) for f, s in enumerate(shards) for r in range(s["clips"])]

    def __len__(self) -> int:
        return len(self._rows)

    def batch(self, rows: list[int], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The pairs of the given clips, each tensor with a leading batch dimension."""
        picked = [self._rows[i] for i in rows]
        return {k: torch.cat([self._files[f].get_slice(k)[r:r + 1] for f, r in picked]).to(device)
                for k in PAIR_KEYS}

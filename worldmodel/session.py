"""WorldSession: the gym-style door into a trained world model.

    session = WorldSession.from_checkpoint("default", device="cpu")
    session.reset(context_frames, context_actions=None, seed=0)
    frame = session.step(Action(forward=True))      # np.uint8 [size, size, 3]

Servers and clients touch only this class; they never reach into caches or layers.

A world-model checkpoint is a folder with two safetensors + JSON pairs:
`tokenizer.*` (the frame autoencoder) and `student.*` (the causal DiT, with its sampler
settings in the JSON), plus an optional `card.md` / `card.json`. A bare name such as
"default" means `assets/<name>`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel import checkpoint
from worldmodel.actions import ACTION_DIM, Action
from worldmodel.checkpoint import load_student, load_tokenizer
from worldmodel.game import Game
from worldmodel.model import DiT, get_config
from worldmodel.sampling import StudentConfig, StudentSampler
from worldmodel.tokenizer import TOKENIZER_PRESETS, Tokenizer, frames_to_tensor, tensor_to_frames

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A checkpoint folder from a path, or a name under assets/."""
    p = Path(path_or_name)
    for candidate in (p, ASSETS / p):
        if (candidate / "student.json").is_file():
            return candidate
    if str(path_or_name) == "default":
        raise FileNotFoundError(
            f"no default checkpoint is shipped yet (looked in {ASSETS / 'default'}); "
            "train one as docs/train-your-own.md describes and pass --checkpoint PATH")
    raise FileNotFoundError(
        f"no world-model checkpoint at {path_or_name!r} (a folder with student.json and "
        f"tokenizer.json, or a name under {ASSETS})")


def freeze_heap() -> None:
    """Leave every object alive now (modules, weights, the loaded checkpoint) out of the
    garbage collector's passes: they live as long as the process, and a full pass over them
    every few hundred frames was the slowest frames' extra time. Servers and the bench call
    it once their worlds are loaded."""
    gc.collect()
    gc.freeze()


class WorldSession:
    """One player's stream of generated frames."""

    def __init__(self, tokenizer: Tokenizer, student: DiT, sampler_cfg: StudentConfig,
                 name: str = "model", checkpoint_hash: str = "", card: dict | None = None,
                 fps: int = Game.fps, worlds: list[int] | None = None):
        self.tokenizer = tokenizer
        self.model = student
        self.sampler = StudentSampler(student, sampler_cfg)
        self.size = tokenizer.cfg.frame_size
        self.name = name
        self.checkpoint_hash = checkpoint_hash
        self.context_length = sampler_cfg.context_length
        self.fps = fps
        self.worlds = worlds  # the game seeds it was trained on; None: any procedural world
        self.card = card or {}
        self.frame_index = 0
        self.last_timings: dict[str, float] = {}
        self._generator = torch.Generator(device=self.device)
        self._pending: list[Action] = []  # actions waiting for a full chunk
        self._queue: list[np.ndarray] = []  # frames generated ahead within a chunk

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def threads(self) -> int | None:
        """torch's CPU thread count now; None on an accelerator. On CPU the kernels split
        their sums by thread count, so the rounding, and with it every frame, depends on it:
        a recording keeps this number and a replay runs with it."""
        return torch.get_num_threads() if self.device.type == "cpu" else None

    @classmethod
    def from_checkpoint(cls, path_or_name: str | Path = "default", device: str = "cpu") -> WorldSession:
        folder = resolve_checkpoint(path_or_name)
        tokenizer, _ = load_tokenizer(folder / "tokenizer", device)
        student, meta = load_student(folder / "student", device)
        h = hashlib.sha256()
        for f in ("tokenizer.safetensors", "student.safetensors"):
            h.update(checkpoint.file_hash(folder / f).encode())
        card = {}
        if (folder / "card.json").is_file():
            card = json.loads((folder / "card.json").read_text())
        return cls(tokenizer, student, meta.sampler, name=folder.name,
                   checkpoint_hash=h.hexdigest(), card=card | {"student": meta.sidecar},
                   fps=meta.fps, worlds=meta.worlds)

    def _check_frames(self, frames) -> np.ndarray:
        # one memory layout whatever the caller's: the encoder's arithmetic, and so every
        # frame after it, would otherwise depend on the strides of the context frames
        arr = np.ascontiguousarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1:] != (self.size, self.size, 3) or arr.dtype != np.uint8:
            raise ValueError(f"context frames must be uint8 [n, {self.size}, {self.size}, 3], "
                             f"got {arr.dtype} {arr.shape}")
        if len(arr) == 0:
            raise ValueError("reset() needs at least one context frame")
        return arr

    @torch.no_grad()
    def reset(self, context_frames, context_actions=None, seed: int = 0) -> None:
        """Start a new session from context frames (one or more; the last context_length are
        used). context_actions[i] is the action that led into context_frames[i]."""
        z, a = self.encode_context(context_frames, context_actions)
        self._generator.manual_seed(int(seed))
        self.sampler.prefill(z, a)
        self.frame_index = 0
        self._pending, self._queue = [], []

    @property
    def sampling(self) -> dict[str, Any]:
        """What a replay must match to regenerate this session's frames exactly: here the
        unbatched path (a `worldmodel.scheduler.BatchedWorld` runs `batch_rows` rows), and
        whether each frame's cache write rode with the next frame's first step."""
        return {"batch_rows": None, "fuse_write": self.sampler.fuse_write}

    @torch.no_grad()
    def encode_context(self, context_frames, context_actions=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked context frames and actions -> latents (1, F, C, h, w) and action vectors
        (1, F, A) of the last context_length of them, on the session's device."""
        frames = self._check_frames(context_frames)
        if context_actions is None:
            context_actions = [Action()] * len(frames)
        if len(context_actions) != len(frames):
            raise ValueError(f"{len(frames)} context frames but {len(context_actions)} actions")
        for a in context_actions:
            if not isinstance(a, Action):
                raise TypeError(f"context actions must be Action, got {type(a).__name__}")
        frames, context_actions = frames[-self.context_length:], context_actions[-self.context_length:]
        x = frames_to_tensor(torch.from_numpy(frames)).to(self.device)
        z = self.tokenizer.encode(x)[None]  # (1, F, C, h, w)
        a = torch.from_numpy(np.stack([c.to_vector() for c in context_actions]))[None].to(self.device)
        return z, a

    @torch.no_grad()
    def step(self, action: Action) -> np.ndarray:
        """The next frame, uint8 [size, size, 3], as the result of `action`."""
        if not isinstance(action, Action):
            raise TypeError(f"step() takes an Action, got {type(action).__name__}")
        if self.sampler.cache.frames == 0:
            raise RuntimeError("call reset() with context frames before step()")
        t0 = time.perf_counter()
        if not self._queue:
            # a chunk of c frames needs c actions; with chunk 1 (the default) that is this one
            acts = [action] * self.sampler.cfg.chunk
            a = torch.from_numpy(np.stack([x.to_vector() for x in acts]))[None].to(self.device)
            z = self.sampler.step(a, self._generator)  # (1, chunk, C, h, w)
            t1 = time.perf_counter()
            frames = np.ascontiguousarray(
                tensor_to_frames(self.tokenizer.decode(z[0]).float().cpu()).numpy())
            self._queue = list(frames)
        else:
            t1 = t0
        frame = self._queue.pop(0)
        t2 = time.perf_counter()
        self.frame_index += 1
        self.last_timings = {"model_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3,
                             "total_ms": (t2 - t0) * 1e3}
        return frame


def save_world_model(folder: str | Path, tokenizer: Tokenizer, student: DiT,
                     sampler: StudentConfig, meta: dict[str, Any] | None = None) -> Path:
    """Write a servable checkpoint folder: tokenizer.* and student.*."""
    folder = Path(folder)
    checkpoint.save(folder / "tokenizer", tokenizer.state_dict(),
                    {"kind": "tokenizer", "model": asdict(tokenizer.cfg)})
    checkpoint.save(folder / "student", student.state_dict(),
                    {"kind": "student", "model": asdict(student.cfg), "sampler": asdict(sampler),
                     "fps": Game.fps, **(meta or {})})
    return folder


def make_random_checkpoint(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An untrained checkpoint for tests of the serving path: every weight random (the
    zero-initialised gates too), so that the frames depend on context and actions."""
    torch.manual_seed(seed)
    tok_cfg = TOKENIZER_PRESETS[preset]
    tok = Tokenizer(tok_cfg)
    student = DiT(get_config(preset, latent_channels=tok_cfg.latent_channels,
                             latent_size=tok_cfg.latent_size, action_dim=ACTION_DIM))
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() >= 2 and p.abs().sum() == 0:
                p.normal_(0, 0.2)  # AdaLN-Zero gates and the output layer start at zero
        for p in student.a_embed.parameters():
            p.normal_(0, 1.0)  # strong enough that every action shows in the frames
        tok.latent_std.fill_(1.0)
    return save_world_model(folder, tok, student, StudentConfig(context_length=2, window=4),
                            {"note": "random weights, for tests"})

"""Sampling latents from the DiT: the student's few-step causal sampler with a KV cache,
and the teacher's many-step Euler sampler with classifier-free guidance on actions.

Both work in latent space: (B, F, C, h, w) latents and (B, F, A) action vectors, where
actions[:, i] led into frame i. The guided velocity and the student's step loop live here
once; ODE pairs and DMD rollouts in distill/ call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worldmodel import flow
from worldmodel.model import DiT, KVCache, SlotKVCache

Generators = torch.Generator | Sequence[torch.Generator | None] | None


@dataclass
class StudentConfig:
    """How the student generates: these travel with the student checkpoint."""

    steps: int = 4
    shift: float = 3.0
    window: int = 8  # frames attended to, the new one included
    sinks: int = 0  # first frames of the session kept in the cache for good
    chunk: int = 1  # frames generated together
    context_length: int = 4  # context frames taken from reset()
    # Flow time at which generated frames go into the KV cache: 0 writes the clean x0; a small
    # level writes it re-noised and says so, like the teacher's noised context in training
    # (GameNGen, Oasis). Context frames from reset() are written clean.
    cache_level: float = 0.0
    # Per latent channel, the range of a real frame's spatial mean: [lo per channel, hi per
    # channel], the training latents' per-frame extremes (`wm distill pack --mean-bounds DATA`).
    # After every denoising step a generated frame's channel means are moved into it and the
    # rest of the frame is kept, so that a rollout cannot drift into a saturated field (a
    # white screen) that no real frame encodes to; frames inside the range are left exactly
    # as they are. None: no guard.
    mean_bounds: list[list[float]] | None = None


def clamp_channel_means(x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """x0 (..., C, h, w) with each channel's spatial mean moved into [lo, hi] (C, 1, 1) by a
    constant offset: a frame whose means lie inside is returned unchanged, bit for bit."""
    mean = x0.mean(dim=(-2, -1), keepdim=True)
    return x0 + (mean.clamp(lo, hi) - mean)


@dataclass
class TeacherConfig:
    """How the teacher generates. steps and cfg_scale are chosen at sampling time; mode,
    clip_len and shift are the teacher's own (`TeacherMeta.sampling()` fills them in)."""

    steps: int = 32  # Euler steps per frame
    cfg_scale: float = 1.5  # guidance on actions; 1 is the conditional model alone
    shift: float = 3.0
    clip_len: int = 8  # frames seen at once: the last clip_len - 1 are held clean
    mode: str = "bidirectional"


class StudentSampler:
    """Few-step causal generation (`cfg.steps` a frame) with a rolling KV cache: memory and
    time per frame are constant in session length.

    A generated frame's keys and values go into the cache with one more forward pass at
    t = 0. With fuse_write (the default) that pass rides along with the next frame's first
    denoising step, as one 2-frame causal chunk: the same attention, 4 passes a frame
    instead of 5. With sinks the new frame sees the sinks at the distances a separate write
    would leave, through repeated sink keys (see `KVCache.layout`).

    With a `SlotKVCache` (cache=...) each batch row is a session of its own: `prefill(...,
    row=r)` starts row r alone, and `step(..., rows=...)` advances only the flagged rows, each
    drawing its noise from its own generator. There a row's last context frame is left
    pending like a generated one, so every row's first pass has the same shape; the fused
    write then needs chunk 1."""

    def __init__(self, model: DiT, cfg: StudentConfig, batch_size: int = 1,
                 fuse_write: bool = True, cache: SlotKVCache | None = None):
        self.model = model
        self.cfg = cfg
        self.fuse_write = fuse_write and (cache is None or cfg.chunk == 1)
        self.timesteps = flow.student_timesteps(cfg.steps, cfg.shift).tolist()
        p = next(model.parameters())
        self.cache: KVCache | SlotKVCache = cache if cache is not None else model.init_cache(
            batch_size, cfg.window, cfg.sinks, p.device, p.dtype)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # frames not yet cached
        self._bounds: tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.mean_bounds is not None:
            C = model.cfg.latent_channels
            b = torch.tensor(cfg.mean_bounds, device=p.device, dtype=p.dtype)
            if b.shape != (2, C) or bool((b[0] > b[1]).any()):
                raise ValueError(f"mean_bounds must be [lo, hi] with {C} values each and lo <= hi, "
                                 f"not {cfg.mean_bounds}")
            self._bounds = (b[0].view(C, 1, 1), b[1].view(C, 1, 1))

    def _write(self, cache: KVCache, latents: torch.Tensor, actions: torch.Tensor) -> None:
        for i in range(0, latents.shape[1], self.cfg.chunk):
            x, a = latents[:, i:i + self.cfg.chunk], actions[:, i:i + self.cfg.chunk]
            t = torch.zeros(x.shape[:2], device=x.device, dtype=x.dtype)
            self.model.forward_step(x, t, a, cache, write=True)

    def _noise(self, shape: tuple[int, ...], generator: Generators) -> torch.Tensor:
        """Noise of `shape`; with one generator per row, row r's from its own (zeros where
        None), drawn exactly as a batch of one would draw it."""
        p = next(self.model.parameters())
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)
        return torch.cat([
            torch.randn((1, *shape[1:]), generator=g, device=p.device, dtype=p.dtype)
            if g is not None else torch.zeros((1, *shape[1:]), device=p.device, dtype=p.dtype)
            for g in generator])

    @torch.no_grad()
    def prefill(self, latents: torch.Tensor, actions: torch.Tensor, row: int | None = None) -> None:
        """Write clean context frames (B, F, C, h, w) into a fresh cache; with `row`, frames
        (1, F, C, h, w) into that row of a SlotKVCache, the other rows untouched."""
        if row is None:
            self.cache.reset()
            self._pending = None
            self._write(self.cache, latents, actions)
            return
        cache = self.cache.slots[row]
        cache.reset()
        n = latents.shape[1] - (1 if self.fuse_write else 0)
        self._write(cache, latents[:, :n], actions[:, :n])
        if self.fuse_write:
            if self._pending is None:
                rows = len(self.cache.slots)
                self._pending = (latents.new_zeros((rows, *latents.shape[1:]))[:, :1],
                                 actions.new_zeros((rows, *actions.shape[1:]))[:, :1],
                                 latents.new_zeros((rows, 1)))
            self._pending = tuple(p.clone() for p in self._pending)  # may alias a step's output
            self._pending[0][row] = latents[0, n:]
            self._pending[1][row] = actions[0, n:]
            self._pending[2][row] = 0  # context is written clean

    def cache_input(self, x0: torch.Tensor, generator: Generators):
        """A generated chunk as it goes into the cache: (latents, flow times (B, Fc)). Draws
        noise only with a cache_level, so a clean cache keeps every noise stream as it was."""
        level = self.cfg.cache_level
        t = torch.full(x0.shape[:2], level, device=x0.device, dtype=x0.dtype)
        if level == 0:
            return x0, t
        return flow.renoise(x0, level, noise=self._noise(tuple(x0.shape), generator)), t

    def step(self, actions: torch.Tensor, generator: Generators = None,
             exit_step: int | None = None, rows: Sequence[bool] | None = None) -> torch.Tensor:
        """Generate the next chunk of frames for actions (B, chunk, A) -> clean latents.

        Between steps: predict x0, re-noise it to the next level. With exit_step (training,
        Self-Forcing) the chunk stops after that step and returns its x0 prediction, which
        alone records a graph when grad mode is on; the cache always gets the detached frame.
        Without it every step runs, without a graph. generator: one for the batch, or one per
        row. rows (SlotKVCache only): the rows that advance; the others' caches and pending
        frames stay as they were."""
        if exit_step is not None and self.fuse_write:
            raise ValueError("exit_step needs fuse_write=False: a fused write would carry a graph")
        grad = torch.is_grad_enabled() and exit_step is not None
        last = len(self.timesteps) - 1 if exit_step is None else exit_step
        B, Fc = actions.shape[:2]
        cfg = self.model.cfg
        shape = (B, Fc, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        p = next(self.model.parameters())
        if isinstance(self.cache, SlotKVCache):
            self.cache.active = list(rows) if rows is not None else [True] * B
        elif rows is not None:
            raise ValueError("rows= needs a SlotKVCache")
        old_pending = self._pending
        x = self._noise(shape, generator)
        for k in range(last + 1):
            tt = torch.full((B, Fc), self.timesteps[k], device=p.device, dtype=p.dtype)
            with torch.set_grad_enabled(grad and k == last):
                if k == 0 and self._pending is not None:  # cache the last frames on the way
                    prev, prev_a, prev_t = self._pending
                    n = prev.shape[1]
                    v = self.model.forward_step(torch.cat([prev, x], 1), torch.cat([prev_t, tt], 1),
                                                torch.cat([prev_a, actions], 1), self.cache,
                                                write=n)[:, n:]
                    self._pending = None
                else:
                    v = self.model.forward_step(x, tt, actions, self.cache)
                x0 = flow.predict_x0(x, v, tt)
                if self._bounds is not None:
                    x0 = clamp_channel_means(x0, *self._bounds)
            if k < last:
                x = flow.renoise(x0, self.timesteps[k + 1], noise=self._noise(shape, generator))
        with torch.no_grad():
            xw, tw = self.cache_input(x0.detach(), generator)
        if self.fuse_write:
            self._pending = (xw, actions, tw)
            if rows is not None and old_pending is not None:
                keep = ~torch.tensor(list(rows), device=p.device)
                self._pending = (torch.where(keep.view(B, 1, 1, 1, 1), old_pending[0], xw),
                                 torch.where(keep.view(B, 1, 1), old_pending[1], actions),
                                 torch.where(keep.view(B, 1), old_pending[2], tw))
        else:
            with torch.no_grad():
                self.model.forward_step(xw, tw, actions, self.cache, write=True)
        return x0


def guided_velocity(model: DiT, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, *,
                    mode: str, cfg_scale: float) -> torch.Tensor:
    """Velocity with classifier-free guidance on actions: one doubled batch, the actions of
    the whole clip dropped in the second half. x (B, F, C, h, w), t (B, F), actions (B, F, A)
    -> (B, F, C, h, w)."""
    if cfg_scale == 1.0:
        return model(x, t, actions, mode=mode)
    B = x.shape[0]
    keep = torch.tensor([True] * B + [False] * B, device=x.device)
    v = model(x.repeat(2, 1, 1, 1, 1), t.repeat(2, 1), actions.repeat(2, 1, 1), mode=mode,
              action_mask=keep)
    return flow.cfg_combine(v[:B], v[B:], cfg_scale)


@torch.no_grad()
def teacher_denoise(model: DiT, clean: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                    cfg: TeacherConfig, trajectory: bool = False):
    """Integrate the new frames noise (B, n, C, h, w) from t = 1 to 0 while the clean frames
    (B, Fc, ...) before them stay at t = 0; actions (B, Fc + n, A) cover both. Returns the
    clean new frames, and with trajectory=True also every x_t visited (steps + 1, B, n, ...)."""
    B, n = noise.shape[:2]
    F = clean.shape[1] + n

    def velocity(x, t):
        tt = torch.zeros(B, F, device=x.device, dtype=x.dtype)
        tt[:, -n:] = t
        v = guided_velocity(model, torch.cat([clean, x], 1), tt, actions, mode=cfg.mode,
                            cfg_scale=cfg.cfg_scale)
        return v[:, -n:]

    end, path, _ = flow.euler_sample(velocity, noise, cfg.steps, cfg.shift, trajectory=True)
    return (end, path) if trajectory else end


@torch.no_grad()
def teacher_rollout(model: DiT, context: torch.Tensor, context_actions: torch.Tensor,
                    actions: torch.Tensor, cfg: TeacherConfig,
                    generator: torch.Generator | None = None, trajectory: bool = False):
    """Autoregressive many-step generation, one frame at a time.

    Each new frame is denoised with cfg.steps Euler steps from pure noise (drawn frame by
    frame from `generator`) while the last clip_len - 1 frames (real context, then the frame's
    own predecessors) are held clean. context (B, Fc, C, h, w) led into by context_actions
    (B, Fc, A); actions (B, N, A) for the N frames to generate -> (B, N, C, h, w), and with
    trajectory=True also each frame's Euler path (B, N, steps + 1, C, h, w).
    """
    keep = cfg.clip_len - 1
    frames, acts = context[:, -keep:], context_actions[:, -keep:]
    out, paths = [], []
    for i in range(actions.shape[1]):
        a = torch.cat([acts, actions[:, i:i + 1]], 1)  # (B, F, A)
        noise = torch.randn((context.shape[0], 1, *context.shape[2:]), generator=generator,
                            device=context.device, dtype=context.dtype)
        new, path = teacher_denoise(model, frames, a, noise, cfg, trajectory=True)
        out.append(new)
        paths.append(path.movedim(0, 2))  # (B, 1, steps + 1, C, h, w)
        frames, acts = torch.cat([frames, new], 1)[:, -keep:], a[:, -keep:]
    return (torch.cat(out, 1), torch.cat(paths, 1)) if trajectory else torch.cat(out, 1)

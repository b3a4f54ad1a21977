"""Sampling latents from the DiT: the student's few-step causal sampler with a KV cache,
and the teacher's many-step Euler sampler over a sliding clip.

Both work in latent space: (B, F, C, h, w) latents and (B, F, A) action vectors, where
actions[:, i] led into frame i.
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


class StudentSampler:
    """4-step causal generation with a rolling KV cache: memory and time per frame are
    constant in session length.

    A generated frame's keys and values go into the cache with one more forward pass at
    t = 0. With fuse_write (the default) that pass rides along with the next frame's first
    denoising step, as one 2-frame causal chunk: the same attention, 4 passes a frame
    instead of 5. Only without sinks: positions after the sinks count from the oldest frame
    in the ring, which the fused pass still holds, so with sinks the distances to the sinks
    would be off by one frame.

    With a `SlotKVCache` (cache=...) each batch row is a session of its own: `prefill(...,
    row=r)` starts row r alone, and `step(..., rows=...)` advances only the flagged rows, each
    drawing its noise from its own generator. There a row's last context frame is left
    pending like a generated one, so every row's first pass has the same shape; the fused
    write then needs chunk 1."""

    def __init__(self, model: DiT, cfg: StudentConfig, batch_size: int = 1,
                 fuse_write: bool = True, cache: SlotKVCache | None = None):
        self.model = model
        self.cfg = cfg
        self.fuse_write = fuse_write and cfg.sinks == 0 and (cache is None or cfg.chunk == 1)
        self.timesteps = flow.student_timesteps(cfg.steps, cfg.shift).tolist()
        p = next(model.parameters())
        self.cache: KVCache | SlotKVCache = cache if cache is not None else model.init_cache(
            batch_size, cfg.window, cfg.sinks, p.device, p.dtype)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # frames not yet cached

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
                                 actions.new_zeros((rows, *actions.shape[1:]))[:, :1])
            self._pending = (self._pending[0].clone(), self._pending[1].clone())  # may alias a step's output
            self._pending[0][row] = latents[0, n:]
            self._pending[1][row] = actions[0, n:]

    @torch.no_grad()
    def step(self, actions: torch.Tensor, generator: Generators = None,
             rows: Sequence[bool] | None = None) -> torch.Tensor:
        """Generate the next chunk of frames for actions (B, chunk, A) -> clean latents.
        generator: one for the batch, or one per row. rows (SlotKVCache only): the rows that
        advance; the others' caches and pending frames stay as they were."""
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
        x0 = x
        for k, t in enumerate(self.timesteps):
            tt = torch.full((B, Fc), t, device=p.device, dtype=p.dtype)
            if k == 0 and self._pending is not None:  # cache the last frames on the way
                prev, prev_a = self._pending
                n = prev.shape[1]
                zero = torch.zeros((B, n), device=p.device, dtype=p.dtype)
                v = self.model.forward_step(torch.cat([prev, x], 1), torch.cat([zero, tt], 1),
                                            torch.cat([prev_a, actions], 1), self.cache,
                                            write=n)[:, n:]
                self._pending = None
            else:
                v = self.model.forward_step(x, tt, actions, self.cache)
            x0 = flow.predict_x0(x, v, tt)
            if k + 1 < len(self.timesteps):
                x = flow.renoise(x0, self.timesteps[k + 1], noise=self._noise(shape, generator))
        if self.fuse_write:
            self._pending = (x0, actions)
            if rows is not None and old_pending is not None:
                keep = ~torch.tensor(list(rows), device=p.device)
                self._pending = (torch.where(keep.view(B, 1, 1, 1, 1), old_pending[0], x0),
                                 torch.where(keep.view(B, 1, 1), old_pending[1], actions))
        else:
            zero = torch.zeros((B, Fc), device=p.device, dtype=p.dtype)
            self.model.forward_step(x0, zero, actions, self.cache, write=True)
        return x0


@torch.no_grad()
def teacher_rollout(model: DiT, context: torch.Tensor, context_actions: torch.Tensor,
                    actions: torch.Tensor, *, mode: str = "bidirectional", clip_len: int = 8,
                    steps: int = 32, shift: float = 3.0, cfg_scale: float = 1.5,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Autoregressive many-step generation, one frame at a time.

    Each new frame is denoised with `steps` Euler steps from pure noise while the last
    clip_len - 1 frames (real context, then the frame's own predecessors) are held clean.
    cfg_scale > 1 applies classifier-free guidance on actions (one doubled batch per step).
    context (B, Fc, C, h, w); actions (B, N, A) for the N frames to generate -> (B, N, C, h, w).
    """
    frames, acts = context, context_actions
    B, N = actions.shape[:2]
    out = []
    for i in range(N):
        ctx, ctx_a = frames[:, -(clip_len - 1):], acts[:, -(clip_len - 1):]
        a = torch.cat([ctx_a, actions[:, i:i + 1]], 1)  # (B, F, A)
        F = a.shape[1]
        noise = torch.randn((B, 1, *context.shape[2:]), generator=generator,
                            device=context.device, dtype=context.dtype)

        def velocity(x_new, t, ctx=ctx, a=a, F=F):
            x = torch.cat([ctx, x_new], 1)
            tt = torch.zeros(B, F, device=x.device, dtype=x.dtype)
            tt[:, -1] = t
            if cfg_scale == 1.0:
                return model(x, tt, a, mode=mode)[:, -1:]
            keep = torch.tensor([True] * B + [False] * B, device=x.device)
            v = model(x.repeat(2, 1, 1, 1, 1), tt.repeat(2, 1), a.repeat(2, 1, 1), mode=mode,
                      action_mask=keep)[:, -1:]
            return flow.cfg_combine(v[:B], v[B:], cfg_scale)

        new = flow.euler_sample(velocity, noise, steps, shift)
        out.append(new)
        frames = torch.cat([frames, new], 1)[:, -(clip_len - 1):]
        acts = torch.cat([acts, actions[:, i:i + 1]], 1)[:, -(clip_len - 1):]
    return torch.cat(out, 1)

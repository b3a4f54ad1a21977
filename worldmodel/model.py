"""The world model's network: a diffusion transformer (DiT) over frame latents.

One network plays both roles of the pipeline:

- teacher: `forward(x, t, actions, mode="bidirectional")` over a whole clip;
- student: `forward(..., mode="causal", window=W, sinks=S)` in training, and at play time
  `forward_step(x, t, actions, cache)` one frame (or chunk) at a time with a `KVCache`.

Inputs are latents x (B, F, C, h, w), a flow time t (B, F) and an action (B, F, A) per frame;
the output is the velocity, shaped like x. The flow time and the action of a frame modulate
that frame's tokens through AdaLN-Zero; attention uses 3D RoPE over (frame, row, col) and
RMS-normalised queries and keys.

With `prev_frame`, frame i's tokens also embed the latent the network was given for frame i - 1
(zeros before the first frame), through a zero-initialised patch projection. It is the network's
own input shifted by one frame, so it means the same in every use: when one new frame is
denoised after clean frames (the teacher's rollout, the student's step) it is the clean previous
frame, as in DIAMOND's frame stacking; a context frame's predecessor carries the context noise it
was given; and frames noised together (training clips, DMD scores) see their predecessor at its
own noise level, so a bidirectional teacher cannot read a frame's clean latent off its successor.
The cache keeps the last frame it was written, which is what the next step's first frame sees.
With `prev_warp` as well, that previous latent is first moved by a zoom and a shift read off
the frame's action by a zero-initialised linear map (`DiT.warp_prev`), learnt with the rest.

Attention rule, at frame level: in causal mode frame i sees frame j <= i; with a window W only
if i - j < W, unless j < S (the first S frames are sinks, visible to every later frame). A
`KVCache` made by `init_cache(batch, window=W, sinks=S)` keeps the S sink frames and the last
W - 1 frames, so `forward_step` sees exactly what `forward(mode="causal", window=W, sinks=S)`
sees. Cached keys are stored before RoPE and get their frame positions by order at every step
(sinks 0..S-1, then the window), which keeps positions bounded over a session of any length;
without sinks that is a uniform shift of absolute positions, which RoPE cannot tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from worldmodel.actions import ACTION_DIM, KEYS
from worldmodel.attention import attention, dense_block_mask, frame_block_mask


@dataclass(frozen=True)
class DiTConfig:
    latent_channels: int = 8
    latent_size: int = 8  # latent height = width
    patch_size: int = 1
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    action_dim: int = ACTION_DIM
    action_freqs: int = 8  # sinusoids per camera axis (see `action_features`)
    max_frames: int = 16  # the clip length the preset is meant to train on; nothing is sized by it
    qk_norm: bool = True
    rope_theta: float = 10000.0
    freq_dim: int = 256  # width of the sinusoidal flow-time features
    attn_backend: str = "auto"  # see worldmodel.attention
    # Frame stacking (DIAMOND, GameNGen): each frame's tokens also embed the previous frame's
    # input latent, so "nothing moved" is a copy rather than a lookup through attention.
    prev_frame: bool = False
    # With prev_frame: the previous latent is first moved by a zoom and a shift that a
    # zero-initialised linear map reads off the frame's action (see `DiT.warp_prev`), so that
    # walking forward or turning is a copy of the moved frame rather than a lookup.
    prev_warp: bool = False

    def __post_init__(self) -> None:
        if self.prev_warp and not self.prev_frame:
            raise ValueError("prev_warp needs prev_frame")
        if self.latent_size % self.patch_size:
            raise ValueError("latent_size must be a multiple of patch_size")
        if self.dim % self.heads or (self.dim // self.heads) % 2 or self.dim // self.heads < 6:
            raise ValueError("dim / heads must be an even head size of at least 6 (3D RoPE)")

    @property
    def grid(self) -> int:  # patches per side
        return self.latent_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# ---------------------------------------------------------------------------------------------
# Helpers


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, F, C, h, w) -> (B, F, N, p*p*C), tokens in row-major patch order."""
    B, Fr, C, h, w = x.shape
    x = x.reshape(B, Fr, C, h // p, p, w // p, p)
    return x.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, Fr, (h // p) * (w // p), p * p * C)


def unpatchify(x: Tensor, p: int, h: int, w: int) -> Tensor:
    """(B, F, N, p*p*C) -> (B, F, C, h, w); the inverse of `patchify`."""
    B, Fr = x.shape[:2]
    x = x.reshape(B, Fr, h // p, w // p, p, p, -1)
    return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, Fr, -1, h, w)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of flow time t in [0, 1]: (...) -> (..., dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * freqs  # scaled so that small steps in t are visible
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def action_features(actions: Tensor, freqs: int) -> Tensor:
    """Action vectors (..., A) -> (..., A + 4 * freqs * cameras): the vector itself, then each
    camera axis as sines and cosines at `freqs` frequencies from 1 to 100. Most frames move
    the mouse by a few hundredths, which as a raw input the network barely notices; at
    these frequencies even such small values give features of order one."""
    if freqs == 0:
        return actions
    cam = actions[..., len(KEYS):].float()  # (..., cameras)
    f = torch.logspace(0, 2, freqs, device=actions.device)  # 1 .. 100
    args = (cam[..., None] * f).flatten(-2)  # (..., cameras * freqs)
    return torch.cat([actions.float(), torch.sin(args), torch.cos(args)], dim=-1)


def frame_mask(
    q_time: Tensor, k_time: Tensor, *, causal: bool, window: int | None = None, sinks: int = 0
) -> Tensor:
    """Which frames see which: (Fq,), (Fk,) frame indices -> bool (Fq, Fk), True = visible."""
    if window is not None and not causal:
        raise ValueError("window and sinks apply to causal attention only")
    d = q_time[:, None] - k_time[None, :]  # (Fq, Fk)
    visible = d >= 0 if causal else torch.ones_like(d, dtype=torch.bool)
    if window is not None:
        visible = visible & ((d < window) | (k_time[None, :] < sinks))
    return visible


def rope_angles(frame_pos: Tensor, grid: int, head_dim: int, theta: float) -> Tensor:
    """RoPE angles for every token of frames at `frame_pos` (F,): -> float64 (F*grid*grid, Dh/2).

    The head is split as in Wan: Dh - 4*(Dh//6) dims rotate with the frame, 2*(Dh//6) with the
    row and as many with the column. Angles are float64 so that positions of 1e6 stay exact.
    """
    dev = frame_pos.device
    spatial = 2 * (head_dim // 6)

    def freqs(n: int) -> Tensor:  # n dims -> n/2 inverse frequencies
        return theta ** -(torch.arange(0, n, 2, dtype=torch.float64, device=dev) / n)

    f = frame_pos.double()[:, None] * freqs(head_dim - 2 * spatial)  # (F, nf)
    r = torch.arange(grid, dtype=torch.float64, device=dev)[:, None] * freqs(spatial)  # (g, ns)
    Fr, g = f.shape[0], grid
    return torch.cat(
        [
            f[:, None, None].expand(Fr, g, g, -1),
            r[None, :, None].expand(Fr, g, g, -1),  # row
            r[None, None, :].expand(Fr, g, g, -1),  # column
        ],
        dim=-1,
    ).reshape(Fr * g * g, head_dim // 2)


def rope_tables(angles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pair angles (L, Dh/2) float64 -> cos, sin (L, Dh) in `dtype`, as `apply_rope` takes them."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1).to(dtype), torch.cat([-sin, sin], dim=-1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair of dims (k, k + Dh/2) of x (B, H, L, Dh); cos, sin from `rope_tables`."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------
# Blocks


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.backend = cfg.heads, cfg.attn_backend
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        norm = (lambda: nn.RMSNorm(cfg.head_dim, eps=1e-6)) if cfg.qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, rope_q, rope_k, mask, past=None, extra=None):
        """x (B, L, D); rope_q for the L queries, rope_k for extra + past + L keys; past (k, v)
        or None; extra: token indices (Le,) or per row (B, Le) among past + L of keys repeated
        in front (see `KVCache.layout`), or None. Returns the output (B, L, D) and this
        input's (k, v), unrotated, for a KV cache."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        if isinstance(self.q_norm, nn.RMSNorm):  # both norms in one call: the same numbers
            w = torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None, None, None]
            q, k = F.rms_norm(qkv[:2], qkv.shape[-1:], eps=self.q_norm.eps) * w
        else:
            q, k = qkv[0], qkv[1]
        v = qkv[2]
        new = (k, v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, Lpast + L, Dh)
            v = torch.cat([past[1], v], dim=2)
        if extra is not None:
            if extra.dim() == 1:
                k = torch.cat([k.index_select(2, extra), k], 2)
                v = torch.cat([v.index_select(2, extra), v], 2)
            else:
                index = extra[:, None, :, None]
                k = torch.cat([torch.take_along_dim(k, index, dim=2), k], 2)
                v = torch.cat([torch.take_along_dim(v, index, dim=2), v], 2)
        q, k = apply_rope(q, *rope_q), apply_rope(k, *rope_k)
        out = attention(q, k, v, mask=mask, backend=self.backend)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, L, D)), new


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each modulated and gated per frame (AdaLN-Zero)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.dim
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x, c, rope_q, rope_k, mask, past=None, extra=None):
        """x (B, F, N, D), c (B, F, D) -> x (B, F, N, D), (k, v) of this block's attention."""
        B, Fr, N, D = x.shape
        mods = self.ada(c)[:, :, None].chunk(6, dim=-1)  # 6 x (B, F, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = modulate(self.norm1(x), shift1, scale1).reshape(B, Fr * N, D)
        h, kv = self.attn(h, rope_q, rope_k, mask, past, extra)  # (B, F*N, D)
        x = x + gate1 * h.view(B, Fr, N, D)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x, kv


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.linear = nn.Linear(cfg.dim, cfg.patch_size**2 * cfg.latent_channels)

    def forward(self, x, c):
        """x (B, F, N, D), c (B, F, D) -> (B, F, N, p*p*C)."""
        shift, scale = self.ada(c)[:, :, None].chunk(2, dim=-1)  # (B, F, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of past frames for `DiT.forward_step`, in constant memory.

    Per layer, S sink slots keep the first S frames of the session for good, and a ring of
    W - 1 slots keeps the most recent frames; with the frame being generated that is the
    W-frame window of `forward(mode="causal", window=W, sinks=S)`. Keys are stored after the
    QK-norm and before RoPE. One tensor holds everything and is never reallocated. All rows of
    the batch advance together. The cache carries no autograd history.
    """

    def __init__(
        self,
        cfg: DiTConfig,
        batch_size: int,
        window: int,
        sinks: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        storage: Tensor | None = None,
        last: Tensor | None = None,
    ):
        """storage, last: existing tensors to keep the keys and values and the last frame in
        (one row of a `SlotKVCache`); by default the cache allocates its own."""
        if window < 1 or sinks < 0:
            raise ValueError(f"need window >= 1 and sinks >= 0, got {window}, {sinks}")
        self.window, self.sinks, self.ring = window, sinks, window - 1
        self.tokens_per_frame = N = cfg.tokens_per_frame
        shape = (cfg.depth, 2, batch_size, cfg.heads, (sinks + self.ring) * N, cfg.head_dim)
        if storage is not None and tuple(storage.shape) != shape:
            raise ValueError(f"storage must be {shape}, got {tuple(storage.shape)}")
        # (layer, k/v, B, H, slots*N, Dh)
        self.kv = storage if storage is not None else torch.zeros(shape, device=device, dtype=dtype)
        # The last frame written (B, C, h, w), which the next frame sees as its predecessor.
        self.last = None
        if cfg.prev_frame:
            last_shape = (batch_size, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
            self.last = last if last is not None else torch.zeros(
                last_shape, device=self.kv.device, dtype=self.kv.dtype)
        self.tables: dict = {}  # per-step tensors of `DiT.step_tables`, by `layout_key`
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames written since the start of the session
        if self.last is not None:
            self.last.zero_()
        # Frame index held by each filled slot. Sinks fill first and the ring in order, so the
        # filled slots are always a prefix of the buffer.
        self.slot_time: list[int] = []

    def past(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """(k, v) of the filled slots, each (B, H, slots*N, Dh), or None when empty."""
        if not self.slot_time:
            return None
        n = len(self.slot_time) * self.tokens_per_frame
        return self.kv[layer, 0, :, :, :n], self.kv[layer, 1, :, :, :n]

    def _layout(self, slot_time: list[int], frames: int, chunk: int):
        """Frame times (Fk,), RoPE positions (Fk,) and visibility (chunk, Fk) of the keys of
        one step from a cache holding `slot_time` after `frames` frames: the filled slots,
        then `chunk` new frames. Sinks get positions 0..S-1, the ring frames (by time) the next
        ones, and the new frames continue after them."""
        n_sinks = min(len(slot_time), self.sinks)
        first = min(slot_time[n_sinks:], default=frames)  # oldest frame in the ring
        times = torch.tensor(slot_time + list(range(frames, frames + chunk)))
        pos = torch.where(torch.arange(len(times)) < n_sinks, times, n_sinks + times - first)
        visible = frame_mask(
            times[-chunk:], times, causal=True, window=self.window, sinks=self.sinks
        )
        return times, pos, visible

    def layout(self, chunk: int, split: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
        """RoPE frame positions (E + Fk,) float64, visibility (chunk, E + Fk) and the extra
        keys (E,) for one step: the filled slots, then `chunk` new frames (see `_layout`).

        split = n: the chunk's first n frames are cached in this very pass (the sampler's
        fused write), and every frame must see what it would see if they had been written in
        a pass of their own first. The ring then moves between the two groups of queries, so
        the sinks sit one frame nearer to the later group than the single positions of
        `_layout` put them. E extra keys repeat those sinks at the positions the later group
        needs: extra[e] is the index, among the Fk keys, of the frame that extra key e
        repeats, and its position and visibility come first. extra is None when no key needs
        repeating (always without sinks, where the move is a uniform shift)."""
        times, pos, visible = self._layout(self.slot_time, self.frames, chunk)
        if not split or not self.sinks:
            return pos.double(), visible, None
        n = len(self.slot_time)
        column = {int(u): i for i, u in enumerate(times)}  # frame time -> key index
        entries = {(i, int(p)): i for i, p in enumerate(pos)}  # (key, position) -> column
        extra: list[tuple[int, int]] = []  # (key repeated, its position)
        wants: list[list[tuple[int, int]]] = []  # per query, the (key, position)s it sees
        groups = ((self.slot_time, self.frames, 0, split), (*self._after(split), split, chunk))
        for slot_time, frames, q0, q1 in groups:
            ref_times, ref_pos, ref_visible = self._layout(slot_time, frames, q1 - q0)
            for j in range(q0, q1):
                q_ref = int(ref_pos[len(slot_time) + j - q0])
                shift = int(pos[n + j]) - q_ref  # this query's position here minus there
                seen = ref_visible[j - q0].tolist()
                wants.append([(column[int(u)], int(p) + shift)
                              for u, p, v in zip(ref_times, ref_pos, seen) if v])
                for key in wants[-1]:
                    if key not in entries:
                        entries[key] = -1 - len(extra)
                        extra.append(key)
        if not extra:
            return pos.double(), visible, None
        E = len(extra)
        all_pos = torch.tensor([p for _, p in extra] + pos.tolist(), dtype=torch.float64)
        all_visible = torch.zeros(chunk, E + len(times), dtype=torch.bool)
        for j, seen in enumerate(wants):
            for key in seen:
                c = entries[key]
                all_visible[j, E + c if c >= 0 else -1 - c] = True
        return all_pos, all_visible, torch.tensor([k for k, _ in extra])

    def layout_key(self, chunk: int, split: int = 0) -> tuple:
        """A key under which `layout(chunk, split)` repeats: the slots' frame times relative
        to the next frame, the sinks' as they are (0..S-1). The layout depends on nothing
        else (the order of the slots tells which one a fused write fills), so a session
        cycles through a few keys."""
        return (chunk, split, tuple(t if t < self.sinks else t - self.frames
                                    for t in self.slot_time))

    def _writes(self, frames: int, chunk: int):
        """(j, time, slot) of each frame j of a chunk appended after `frames` frames that
        takes a slot: a frame evicted within the chunk itself takes none."""
        for j in range(chunk):
            time, slot = frames + j, self._slot(frames + j)
            if slot is None or (time >= self.sinks and frames + chunk - time > self.ring):
                continue
            yield j, time, slot

    def _after(self, n: int) -> tuple[list[int], int]:
        """slot_time and frames once n more frames are appended, the cache left as it is."""
        slot_time = list(self.slot_time)
        for _, time, slot in self._writes(self.frames, n):
            # A chunk may fill ring slots out of order; by its end they form a prefix again.
            slot_time += [-1] * (slot + 1 - len(slot_time))
            slot_time[slot] = time
        return slot_time, self.frames + n

    def _slot(self, time: int) -> int | None:
        if time < self.sinks:
            return time
        return self.sinks + (time - self.sinks) % self.ring if self.ring else None

    def previous(self) -> Tensor | None:
        """The last frame written (B, 1, C, h, w), zeros before any; None without prev_frame."""
        return None if self.last is None else self.last[:, None]

    @torch.no_grad()
    def append(self, new_kv: list[tuple[Tensor, Tensor]], last: Tensor | None = None) -> None:
        """Write a chunk's (k, v) per layer, each (B, H, chunk*N, Dh), evicting the oldest;
        `last` (B, C, h, w) is the chunk's last frame (needed with prev_frame)."""
        if self.last is not None:
            if last is None:
                raise ValueError("a prev_frame model's cache needs the chunk's last frame")
            self.last.copy_(last)
        N = self.tokens_per_frame
        chunk = new_kv[0][0].shape[2] // N
        for j, _, slot in self._writes(self.frames, chunk):
            for layer, (k, v) in enumerate(new_kv):
                self.kv[layer, 0, :, :, slot * N : (slot + 1) * N] = k[:, :, j * N : (j + 1) * N]
                self.kv[layer, 1, :, :, slot * N : (slot + 1) * N] = v[:, :, j * N : (j + 1) * N]
        self.slot_time, self.frames = self._after(chunk)


class SlotKVCache:
    """The KV caches of `rows` independent sessions in one tensor, for one batched
    `DiT.forward_step` over all of them (the scheduler of `worldmodel.scheduler`).

    Row r is `slots[r]`, a `KVCache` of batch 1 that is a view into the shared tensor, with a
    frame count and ring of its own: rows join, leave and advance at different times. Only
    the rows flagged in `active` take a step's keys and values. Every step attends over all
    S + W - 1 slots of every row, with the unfilled ones masked out, and always through a
    mask: the shapes, and so the kernels, of a step never depend on the rows' states, which
    is what keeps a row's numbers independent of the other rows of the batch.
    """

    def __init__(
        self,
        cfg: DiTConfig,
        rows: int,
        window: int,
        sinks: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.shared = KVCache(cfg, rows, window, sinks, device, dtype)
        last = self.shared.last
        self.slots = [
            KVCache(cfg, 1, window, sinks, storage=self.shared.kv[:, :, r : r + 1],
                    last=None if last is None else last[r : r + 1])
            for r in range(rows)
        ]
        self.n_slots = sinks + window - 1
        self.active = [True] * rows
        self.tables: dict = {}  # as KVCache.tables

    def reset(self) -> None:
        for c in self.slots:
            c.reset()

    def layout_key(self, chunk: int, split: int = 0) -> tuple:
        """A key under which `layout(chunk, split)` repeats: every row's (see KVCache's)."""
        return (chunk, split, *(c.layout_key(chunk, split) for c in self.slots))

    def past(self, layer: int) -> tuple[Tensor, Tensor]:
        """(k, v) of every slot of every row, each (rows, H, slots*N, Dh)."""
        return self.shared.kv[layer, 0], self.shared.kv[layer, 1]

    def layout(self, chunk: int, split: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per row: RoPE positions (rows, Fk), visibility (rows, chunk, Fk) and, with a split
        (see `KVCache.layout`), the extra keys (rows, E), over E = S extra keys, every slot
        and then the chunk, Fk = E + slots + chunk. A row's unfilled slots and unused extra
        keys are invisible; extra[r, e] indexes row r's slots."""
        S = self.n_slots
        E = self.shared.sinks if split else 0
        pos = torch.zeros(len(self.slots), E + S + chunk, dtype=torch.float64)
        visible = torch.zeros(len(self.slots), chunk, E + S + chunk, dtype=torch.bool)
        extra = torch.zeros(len(self.slots), E, dtype=torch.long) if E else None
        for r, c in enumerate(self.slots):
            p, v, x = c.layout(chunk, split)  # extra keys, filled slots, then the chunk
            e, n = 0 if x is None else len(x), len(c.slot_time)
            pos[r, :e], pos[r, E:E + n], pos[r, E + S:] = p[:e], p[e:e + n], p[e + n:]
            visible[r, :, :e] = v[:, :e]
            visible[r, :, E:E + n], visible[r, :, E + S:] = v[:, e:e + n], v[:, e + n:]
            if e:  # always filled sinks: a frame becomes a sink while the ring is empty
                extra[r, :e] = x
        return pos, visible, extra

    def previous(self) -> Tensor | None:
        """Every row's last frame written (rows, 1, C, h, w); None without prev_frame."""
        return self.shared.previous()

    @torch.no_grad()
    def append(self, new_kv: list[tuple[Tensor, Tensor]], last: Tensor | None = None) -> None:
        """Write a chunk's (k, v) per layer, each (rows, H, chunk*N, Dh), and its last frame
        (rows, C, h, w), into the active rows."""
        for r, c in enumerate(self.slots):
            if self.active[r]:
                c.append([(k[r : r + 1], v[r : r + 1]) for k, v in new_kv],
                         None if last is None else last[r : r + 1])


# ---------------------------------------------------------------------------------------------
# Model


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.dim, cfg.patch_size
        self.patch_embed = nn.Linear(p * p * cfg.latent_channels, D)
        if cfg.prev_frame:
            self.prev_embed = nn.Linear(p * p * cfg.latent_channels, D)
        if cfg.prev_warp:
            self.warp = nn.Linear(cfg.action_dim, 3)  # action -> log zoom, shift x, shift y
        self.t_embed = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        n_action = action_features(torch.zeros(cfg.action_dim), cfg.action_freqs).shape[-1]
        self.a_embed = nn.Sequential(nn.Linear(n_action, D), nn.SiLU(), nn.Linear(D, D))
        self.null_action = nn.Parameter(torch.zeros(D))  # stands in for a dropped action (CFG)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Flow time as in DiT. The action embedding keeps its Xavier start: small action
        # features next to a large time embedding would leave the actions unheard for long.
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        nn.init.normal_(self.null_action, std=0.02)
        # AdaLN-Zero: every block starts as the identity and the output as zero velocity.
        for ada in [b.ada for b in self.blocks] + [self.final.ada]:
            nn.init.zeros_(ada[1].weight)
            nn.init.zeros_(ada[1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        if self.cfg.prev_frame:  # starts as the model without it (and as its checkpoint)
            nn.init.zeros_(self.prev_embed.weight)
        if self.cfg.prev_warp:  # starts as the identity: the plain previous frame
            nn.init.zeros_(self.warp.weight)
            nn.init.zeros_(self.warp.bias)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, x, t, actions, action_mask=None, first_prev=None) -> tuple[Tensor, Tensor]:
        """x (B, F, C, h, w), t (B, F), actions (B, F, A), action_mask (B, F) or (B,),
        first_prev (B, 1, C, h, w) the frame before x[:, 0] (zeros if None; prev_frame only)
        -> tokens (B, F, N, D) and per-frame conditioning c (B, F, D)."""
        dtype = self.patch_embed.weight.dtype
        p = self.cfg.patch_size
        tokens = self.patch_embed(patchify(x, p).to(dtype))  # (B, F, N, D)
        if self.cfg.prev_frame:
            if first_prev is None:
                first_prev = torch.zeros_like(x[:, :1])
            prev = torch.cat([first_prev.to(x.dtype), x[:, :-1]], dim=1)  # (B, F, C, h, w)
            if self.cfg.prev_warp:
                prev = self.warp_prev(prev, actions, action_mask)
            tokens = tokens + self.prev_embed(patchify(prev, p).to(dtype))  # (B, F, N, D)
        c = self.t_embed(timestep_embedding(t, self.cfg.freq_dim).to(dtype))  # (B, F, D)
        a = self.a_embed(action_features(actions, self.cfg.action_freqs).to(dtype))  # (B, F, D)
        if action_mask is not None:
            keep = action_mask.reshape(actions.shape[0], -1, 1).bool()  # (B, F or 1, 1)
            a = torch.where(keep, a, self.null_action.to(dtype))
        return tokens, c + a

    def warp_prev(self, prev: Tensor, actions: Tensor, action_mask: Tensor | None) -> Tensor:
        """Move each previous latent (B, F, C, h, w) by the zoom and shift its frame's action
        (B, F, A) maps to: a zoom about the centre for walking, a shift for turning, looking up
        or down and strafing. A dropped action (action_mask False) leaves the frame unmoved."""
        B, Fr, C, h, w = prev.shape
        z, sx, sy = self.warp(actions.to(self.warp.weight.dtype)).unbind(-1)  # (B, F) each
        if action_mask is not None:
            keep = action_mask.reshape(B, -1).to(z.dtype).expand(B, Fr)
            z, sx, sy = z * keep, sx * keep, sy * keep
        s = torch.exp(-z)  # zooming in samples a smaller region of the previous frame
        zero = torch.zeros_like(s)
        theta = torch.stack([torch.stack([s, zero, sx], -1), torch.stack([zero, s, sy], -1)], -2)
        theta = theta.reshape(B * Fr, 2, 3).to(prev.dtype)
        grid = F.affine_grid(theta, [B * Fr, C, h, w], align_corners=False)
        moved = F.grid_sample(prev.reshape(B * Fr, C, h, w), grid, mode="bilinear",
                              padding_mode="border", align_corners=False)
        return moved.reshape(B, Fr, C, h, w)

    def rope(self, frame_pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Frame positions (F,) -> cos, sin (F*N, Dh) for every token of those frames; positions
        per batch row (B, F) -> cos, sin (B, 1, F*N, Dh)."""
        cfg = self.cfg
        angles = rope_angles(frame_pos.flatten(), cfg.grid, cfg.head_dim, cfg.rope_theta)
        if frame_pos.dim() == 2:  # each frame's tokens are contiguous, so rows split evenly
            angles = angles.view(frame_pos.shape[0], 1, -1, angles.shape[-1])
        return rope_tables(angles, dtype)

    def token_mask(self, visible: Tensor, device=None) -> Tensor | None:
        """Frame visibility (Fq, Fk) -> token mask (Fq*N, Fk*N) on `device`, None if all visible.
        Per batch row (B, Fq, Fk) -> (B, 1, Fq*N, Fk*N), always a mask (see `SlotKVCache`)."""
        N = self.cfg.tokens_per_frame
        if visible.dim() == 3:
            if self.cfg.attn_backend == "flex":
                raise ValueError("per-row masks (a SlotKVCache) need a dense backend, not flex")
            return visible.to(device).repeat_interleave(N, 1).repeat_interleave(N, 2)[:, None]
        if bool(visible.all()):
            return None
        mask = visible.to(device).repeat_interleave(N, 0).repeat_interleave(N, 1)
        return dense_block_mask(mask) if self.cfg.attn_backend == "flex" else mask

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        actions: Tensor,
        *,
        mode: str = "causal",
        window: int | None = None,
        sinks: int = 0,
        frame_offset: int = 0,
        action_mask: Tensor | None = None,
        features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocity for a whole clip.

        x (B, F, C, h, w) latents at flow times t (B, F); actions (B, F, A); action_mask
        (B, F) or (B,), False = dropped action. mode "causal" (frame-causal, optionally within
        a window of W frames plus S sink frames) or "bidirectional". frame_offset shifts the
        RoPE frame positions. Returns (B, F, C, h, w); with features=True also the last
        block's tokens (B, F, N, D), which DMD's discriminator head reads.
        """
        cfg = self.cfg
        B, Fr, C, h, w = x.shape
        if mode not in ("causal", "bidirectional"):
            raise ValueError(f"mode must be 'causal' or 'bidirectional', got {mode!r}")
        causal = mode == "causal"
        tokens, c = self.embed(x, t, actions, action_mask)  # (B, F, N, D), (B, F, D)
        frames = torch.arange(Fr)  # frame-level masks are tiny and stay on the CPU
        rope = self.rope((frames + frame_offset).to(x.device), tokens.dtype)  # 2 x (F*N, Dh)
        visible = frame_mask(frames, frames, causal=causal, window=window, sinks=sinks)
        if cfg.attn_backend == "flex" and not bool(visible.all()):
            mask = frame_block_mask(Fr, cfg.tokens_per_frame, causal, window, sinks, str(x.device))
        else:
            mask = self.token_mask(visible, x.device)  # (F*N, F*N) or None
        for block in self.blocks:
            tokens, _ = block(tokens, c, rope, rope, mask)
        out = unpatchify(self.final(tokens, c), cfg.patch_size, h, w)  # (B, F, C, h, w)
        return (out, tokens) if features else out

    def init_cache(
        self, batch_size: int, window: int, sinks: int = 0, device=None, dtype=None
    ) -> KVCache:
        """An empty cache for `forward_step`, for attention over `window` frames + `sinks`."""
        w = self.patch_embed.weight
        return KVCache(self.cfg, batch_size, window, sinks, device or w.device, dtype or w.dtype)

    def step_tables(self, cache: KVCache | SlotKVCache, chunk: int, split: int, device,
                    dtype: torch.dtype) -> tuple:
        """RoPE tables of the queries and the keys, the token mask and the extra keys' token
        indices of a `forward_step` over `cache.layout(chunk, split)`, each computed once per
        `cache.layout_key` and kept in the cache: in a session every step repeats a few."""
        key = (cache.layout_key(chunk, split), self.cfg, device, dtype)
        if key in cache.tables:
            return cache.tables[key]
        pos, visible, extra = cache.layout(chunk, split)
        cos, sin = self.rope(pos.to(device), dtype)  # (Fk*N, Dh) or (B, 1, Fk*N, Dh)
        n_q = chunk * self.cfg.tokens_per_frame
        rope_q, rope_k = (cos[..., -n_q:, :], sin[..., -n_q:, :]), (cos, sin)
        mask = self.token_mask(visible, device)  # (Fc*N, Fk*N), (B, 1, Fc*N, Fk*N) or None
        if extra is not None:  # frame indices -> token indices
            N = self.cfg.tokens_per_frame
            extra = (extra[..., None] * N + torch.arange(N)).flatten(-2).to(device)
        if len(cache.tables) >= 64:  # a bound for caches that never settle
            cache.tables.clear()
        cache.tables[key] = rope_q, rope_k, mask, extra
        return cache.tables[key]

    def forward_step(
        self,
        x: Tensor,
        t: Tensor,
        actions: Tensor,
        cache: KVCache | SlotKVCache,
        *,
        write: bool | int = False,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """Velocity for a chunk of new frames given the cached past.

        x (B, Fc, C, h, w) at flow times t (B, Fc), actions (B, Fc, A). The chunk attends to
        the cache and frame-causally to itself. write=True appends the chunk's keys and values
        to the cache afterwards (call it with the clean frames at t = 0); write=n appends
        those of the first n frames only. `cache` is a `KVCache`, or a `SlotKVCache` whose
        rows each have their own past. Returns (B, Fc, C, h, w).
        """
        cfg = self.cfg
        B, Fc, C, h, w = x.shape
        tokens, c = self.embed(x, t, actions, action_mask, cache.previous())  # (B, Fc, N, D)
        # Extra keys, the cached frames, then the chunk: (Fk,), (Fc, Fk), (E,); per row (B, Fk),
        # (B, Fc, Fk), (B, E). A fused write (write=n) needs the extra keys, see KVCache.layout.
        split = 0 if isinstance(write, bool) else int(write)
        rope_q, rope_k, mask, extra = self.step_tables(cache, Fc, split, x.device, tokens.dtype)
        new_kv = []
        for layer, block in enumerate(self.blocks):
            tokens, kv = block(tokens, c, rope_q, rope_k, mask, cache.past(layer), extra)
            new_kv.append(kv)
        if write:
            n = (Fc if write is True else int(write)) * cfg.tokens_per_frame
            last = x[:, n // cfg.tokens_per_frame - 1] if cfg.prev_frame else None
            cache.append([(k[:, :, :n], v[:, :, :n]) for k, v in new_kv], last)
        out = self.final(tokens, c)  # (B, Fc, N, p*p*C)
        return unpatchify(out, cfg.patch_size, h, w)


# ---------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, DiTConfig] = {
    # Unit tests: 4x4 latents, 16 tokens per frame.
    "tiny": DiTConfig(latent_channels=4, latent_size=4, dim=64, depth=2, heads=2, max_frames=8),
    # 64x64 frames through an 8x tokenizer, 2x2 patches: 16 tokens per frame, so that 4
    # denoising steps + a cache write + decoding fit a 2-core CPU in real time.
    "cpu": DiTConfig(latent_channels=8, latent_size=8, patch_size=2, dim=192, depth=6, heads=3),
    # The same network on the 16x16 latents of a 4x tokenizer (`cpu-4x`): 4x4 patches keep
    # 16 tokens per frame, so only the patch embedding and the output layer grow.
    "cpu-16": DiTConfig(latent_channels=8, latent_size=16, patch_size=4, dim=192, depth=6, heads=3),
    # 128x128 and 256x256 frames on a GPU.
    "gpu-128": DiTConfig(
        latent_channels=8, latent_size=16, patch_size=2, dim=512, depth=12, heads=8, max_frames=32
    ),
    "gpu-256": DiTConfig(
        latent_channels=8, latent_size=32, patch_size=2, dim=768, depth=16, heads=12, max_frames=32
    ),
}


def get_config(name: str, **overrides) -> DiTConfig:
    """A named preset, with any field overridden: get_config("cpu", depth=4)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)

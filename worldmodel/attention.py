"""Attention backends behind one function.

`attention(q, k, v, mask=..., backend=...)` takes q (B, H, Lq, Dh) and k, v (B, H, Lk, Dh) and
returns (B, H, Lq, Dh). `mask` is a boolean tensor broadcastable to (B, H, Lq, Lk) where True
means "may attend", or (for "flex" only) a flex_attention BlockMask.

  sdpa      torch.nn.functional.scaled_dot_product_attention; the default everywhere
  flash     flash_attn.flash_attn_func; CUDA, fp16/bf16, no mask
  xformers  xformers.ops.memory_efficient_attention; CUDA
  flex      torch.nn.attention.flex_attention with a BlockMask (block-sparse training masks)
  math      plain matmul + softmax, the reference the others are tested against
  auto      flash or xformers where they apply, otherwise sdpa

Optional libraries are imported lazily, so this module costs nothing where they are absent.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flash", "xformers", "flex", "math")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _is_block_mask(mask: object) -> bool:
    return type(mask).__name__ == "BlockMask"


def _flex_supported() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on `device` in this environment."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    out = ["sdpa", "math"]
    if _flex_supported():
        out.append("flex")
    if cuda and _installed("flash_attn"):
        out.append("flash")
    if cuda and _installed("xformers"):
        out.append("xformers")
    return out


def _all_true(mask: Tensor | None) -> bool:
    return mask is None or (isinstance(mask, Tensor) and bool(mask.all()))


def resolve_backend(q: Tensor, mask: object, backend: str = "auto") -> str:
    """The concrete backend `attention` uses for these inputs."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
        return backend
    if _is_block_mask(mask):
        return "flex"
    if q.is_cuda and mask is None:
        if q.dtype in (torch.float16, torch.bfloat16) and _installed("flash_attn"):
            return "flash"
        if _installed("xformers"):
            return "xformers"
    return "sdpa"


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: object = None, backend: str = "auto"
) -> Tensor:
    """Scaled dot-product attention. q (B, H, Lq, Dh), k/v (B, H, Lk, Dh) -> (B, H, Lq, Dh)."""
    name = resolve_backend(q, mask, backend)
    if _is_block_mask(mask) and name != "flex":
        raise ValueError(f"a BlockMask needs the flex backend, not {name!r}")
    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if name == "math":
        return _math(q, k, v, mask)
    if name == "flex":
        return _flex(q, k, v, mask)
    if name == "flash":
        return _flash(q, k, v, mask)
    return _xformers(q, k, v, mask)


def _math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v)


def _flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    # flash-attn only knows token-level causal/sliding masks, not frame blocks.
    if not _all_true(mask):
        raise ValueError("the flash backend takes no mask; use sdpa or flex for block masks")
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, L, H, Dh)
    return out.transpose(1, 2)


def _xformers(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    from xformers.ops import memory_efficient_attention

    bias = None
    if not _all_true(mask):
        B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        # xformers wants the bias's last dim padded to a multiple of 8 in memory.
        padded = torch.zeros(B, H, Lq, -(-Lk // 8) * 8, dtype=q.dtype, device=q.device)
        bias = padded[..., :Lk]
        bias.masked_fill_(~mask.expand(B, H, Lq, Lk), float("-inf"))
    out = memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
    )  # (B, L, H, Dh)
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, mask: object) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    if isinstance(mask, Tensor):
        if mask.dim() != 2:
            raise ValueError("flex takes a BlockMask or a 2-D (Lq, Lk) boolean mask")
        mask = dense_block_mask(mask)
    # Eager flex_attention materialises the scores; compiled, it is a fused block-sparse kernel.
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=mask)


def dense_block_mask(mask: Tensor):
    """A flex_attention BlockMask from a boolean (Lq, Lk) token mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[q_idx, kv_idx]

    return create_block_mask(mask_mod, None, None, mask.shape[0], mask.shape[1], device=mask.device)


@functools.lru_cache(maxsize=32)
def frame_block_mask(
    frames: int,
    tokens_per_frame: int,
    causal: bool = True,
    window: int | None = None,
    sinks: int = 0,
    device: str = "cpu",
):
    """A flex_attention BlockMask over `frames` frames of `tokens_per_frame` tokens each.

    causal: a token of frame i sees frames <= i (otherwise every frame sees every frame);
    window W: frame i sees frames i-W+1..i; sinks S: frames 0..S-1 stay visible to all later
    frames. The same rule as `worldmodel.model.frame_mask`, written as a mask_mod so flex can
    skip whole blocks.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if window is not None and not causal:
        raise ValueError("a window applies to causal attention only")
    N = tokens_per_frame

    def mask_mod(b, h, q_idx, kv_idx):
        qf, kf = q_idx // N, kv_idx // N
        ok = kf <= qf if causal else kf >= 0
        if window is not None:
            ok = ok & ((qf - kf < window) | (kf < sinks))
        return ok

    L = frames * N
    return create_block_mask(mask_mod, None, None, L, L, device=device)

"""`wm eval` with a play-time variant of the attention sinks or of the cached frames, for the ablation.

    python scripts/sink_variants.py gap G -- [wm eval arguments]
    python scripts/sink_variants.py bias B -- [wm eval arguments]
    python scripts/sink_variants.py reencode -- [wm eval arguments]
    python scripts/sink_variants.py warp K -- [wm eval arguments]
    python scripts/sink_variants.py refresh N -- [wm eval arguments]

The shipped cache gives the S sinks RoPE frame positions 0..S-1 and the window the positions
right after them, so the first frames of a session always look a frame or two old.

- gap G: the window's positions move as many frames past the sinks as have really been
  evicted between them, up to G, so the sinks look up to G frames older (G = 0 is the shipped
  layout). The first frames after the context are placed exactly as in training.
- bias B: every query's attention logits on the sink keys are lowered by B (B = 0 is the
  shipped attention), so the network leans on its own recent frames more.
- reencode: every generated frame is decoded to uint8 pixels and encoded again by the
  checkpoint's tokenizer before it goes into the cache, so the network only ever sees
  latents of real images; the frames shown are the generated ones, as shipped.
- warp K (a `--prev-warp` model): the zoom and shift that the network reads off each action
  are scaled by K before the previous frame is moved (K = 1 is the shipped network, K = 0
  gives it the previous frame unmoved), so that a held forward key zooms its own last frame
  less each step.

- refresh N: every N generated frames the cache starts again from the student's own last
  context-length frames, written as the session's context is (clean, into the sinks), so
  the sinks hold a view at most N frames old instead of the session's first one.

None is a sampler option: they change `worldmodel.model` or `worldmodel.sampling` for this
process only, and the eval's streams that use a KV cache (student, student init) see them.
"""

from __future__ import annotations

import argparse
import sys

import torch

import worldmodel.model as m
from worldmodel import cli, sampling
from worldmodel.checkpoint import load_tokenizer
from worldmodel.session import resolve_checkpoint
from worldmodel.tokenizer import Tokenizer, frames_to_tensor, tensor_to_frames


def use_gap(gap: int):
    """Patch the cache's layout; returns a function that undoes it."""
    layout, layout_key = m.KVCache._layout, m.KVCache.layout_key

    def evicted(self, slot_time: list[int], frames: int) -> int:
        if not self.sinks or len(slot_time) < self.sinks:
            return 0
        first = min(slot_time[self.sinks:], default=frames)  # oldest frame in the window
        return min(first - self.sinks, gap)

    def _layout(self, slot_time, frames, chunk):
        times, pos, visible = layout(self, slot_time, frames, chunk)
        shift = evicted(self, slot_time, frames)
        pos = torch.where(torch.arange(len(times)) < self.sinks, pos, pos + shift)
        return times, pos, visible

    def key(self, chunk, split=0):  # the layout now also depends on the frames evicted
        return layout_key(self, chunk, split) + (evicted(self, self.slot_time, self.frames),)

    m.KVCache._layout, m.KVCache.layout_key = _layout, key

    def undo() -> None:
        m.KVCache._layout, m.KVCache.layout_key = layout, layout_key

    return undo


def use_bias(bias: float):
    """Patch attention; returns a function that undoes it. The sink keys' count comes from the
    cache of the step in progress and the model's tokens per frame."""
    forward, forward_step = m.Attention.forward, m.DiT.forward_step
    sink_tokens: list[int] = []  # sink keys of the step in progress

    def stepping(self, x, t, actions, cache, **kw):
        sink_tokens.append(cache.sinks * self.cfg.tokens_per_frame
                           if isinstance(cache, m.KVCache) else 0)  # one session only
        try:
            return forward_step(self, x, t, actions, cache, **kw)
        finally:
            sink_tokens.pop()

    def biased(self, x, rope_q, rope_k, mask, past=None, extra=None):
        n = sink_tokens[-1] if sink_tokens else 0
        if n and past is not None and past[0].shape[2] >= n and (
                mask is None or isinstance(mask, torch.Tensor) and mask.dim() == 2):
            n_extra = 0 if extra is None else extra.shape[-1]  # repeated sink keys come first
            L = x.shape[1]
            b = torch.zeros(L, n_extra + past[0].shape[2] + L, dtype=x.dtype, device=x.device)
            if mask is not None:
                b = b.masked_fill(~mask, float("-inf"))
            b[:, :n_extra + n] -= bias
            mask = b
        return forward(self, x, rope_q, rope_k, mask, past, extra)

    m.Attention.forward, m.DiT.forward_step = biased, stepping

    def undo() -> None:
        m.Attention.forward, m.DiT.forward_step = forward, forward_step

    return undo


def use_reencode(tokenizer: Tokenizer):
    """Patch the sampler's cache input; returns a function that undoes it."""
    cache_input = sampling.StudentSampler.cache_input

    def reencoded(self, x0, generator):
        with torch.no_grad():
            pixels = tensor_to_frames(tokenizer.decode(x0.float()))
            z = tokenizer.encode(frames_to_tensor(pixels)).to(x0.dtype)
        return cache_input(self, z, generator)

    sampling.StudentSampler.cache_input = reencoded

    def undo() -> None:
        sampling.StudentSampler.cache_input = cache_input

    return undo


def use_warp(scale: float):
    """Patch the warp of the previous frame; returns a function that undoes it."""
    warp_prev = m.DiT.warp_prev

    def scaled(self, prev, actions, action_mask):
        hook = self.warp.register_forward_hook(lambda _mod, _inp, out: out * scale)
        try:
            return warp_prev(self, prev, actions, action_mask)
        finally:
            hook.remove()

    m.DiT.warp_prev = scaled

    def undo() -> None:
        m.DiT.warp_prev = warp_prev

    return undo


def use_refresh(every: int):
    """Patch the sampler's step; returns a function that undoes it."""
    step, prefill = sampling.StudentSampler.step, sampling.StudentSampler.prefill

    def prefilled(self, latents, actions, row=None):
        if row is not None:
            raise ValueError("refresh runs one session per sampler, not a SlotKVCache")
        prefill(self, latents, actions)
        self._recent = (latents, actions)
        self._since = 0

    def stepped(self, actions, generator=None, exit_step=None, rows=None):
        x0 = step(self, actions, generator, exit_step, rows)
        n = self.cfg.context_length
        lat, act = self._recent
        self._recent = (torch.cat([lat, x0], 1)[:, -n:], torch.cat([act, actions], 1)[:, -n:])
        self._since += x0.shape[1]
        if self._since >= every:
            prefill(self, *self._recent)
            self._since = 0
        return x0

    sampling.StudentSampler.step, sampling.StudentSampler.prefill = stepped, prefilled

    def undo() -> None:
        sampling.StudentSampler.step, sampling.StudentSampler.prefill = step, prefill

    return undo


def main() -> int:
    argv = sys.argv[1:]
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", choices=["gap", "bias", "reencode", "warp", "refresh"])
    ap.add_argument("amount", type=float, nargs="?", help="G, B, K or N (not for reencode)")
    args = ap.parse_args(ours)
    if (args.amount is None) != (args.variant == "reencode"):
        ap.error("gap, bias, warp and refresh take an amount, reencode none")
    if args.variant == "gap":
        use_gap(int(args.amount))
    elif args.variant == "bias":
        use_bias(args.amount)
    elif args.variant == "warp":
        use_warp(args.amount)
    elif args.variant == "refresh":
        use_refresh(int(args.amount))
    else:
        eval_args = argparse.ArgumentParser(add_help=False)
        eval_args.add_argument("--checkpoint", default="default")
        folder = resolve_checkpoint(eval_args.parse_known_args(rest)[0].checkpoint)
        use_reencode(load_tokenizer(folder / "tokenizer", "cpu")[0])
    return cli.main(["eval", *rest])


if __name__ == "__main__":
    sys.exit(main())

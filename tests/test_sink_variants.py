"""scripts/sink_variants.py: the ablation's play-time variants of the sinks do what they say."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from tests.test_model import A, make_inputs, make_model, run_steps
from worldmodel.actions import KEYS
from worldmodel.sampling import StudentConfig, StudentSampler
from worldmodel.tokenizer import TOKENIZER_PRESETS, Tokenizer, frames_to_tensor, tensor_to_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location(
    "sink_variants", Path(__file__).parents[1] / "scripts" / "sink_variants.py")
sink_variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sink_variants)


@pytest.fixture
def patched():
    undo = []
    yield lambda f, *args: undo.append(f(*args))
    for u in reversed(undo):
        u()


@torch.no_grad()
def test_a_gap_past_every_eviction_is_the_training_layout(patched):
    # With the gap at least the frames evicted, every frame sits at its own time: the
    # cached steps are then forward(mode="causal") over the whole clip, sinks and all.
    model = make_model()
    W, S, F = 2, 2, 9
    x, t, a = make_inputs(model, B=1, F=F)
    full = model(x, t, a, mode="causal", window=W, sinks=S)
    shipped = run_steps(model, model.init_cache(1, window=W, sinks=S), x, t, a)
    patched(sink_variants.use_gap, F)
    steps = run_steps(model, model.init_cache(1, window=W, sinks=S), x, t, a)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=0)
    assert not torch.allclose(shipped[:, -1], full[:, -1])  # the shipped layout differs there


@torch.no_grad()
def test_a_gap_is_capped_and_keyed():
    model = make_model()
    undo = sink_variants.use_gap(2)
    try:
        cache = model.init_cache(1, window=2, sinks=4)
        positions, keys = [], set()
        for frames in range(4, 12):  # ring of 1 holding frame frames - 1 (empty at 4)
            cache.slot_time = [0, 1, 2, 3] + ([frames - 1] if frames > 4 else [])
            cache.frames = frames
            positions.append(cache.layout(1)[0].tolist()[4:])
            keys.add(cache.layout_key(1))
    finally:
        undo()
    assert positions[:4] == [[4], [4, 5], [5, 6], [6, 7]]  # 0, 0, 1, 2 frames evicted
    assert all(p == [6, 7] for p in positions[4:])  # then capped at 2
    assert len(keys) == 4
    assert model.init_cache(1, window=2, sinks=4).layout_key(1) == (1, 0, ())  # undone


@torch.no_grad()
@pytest.mark.parametrize("bias", [0.0, 50.0])
def test_sink_bias(patched, bias):
    # 0 is the shipped attention; 50 all but mutes the sinks once they are written
    model = make_model()
    W, S, F = 2, 2, 8
    x, t, a = make_inputs(model, B=1, F=F)
    shipped = run_steps(model, model.init_cache(1, window=W, sinks=S), x, t, a)
    patched(sink_variants.use_bias, bias)
    quiet = run_steps(model, model.init_cache(1, window=W, sinks=S), x, t, a)
    if not bias:
        torch.testing.assert_close(quiet, shipped, atol=1e-10, rtol=0)
        return
    torch.testing.assert_close(quiet[:, :S], shipped[:, :S], atol=1e-10, rtol=0)  # no sinks yet
    # with the sinks muted, a late frame sees only its window: as a cache without sinks
    no_sinks = run_steps(model, model.init_cache(1, window=W), x, t, a)
    torch.testing.assert_close(quiet[:, -1], no_sinks[:, -1], atol=1e-6, rtol=0)
    assert not torch.allclose(shipped[:, -1], no_sinks[:, -1], atol=1e-6)


@torch.no_grad()
def test_sink_bias_reaches_the_repeated_sink_keys_of_a_fused_write(patched):
    # A fused write repeats the sink keys in front (`KVCache.layout`); the bias must lower
    # them too, or the fused sampler would part from the one that writes separately.
    model = make_model()
    cfg = StudentConfig(steps=2, window=2, sinks=2, context_length=2)
    x, _, a = make_inputs(model, B=1, F=8)
    patched(sink_variants.use_bias, 2.0)
    outs = []
    for fuse in (True, False):
        sampler = StudentSampler(model, cfg, fuse_write=fuse)
        sampler.prefill(x[:, :2], a[:, :2])
        g = torch.Generator().manual_seed(0)
        outs.append(torch.cat([sampler.step(a[:, i:i + 1], g) for i in range(2, 8)], 1))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-9, rtol=0)


@torch.no_grad()
def test_reencode_caches_the_tokenizers_own_latents(patched):
    # The frames returned are the generated ones; what the cache is given is the tokenizer's
    # encoding of their uint8 pixels, and undoing the patch gives the shipped input back.
    torch.manual_seed(0)
    tok = Tokenizer(TOKENIZER_PRESETS["tiny"]).eval()
    model = make_model()
    sampler = StudentSampler(model, StudentConfig(window=2, context_length=1), 1)
    x0 = torch.randn(1, 1, model.cfg.latent_channels, model.cfg.latent_size, model.cfg.latent_size)
    shipped, _ = sampler.cache_input(x0, None)
    patched(sink_variants.use_reencode, tok)
    cached, t = sampler.cache_input(x0, None)
    expected = tok.encode(frames_to_tensor(tensor_to_frames(tok.decode(x0))))
    torch.testing.assert_close(cached, expected)
    assert not torch.allclose(cached, shipped) and bool((t == 0).all())
    sink_variants.use_reencode(tok)()  # a second patch's undo restores the first
    torch.testing.assert_close(sampler.cache_input(x0, None)[0], expected)


@torch.no_grad()
def test_a_scaled_warp_is_the_warp_of_a_scaled_map(patched):
    # Scaling the zoom and shift by K is a network whose warp map is K times its own; K = 0
    # hands it the previous frame unmoved.
    model = make_model(prev_frame=True, prev_warp=True)
    h = model.cfg.latent_size
    prev = torch.randn(1, 3, model.cfg.latent_channels, h, h, dtype=torch.float64)
    a = torch.zeros(1, 3, A, dtype=torch.float64)
    a[0, 1, 0] = 1.0
    a[0, 2, len(KEYS)] = 1.0
    model.warp.weight.zero_()
    model.warp.bias.zero_()
    model.warp.weight[0, 0] = math.log(2.0)
    model.warp.weight[1, len(KEYS)] = 4.0 / h
    full = model.warp_prev(prev, a, None)
    half_map = make_model(prev_frame=True, prev_warp=True)
    half_map.load_state_dict(model.state_dict())
    half_map.warp.weight.mul_(0.5)
    want = half_map.warp_prev(prev, a, None)
    patched(sink_variants.use_warp, 0.5)
    half = model.warp_prev(prev, a, None)
    torch.testing.assert_close(half, want)
    assert not torch.allclose(half[:, 1:], full[:, 1:])
    patched(sink_variants.use_warp, 0.0)
    torch.testing.assert_close(model.warp_prev(prev, a, None), prev)


@torch.no_grad()
def test_refresh_restarts_the_cache_from_the_last_generated_frames(patched):
    # After every N generated frames the session goes on as a fresh sampler would that was
    # given the last context-length generated frames (and their actions) as its context.
    model = make_model(prev_frame=True)
    cfg = StudentConfig(steps=2, window=3, sinks=2, context_length=2)
    x, _, a = make_inputs(model, B=1, F=8)
    ctx, ctx_a, acts = x[:, :2], a[:, :2], a[:, 2:]

    def play(sampler, actions, g):
        return torch.cat([sampler.step(actions[:, i:i + 1], g) for i in range(actions.shape[1])], 1)

    g = torch.Generator().manual_seed(0)
    shipped = StudentSampler(model, cfg, 1)
    shipped.prefill(ctx, ctx_a)
    first = play(shipped, acts[:, :3], g)
    fresh = StudentSampler(model, cfg, 1)
    fresh.prefill(first[:, 1:], acts[:, 1:3])
    want = torch.cat([first, play(fresh, acts[:, 3:], g)], 1)
    g.manual_seed(0)
    kept = StudentSampler(model, cfg, 1)
    kept.prefill(ctx, ctx_a)
    unrefreshed = play(kept, acts, g)
    patched(sink_variants.use_refresh, 3)
    g.manual_seed(0)
    refreshed = StudentSampler(model, cfg, 1)
    refreshed.prefill(ctx, ctx_a)
    got = play(refreshed, acts, g)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert not torch.allclose(got[:, 3:], unrefreshed[:, 3:])  # the refresh changed them

"""The DiT's hard parts: masks, 3D RoPE, the KV cache against the uncached forward, attention
backends against each other, and that it learns. Tiny configs only; the file runs in seconds."""

from __future__ import annotations

import math
import time

import pytest
import torch

from worldmodel.actions import KEYS
from worldmodel.attention import attention, available_backends, frame_block_mask
from worldmodel.model import (
    DiT,
    action_features,
    apply_rope,
    frame_mask,
    get_config,
    patchify,
    rope_angles,
    rope_tables,
    unpatchify,
)
from worldmodel.sampling import StudentConfig, StudentSampler, clamp_channel_means

A = 8  # action dim


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(dtype=torch.float64, seed=0, **overrides) -> DiT:
    """A tiny DiT with every weight random. AdaLN-Zero starts each block as the identity and
    the output as zero, which would make most comparisons below trivially true."""
    torch.manual_seed(seed)
    model = DiT(get_config("tiny", **overrides)).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
            else:
                p.normal_(0, 0.1)
    return model.eval()


def make_inputs(model: DiT, B: int, F: int, seed=1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    dtype = model.patch_embed.weight.dtype
    shape = (B, F, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    x = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.rand(B, F, generator=g, dtype=dtype)
    a = torch.randn(B, F, A, generator=g, dtype=dtype)
    return x, t, a


def run_steps(model, cache, x, t, a, chunk=1):
    """Feed frames through forward_step in chunks, writing each chunk; outputs (B, F, ...)."""
    outs = []
    for i in range(0, x.shape[1], chunk):
        s = slice(i, i + chunk)
        outs.append(model.forward_step(x[:, s], t[:, s], a[:, s], cache, write=True))
    return torch.cat(outs, dim=1)


def expected_mask(F, causal=True, window=None, sinks=0):
    m = torch.zeros(F, F, dtype=torch.bool)
    for i in range(F):
        for j in range(F):
            ok = j <= i or not causal
            if window is not None:
                ok = ok and (i - j < window or j < sinks)
            m[i, j] = ok
    return m


# ---------------------------------------------------------------------------------------------
# 1. Shapes, patches, RoPE


@torch.no_grad()
def test_forward_shapes_and_presets():
    model = make_model()
    x, t, a = make_inputs(model, B=2, F=3)
    for mode in ("bidirectional", "causal"):
        assert model(x, t, a, mode=mode).shape == x.shape
    for name in ("tiny", "cpu", "cpu-16", "gpu-128", "gpu-256"):
        get_config(name)  # every named size builds
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_config("tiny", patch_size=3)
    assert get_config("cpu", depth=3).depth == 3
    with pytest.raises(KeyError):
        get_config("nope")


@torch.no_grad()
def test_action_mask_replaces_action_by_null():
    model = make_model()
    x, t, a = make_inputs(model, B=2, F=3)
    a2 = torch.randn_like(a)
    drop = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(model(x, t, a, action_mask=drop), model(x, t, a2, action_mask=drop))
    keep = torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(model(x, t, a, action_mask=keep), model(x, t, a))
    assert not torch.allclose(model(x, t, a), model(x, t, a2))


def test_action_features_make_small_mouse_moves_visible():
    a = torch.zeros(3, 8)
    a[1, 6], a[2, 6] = 0.02, -0.02  # a small yaw either way
    f = action_features(a, 8)
    assert f.shape == (3, 8 + 2 * 2 * 8)
    assert torch.equal(f[:, :8], a)  # the vector itself comes first
    assert (f[1] - f[0]).abs().max() > 0.5 and (f[1] - f[2]).abs().max() > 0.5
    assert torch.equal(action_features(a, 0), a)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 4, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 3, 16, 16)
    # token 1 is the patch at row 0, column 1
    assert torch.equal(tokens[0, 0, 1].view(2, 2, 4), x[0, 0, :, 0:2, 2:4].permute(1, 2, 0))
    assert torch.equal(unpatchify(tokens, 2, 8, 8), x)


def test_rope_is_a_rotation_and_relative():
    torch.manual_seed(0)
    Dh, grid, F = 32, 3, 4
    q, k = torch.randn(2, 1, 2, F * grid * grid, Dh, dtype=torch.float64)
    pos = torch.arange(F, dtype=torch.float64)

    def rot(x, p):
        return apply_rope(x, *rope_tables(rope_angles(p, grid, Dh, 10000.0), torch.float64))

    assert torch.allclose(rot(q, pos).norm(dim=-1), q.norm(dim=-1), atol=1e-12)
    dots = rot(q, pos) @ rot(k, pos).transpose(-1, -2)
    for shift in (10_000.0, 1e6):
        shifted = rot(q, pos + shift) @ rot(k, pos + shift).transpose(-1, -2)
        assert torch.allclose(shifted, dots, atol=1e-9)
    assert not torch.allclose(rot(q, pos + 1.0), rot(q, pos))


# ---------------------------------------------------------------------------------------------
# 2. Masks


def test_frame_masks():
    F, N = 7, 3
    fr = torch.arange(F)
    causal = frame_mask(fr, fr, causal=True)
    assert torch.equal(causal, torch.ones(F, F, dtype=torch.bool).tril())
    assert torch.equal(frame_mask(fr, fr, causal=False), torch.ones(F, F, dtype=torch.bool))
    for window, sinks in [(2, 0), (3, 0), (3, 1), (2, 2), (1, 3)]:
        got = frame_mask(fr, fr, causal=True, window=window, sinks=sinks)
        assert torch.equal(got, expected_mask(F, window=window, sinks=sinks)), (window, sinks)
    # token level: block lower-triangular
    model = make_model()
    tokens = model.token_mask(causal)
    N = model.cfg.tokens_per_frame
    block = torch.kron(torch.ones(F, F).tril(), torch.ones(N, N)).bool()
    assert torch.equal(tokens, block)
    assert model.token_mask(frame_mask(fr, fr, causal=False)) is None


@torch.no_grad()
def test_causal_outputs_ignore_the_future():
    model = make_model()
    x, t, a = make_inputs(model, B=2, F=5)
    j = 2
    x2, a2 = x.clone(), a.clone()
    x2[:, j] += 1.0
    a2[:, j] += 1.0
    for mode in ("causal", "bidirectional"):
        before, after = model(x, t, a, mode=mode), model(x2, t, a2, mode=mode)
        changed = [not torch.allclose(before[:, f], after[:, f], atol=1e-12) for f in range(5)]
        if mode == "causal":
            assert changed == [False, False, True, True, True]
        else:
            assert all(changed)


# ---------------------------------------------------------------------------------------------
# 3-4. Cached step-by-step == uncached full forward


PREV = [{}, {"prev_frame": True}, {"prev_frame": True, "prev_warp": True}]


@torch.no_grad()
@pytest.mark.parametrize("prev", PREV)
@pytest.mark.parametrize("chunk", [1, 2])
def test_cached_steps_equal_causal_forward(chunk, prev):
    model = make_model(**prev)
    F = 6
    x, t, a = make_inputs(model, B=2, F=F)
    full = model(x, t, a, mode="causal")
    steps = run_steps(model, model.init_cache(2, window=F), x, t, a, chunk)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=0)


@torch.no_grad()
def test_prev_frame_embeds_the_input_shifted_by_one_frame():
    """Frame i's tokens gain prev_embed of frame i - 1's input; frame 0 gains that of zeros,
    or of the frame a cache holds. A future frame's latent never reaches an earlier frame."""
    model = make_model(prev_frame=True)
    x, t, a = make_inputs(model, B=2, F=4)
    base = make_model()
    base.load_state_dict(model.state_dict(), strict=False)
    tokens, c = model.embed(x, t, a)
    plain, c0 = base.embed(x, t, a)
    torch.testing.assert_close(c, c0, atol=0, rtol=0)
    W, b = model.prev_embed.weight, model.prev_embed.bias
    px = patchify(x, model.cfg.patch_size)  # (B, F, N, p*p*C)
    torch.testing.assert_close(tokens[:, 0] - plain[:, 0], b.expand_as(plain[:, 0]))
    for i in range(1, 4):
        torch.testing.assert_close(tokens[:, i] - plain[:, i], px[:, i - 1] @ W.T + b)
    cache = model.init_cache(2, window=4)
    run_steps(model, cache, x[:, :2], t[:, :2], a[:, :2])
    assert torch.equal(cache.previous()[:, 0], x[:, 1])
    stepped, _ = model.embed(x[:, 2:], t[:, 2:], a[:, 2:], first_prev=cache.previous())
    torch.testing.assert_close(stepped, tokens[:, 2:])


@torch.no_grad()
def test_zero_prev_projection_is_the_model_without_it():
    """A fresh prev_frame model starts as the model without the feature: loaded with the
    other's weights, it gives the same velocities in every mode and through the cache."""
    base = make_model()
    fresh = DiT(get_config("tiny", prev_frame=True))
    assert not fresh.prev_embed.weight.any() and not fresh.prev_embed.bias.any()
    model = make_model(prev_frame=True)
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["prev_embed.bias", "prev_embed.weight"]
    x, t, a = make_inputs(base, B=2, F=5)
    assert not torch.allclose(model(x, t, a, mode="causal"), base(x, t, a, mode="causal"))
    model.load_state_dict(base.state_dict() | {k: torch.zeros_like(v) for k, v in
                                               model.prev_embed.state_dict(prefix="prev_embed.")
                                               .items()})
    for kw in (dict(mode="causal"), dict(mode="bidirectional"), dict(mode="causal", window=2)):
        torch.testing.assert_close(model(x, t, a, **kw), base(x, t, a, **kw), atol=0, rtol=0)
    steps = run_steps(model, model.init_cache(2, window=3), x, t, a)
    torch.testing.assert_close(steps, run_steps(base, base.init_cache(2, window=3), x, t, a),
                               atol=0, rtol=0)


@torch.no_grad()
def test_prev_warp_moves_the_previous_frame_by_its_frames_action():
    """warp_prev shifts by whole cells and zooms about the centre as its linear map says,
    reads frame i's own action (the one that led into frame i), and leaves a dropped action
    (CFG's unconditional branch) unmoved. A fresh model's warp is the identity."""
    fresh = DiT(get_config("tiny", prev_frame=True, prev_warp=True))
    assert not fresh.warp.weight.any() and not fresh.warp.bias.any()
    model = make_model(prev_frame=True, prev_warp=True)
    h = model.cfg.latent_size
    ramp = torch.arange(h, dtype=torch.float64).expand(1, 1, 2, h, h)  # value = column
    prev = ramp.expand(1, 3, 2, h, h).clone()
    a = torch.zeros(1, 3, A, dtype=torch.float64)
    a[0, 1, 0] = 1.0  # forward, frame 1 only
    a[0, 2, len(KEYS)] = 1.0  # yaw, frame 2 only
    with torch.no_grad():
        model.warp.weight.zero_()
        model.warp.bias.zero_()
        model.warp.weight[0, 0] = math.log(2.0)  # forward: zoom in twice
        model.warp.weight[1, len(KEYS)] = 2.0 * 2 / h  # yaw: sample 2 cells to the right
    moved = model.warp_prev(prev, a, None)
    assert torch.equal(moved[:, 0], prev[:, 0])
    # zoom 2 about the centre: column c shows (c + 0.5) / 2 + h / 4 - 0.5 of the ramp
    cols = (torch.arange(h, dtype=torch.float64) + 0.5) / 2 + h / 4 - 0.5
    torch.testing.assert_close(moved[0, 1, 0, 0], cols)
    torch.testing.assert_close(moved[0, 2, 0, 0, : h - 2], prev[0, 2, 0, 0, 2:])
    assert torch.equal(moved[0, 2, 0, 0, h - 2:], torch.full((2,), h - 1.0, dtype=torch.float64))
    dropped = model.warp_prev(prev, a, torch.tensor([False]))
    assert torch.equal(dropped, prev)
    # embed warps the shifted input: frame i's tokens see frame i - 1 moved by action i
    x, t, _ = make_inputs(model, B=1, F=3)
    tokens, _ = model.embed(x, t, a)
    plain = make_model(prev_frame=True)
    plain.load_state_dict(model.state_dict(), strict=False)
    want, _ = plain.embed(x, t, a)  # the same network without the warp
    torch.testing.assert_close(tokens[:, 0], want[:, 0])  # zeros before frame 0 stay zeros
    assert not torch.allclose(tokens[:, 1], want[:, 1])  # frame 1's forward zooms frame 0
    assert not torch.allclose(tokens[:, 2], want[:, 2])
    shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    w = model.warp_prev(shifted, a, None)
    p = model.cfg.patch_size
    ref = plain.patch_embed(patchify(x, p)) + plain.prev_embed(patchify(w, p))
    torch.testing.assert_close(tokens, ref)


@torch.no_grad()
def test_denoising_calls_do_not_touch_the_cache():
    model = make_model()
    x, t, a = make_inputs(model, B=1, F=4)
    cache = model.init_cache(1, window=4)
    run_steps(model, cache, x[:, :3], t[:, :3], a[:, :3])
    kv = cache.kv.clone()
    first = model.forward_step(x[:, 3:], t[:, 3:], a[:, 3:], cache)
    for _ in range(3):
        again = model.forward_step(x[:, 3:], t[:, 3:], a[:, 3:], cache)
    assert torch.equal(first, again) and torch.equal(cache.kv, kv) and cache.frames == 3


@torch.no_grad()
@pytest.mark.parametrize("prev", PREV)
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_ring_buffer_equals_banded_forward(chunk, prev):
    model = make_model(**prev)
    W, F = 3, 9  # F > 2W: the ring wraps around several times
    x, t, a = make_inputs(model, B=2, F=F)
    full = model(x, t, a, mode="causal", window=W)
    assert not torch.allclose(full, model(x, t, a, mode="causal"))
    steps = run_steps(model, model.init_cache(2, window=W), x, t, a, chunk)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=0)


@torch.no_grad()
def test_sinks():
    model = make_model()
    W, S, F = 3, 2, 30
    x, t, a = make_inputs(model, B=1, F=F)
    # Until the window slides past the sinks, cache positions are the absolute ones.
    full = model(x[:, : S + W], t[:, : S + W], a[:, : S + W], mode="causal", window=W, sinks=S)
    cache = model.init_cache(1, window=W, sinks=S)
    steps = run_steps(model, cache, x[:, : S + W], t[:, : S + W], a[:, : S + W])
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=0)
    # Later, the sink frames stay in the cache and keep positions 0..S-1, the window S.. .
    sink_kv = cache.kv[:, :, :, :, : S * model.cfg.tokens_per_frame].clone()
    out = run_steps(model, cache, x[:, S + W :], t[:, S + W :], a[:, S + W :])
    assert torch.equal(cache.kv[:, :, :, :, : S * model.cfg.tokens_per_frame], sink_kv)
    assert cache.slot_time[:S] == [0, 1] and sorted(cache.slot_time[S:]) == [F - 2, F - 1]
    pos, visible, extra = cache.layout(1)
    assert pos.tolist() == [0, 1] + [2 + f - (F - 2) for f in cache.slot_time[S:]] + [4]
    assert visible.all() and extra is None
    assert torch.isfinite(out).all()
    no_sinks = run_steps(model, model.init_cache(1, window=W), x, t, a)
    assert not torch.allclose(out[:, -1], no_sinks[:, -1])


# ---------------------------------------------------------------------------------------------
# 5-6. Long sessions: positions and memory


@torch.no_grad()
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_frame_offset_does_not_change_outputs(dtype, atol):
    model = make_model(dtype)
    x, t, a = make_inputs(model, B=2, F=4)
    for kw in (dict(mode="causal"), dict(mode="bidirectional"), dict(mode="causal", window=2)):
        ref = model(x, t, a, **kw)
        torch.testing.assert_close(
            model(x, t, a, frame_offset=10_000, **kw), ref, atol=atol, rtol=0
        )
        torch.testing.assert_close(model(x, t, a, frame_offset=10**6, **kw), ref, atol=atol, rtol=0)


@torch.no_grad()
def test_long_session_stays_exact_at_constant_memory():
    """1,000+ cached steps, then the last frame against a fresh banded forward over the frames
    that can still influence it (depth * (W - 1) back); the buffer is never reallocated."""
    model = make_model(torch.float32)
    W, steps = 3, 1_030
    cone = model.cfg.depth * (W - 1) + 1
    cache = model.init_cache(1, window=W)
    ptr, nbytes = cache.kv.data_ptr(), cache.kv.nbytes
    g = torch.Generator().manual_seed(3)
    recent = []
    start = time.perf_counter()
    for i in range(steps):
        x = torch.randn(1, 1, 4, 4, 4, generator=g)
        t, a = torch.rand(1, 1, generator=g), torch.randn(1, 1, A, generator=g)
        out = model.forward_step(x, t, a, cache, write=True)
        recent = (recent + [(x, t, a)])[-cone:]
        if i == 9:
            assert (cache.kv.data_ptr(), cache.kv.nbytes) == (ptr, nbytes)
    assert time.perf_counter() - start < 30
    assert (cache.kv.data_ptr(), cache.kv.nbytes) == (ptr, nbytes)
    assert cache.frames == steps and len(cache.slot_time) == W - 1
    assert cache.layout(1)[0].tolist() == list(range(W))  # positions stay small
    x, t, a = (torch.cat(z, dim=1) for z in zip(*recent, strict=True))
    full = model(x, t, a, mode="causal", window=W, frame_offset=steps - cone)
    torch.testing.assert_close(out[:, -1], full[:, -1], atol=1e-5, rtol=0)


def test_cache_reset():
    model = make_model()
    x, t, a = make_inputs(model, B=1, F=3)
    cache = model.init_cache(1, window=2, sinks=1)
    with torch.no_grad():
        first = run_steps(model, cache, x, t, a)
        cache.reset()
        assert cache.frames == 0 and cache.past(0) is None
        torch.testing.assert_close(run_steps(model, cache, x, t, a), first, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# 7. Attention backends


def _masks(F=4, N=8):
    fr = torch.arange(F)
    expand = lambda m: m.repeat_interleave(N, 0).repeat_interleave(N, 1)  # noqa: E731
    return {
        "none": None,
        "causal": expand(frame_mask(fr, fr, causal=True)),
        "banded": expand(frame_mask(fr, fr, causal=True, window=2)),
        "sinks": expand(frame_mask(fr, fr, causal=True, window=2, sinks=1)),
    }


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backends_equal_math(backend):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 32, 16).unbind(0)
    for name, mask in _masks().items():
        ref = attention(q, k, v, mask=mask, backend="math")
        out = attention(q, k, v, mask=mask, backend=backend)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{backend}, {name} mask")
    sdpa = attention(q, k, v, mask=_masks()["causal"], backend="sdpa")
    torch.testing.assert_close(sdpa, attention(q, k, v, mask=_masks()["causal"]), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_in_the_model():
    if "flex" not in available_backends("cpu"):
        pytest.skip("flex_attention is not in this torch")
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 32, 16).unbind(0)
    block = frame_block_mask(4, 8, causal=True, window=2, sinks=1)
    ref = attention(q, k, v, mask=_masks()["sinks"], backend="math")
    torch.testing.assert_close(attention(q, k, v, mask=block), ref, atol=1e-5, rtol=1e-5)
    sdpa, flex = make_model(torch.float32), make_model(torch.float32, attn_backend="flex")
    x, t, a = make_inputs(sdpa, B=1, F=3)
    with torch.no_grad():
        torch.testing.assert_close(
            flex(x, t, a, mode="causal", window=2), sdpa(x, t, a, mode="causal", window=2)
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_backends_equal_math_on_gpu():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 256, 64, device="cuda").unbind(0)
    for backend in available_backends("cuda"):
        for name, mask in _masks(F=8, N=32).items():
            if backend == "flash" and mask is not None:
                continue  # flash-attn takes no block mask
            mask = None if mask is None else mask.cuda()
            ref = attention(q, k, v, mask=mask, backend="math")
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
                if backend == "flash" and dtype == torch.float32:
                    continue
                out = attention(*(z.to(dtype) for z in (q, k, v)), mask=mask, backend=backend)
                torch.testing.assert_close(
                    out.float(), ref, atol=tol, rtol=tol, msg=f"{backend} {dtype} {name}"
                )


# ---------------------------------------------------------------------------------------------
# 8. It learns


def test_loss_falls():
    model = make_model(torch.float32)
    model.reset_parameters()  # the real initialisation, zero output included
    model.train()
    x, t, a = make_inputs(model, B=2, F=3)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(x, t, a, mode="causal", action_mask=torch.tensor([True, False]))
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


def test_forward_step_trains_through_the_current_chunk():
    """Self-forcing backpropagates through the frame being generated while the cache, written
    without history, keeps changing in place underneath."""
    model = make_model(torch.float32)
    x, t, a = make_inputs(model, B=1, F=4)
    cache = model.init_cache(1, window=2)
    loss = sum(
        model.forward_step(x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1], cache, write=True)
        .pow(2)
        .mean()
        for i in range(4)
    )
    loss.backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0


def test_fused_layout_repeats_the_sinks_for_the_new_frame():
    # Sinks 4, window 2 (a ring of 1), frames 0-5 written: the cache holds 0-3 and 5. A fused
    # pass writes frame 6 and generates 7. Written alone, 6 sees sinks at 0..3, 5 at 4 and
    # itself at 5; then 7 sees sinks at 0..3, 6 at 4, itself at 5. In one pass 7 sits at 6,
    # so it needs the sinks at 1..4: four extra keys, which only 7 sees.
    model = make_model()
    cache = model.init_cache(1, window=2, sinks=4)
    cache.slot_time, cache.frames = [0, 1, 2, 3, 5], 6
    pos, visible, extra = cache.layout(2, split=1)
    assert extra.tolist() == [0, 1, 2, 3]
    assert pos.tolist() == [1, 2, 3, 4] + [0, 1, 2, 3, 4, 5, 6]
    #                      extra sinks   sinks   5  6  7
    assert visible.tolist() == [[False] * 4 + [True] * 6 + [False],
                                [True] * 4 + [False] * 5 + [True, True]]
    plain = cache.layout(2)  # the same keys without a split: no extra ones
    assert plain[2] is None and plain[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    no_sinks = model.init_cache(1, window=3)
    no_sinks.slot_time, no_sinks.frames = [4, 5], 6
    assert no_sinks.layout(2, split=1)[2] is None  # without sinks the move is a uniform shift


@pytest.mark.parametrize("window,sinks", [(1, 0), (1, 2), (2, 0), (2, 4), (3, 1), (4, 0),
                                          (4, 3), (5, 5)])
def test_states_with_one_layout_key_have_one_layout(window, sinks):
    """`forward_step` keeps its RoPE tables and masks by `layout_key`: every cache state that
    shares a key must share the layout, for every chunk and fused split, from the first frame
    on (the sinks still filling) through many turns of the ring; and a session that steps
    one chunk size settles into a few keys, or the memo would buy nothing."""
    model = make_model()
    cache = model.init_cache(1, window=window, sinks=sinks)
    g = torch.Generator().manual_seed(window * 10 + sinks)
    seen: dict[tuple, tuple] = {}
    late = set()
    sizes = torch.randint(1, 4, (30,), generator=g).tolist() + [1] * 30
    for i, size in enumerate(sizes):
        for chunk in (1, 2, 3):
            for split in range(chunk):
                key, layout = cache.layout_key(chunk, split), cache.layout(chunk, split)
                if i >= 45 and (chunk, split) == (2, 1):
                    late.add(key)
                if key not in seen:
                    seen[key] = layout
                    continue
                for a, b in zip(seen[key], layout):
                    assert (a is None and b is None) or torch.equal(a, b), (key, i)
        cache.slot_time, cache.frames = cache._after(size)
    assert len(late) <= max(window - 1, 1)


@pytest.mark.parametrize("prev_frame,cache_level", [(False, 0.0), (True, 0.0), (True, 0.1),
                                                    ("warp", 0.1)])
@pytest.mark.parametrize("window,chunk,sinks", [(3, 1, 0), (4, 1, 0), (5, 2, 0), (2, 1, 4),
                                                (3, 1, 1), (2, 1, 3), (3, 2, 2), (4, 3, 5)])
def test_fused_cache_write_equals_a_separate_pass(window, chunk, sinks, prev_frame, cache_level):
    """The sampler caches each generated chunk inside the next chunk's first denoising pass;
    the frames are those of a separate write pass, over a session long enough to wrap the
    ring many times. With sinks, also while the sinks are still filling (more sinks than
    context frames, so that generated frames become sinks inside a fused pass)."""
    model = make_model(prev_frame=bool(prev_frame), prev_warp=prev_frame == "warp")
    cfg = StudentConfig(window=window, chunk=chunk, sinks=sinks, context_length=2,
                        cache_level=cache_level)
    x, _, a = make_inputs(model, B=2, F=2 + 12 * chunk)
    frames = {}
    for fuse in (False, True):
        play = StudentSampler(model, cfg, batch_size=2, fuse_write=fuse)
        play.prefill(x[:, :2], a[:, :2])
        g = torch.Generator().manual_seed(0)
        frames[fuse] = torch.cat([play.step(a[:, i:i + chunk], g)
                                  for i in range(2, a.shape[1], chunk)], 1)
        assert play.cache.frames == a.shape[1] - (chunk if fuse else 0)
    assert frames[True].abs().mean() > 0.1
    torch.testing.assert_close(frames[True], frames[False], atol=1e-9, rtol=0)


@torch.no_grad()
def test_mean_bounds_move_only_frames_outside_them():
    """The guard moves a frame's channel means into the bounds by a constant per channel and
    keeps the rest of the frame; a frame inside them, and a session whose frames all stay
    inside, are the sampler's without the guard bit for bit."""
    model = make_model()
    C = model.cfg.latent_channels
    x, _, a = make_inputs(model, B=2, F=8)
    lo = torch.full((C, 1, 1), -0.05, dtype=x.dtype)
    hi = torch.full((C, 1, 1), 0.05, dtype=x.dtype)
    moved = clamp_channel_means(x, lo, hi)
    mean, new = x.mean(dim=(-2, -1), keepdim=True), moved.mean(dim=(-2, -1), keepdim=True)
    assert (mean.abs() > 0.05).any()  # some channels start outside
    torch.testing.assert_close(new, mean.clamp(-0.05, 0.05))
    torch.testing.assert_close(moved - new, x - mean)  # the pattern is kept
    assert torch.equal(clamp_channel_means(x, lo - 10, hi + 10), x)

    def session(bounds):
        cfg = StudentConfig(window=3, context_length=2, mean_bounds=bounds)
        play = StudentSampler(model, cfg, batch_size=2)
        play.prefill(x[:, :2], a[:, :2])
        g = torch.Generator().manual_seed(0)
        return torch.cat([play.step(a[:, i:i + 1], g) for i in range(2, 8)], 1)

    free = session(None)
    tight = session([[-0.05] * C, [0.05] * C])
    assert (free.mean(dim=(-2, -1)).abs() > 0.05).any()
    assert (tight.mean(dim=(-2, -1)).abs() <= 0.05 + 1e-9).all()
    assert torch.equal(session([[-1e3] * C, [1e3] * C]), free)
    with pytest.raises(ValueError, match="mean_bounds"):
        session([[-1.0] * (C - 1), [1.0] * (C - 1)])
    with pytest.raises(ValueError, match="mean_bounds"):
        session([[1.0] * C, [-1.0] * C])


@torch.no_grad()
def test_cache_level_writes_generated_frames_renoised():
    """With cache_level s the cache holds (1 - s) x0 + s * noise of each generated frame, the
    noise drawn after the frame's steps; context frames and s = 0 stay clean."""
    model = make_model(prev_frame=True)
    x, _, a = make_inputs(model, B=1, F=3)
    s = 0.1
    play = StudentSampler(model, StudentConfig(window=4, cache_level=s), fuse_write=False)
    play.prefill(x[:, :2], a[:, :2])
    assert torch.equal(play.cache.previous(), x[:, 1:2])
    g = torch.Generator().manual_seed(0)
    x0 = play.step(a[:, 2:], g)
    replay = torch.Generator().manual_seed(0)
    for _ in range(len(play.timesteps)):  # the steps' noise, then the write's
        torch.randn(x0.shape, generator=replay, dtype=x0.dtype)
    noise = torch.randn(x0.shape, generator=replay, dtype=x0.dtype)
    torch.testing.assert_close(play.cache.previous(), (1 - s) * x0 + s * noise)
    clean = StudentSampler(model, StudentConfig(window=4), fuse_write=False)
    clean.prefill(x[:, :2], a[:, :2])
    assert torch.equal(clean.step(a[:, 2:], torch.Generator().manual_seed(0)), x0)
    assert torch.equal(clean.cache.previous(), x0)

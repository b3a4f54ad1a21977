import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from distill.sample import dream_teacher, parse_script, play_game
from distill.train_teacher import (
    TeacherTrainConfig,
    action_gain,
    blur,
    freeze_start,
    init_from,
    make_batch,
)
from distill.train_teacher import train as train_teacher
from worldmodel import flow
from worldmodel.actions import Action
from worldmodel.checkpoint import load_teacher, load_tokenizer
from worldmodel.model import DiT, get_config


def test_tiny_teacher_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = DiT(get_config("tiny"))
    x0 = torch.randn(4, 4, 4, 4, 4)
    actions = torch.rand(4, 4, 8)
    cfg = TeacherTrainConfig(action_dropout=0.0)
    x_t, t, keep, noise, weight = make_batch(x0, actions, cfg, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = flow.flow_loss(model(x_t, t, actions, mode="bidirectional", action_mask=keep),
                              x0, noise, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_make_batch_context_is_clean_and_unweighted():
    x0 = torch.randn(64, 6, 4, 4, 4)
    cfg = TeacherTrainConfig(context_noise=0.0, p_no_context=0.0)
    x_t, t, keep, noise, weight = make_batch(x0, torch.zeros(64, 6, 8), cfg,
                                             torch.Generator().manual_seed(1))
    ctx = weight == 0
    assert ctx[:, 0].all() and (~ctx[:, -1]).all()  # at least one context, one target frame
    assert torch.equal(x_t[ctx], x0[ctx]) and (t[ctx] == 0).all()
    # context is a prefix of each clip
    assert (ctx.int().diff(dim=1) <= 0).all()


def test_make_batch_noise_uniform_or_per_frame():
    x0 = torch.randn(64, 6, 4, 4, 4)
    for noise, same in (("uniform", True), ("independent", False)):
        cfg = TeacherTrainConfig(noise=noise, p_no_context=0.0)
        _, t, _, _, weight = make_batch(x0, torch.zeros(64, 6, 8), cfg,
                                        torch.Generator().manual_seed(2))
        rows = weight[:, -2] > 0  # clips whose last two frames are both targets
        assert rows.any()
        assert bool((t[rows, -2] == t[rows, -1]).all()) is same
        assert bool((t[rows, -2] != t[rows, -1]).all()) is not same


def test_action_gain_tells_a_model_that_uses_actions_from_one_that_ignores_them():
    torch.manual_seed(0)
    model = DiT(get_config("tiny"))
    actions = torch.zeros(32, 4, 8)
    actions[:, :, 0] = torch.randint(0, 2, (32, 4)).float() * 2 - 1  # forward or back
    x0 = torch.randn(32, 4, 4, 4, 4) * 0.1
    x0[:, -1] += actions[:, -1, 0, None, None, None]  # the last frame is set by its action
    assert abs(action_gain(model, x0, actions, "bidirectional", 3.0)) < 1e-6  # untrained
    cfg = TeacherTrainConfig(action_dropout=0.2, p_no_context=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(150):
        x_t, t, keep, noise, weight = make_batch(x0, actions, cfg,
                                                 torch.Generator().manual_seed(i))
        loss = flow.flow_loss(model(x_t, t, actions, mode="bidirectional", action_mask=keep),
                              x0, noise, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert action_gain(model, x0, actions, "bidirectional", 3.0) > 10


def test_pipeline_checkpoints_round_trip(tiny_pipeline):
    tok, _ = load_tokenizer(tiny_pipeline.tokenizer)
    model, meta = load_teacher(tiny_pipeline.teacher)
    assert meta.kind == "teacher" and meta.mode == "bidirectional" and meta.sidecar["step"] == 20
    assert tok.cfg.frame_size == 32
    log = [json.loads(line) for line in (tiny_pipeline.teacher.parent / "log.jsonl").open()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(np.isfinite(losses))
    assert any("action_gain_pct" in r for r in log)
    assert (tiny_pipeline.teacher.parent / "loss.png").stat().st_size > 1000


def test_teacher_resumes_where_it_stopped(tiny_pipeline, tmp_path):
    base = dict(data=str(tiny_pipeline.data), tokenizer=str(tiny_pipeline.tokenizer),
                out=str(tmp_path / "run"), model="tiny", clip_len=4, batch_size=2, workers=0,
                log_every=1)
    train_teacher(TeacherTrainConfig(**base, steps=6, ckpt_every=3))
    first = json.loads((tmp_path / "run" / "train.json").read_text())["step"]
    train_teacher(TeacherTrainConfig(**base, steps=9, ckpt_every=3))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert first == 6 and steps == sorted(steps) and steps[-1] >= 6
    assert json.loads((tmp_path / "run" / "train.json").read_text())["step"] == 9


def test_prev_frame_teacher_trains_and_loads(tiny_pipeline, tmp_path):
    """--prev-frame travels in the checkpoint; the zero-initialised projection learns."""
    train_teacher(TeacherTrainConfig(data=str(tiny_pipeline.data),
                                     tokenizer=str(tiny_pipeline.tokenizer), out=str(tmp_path),
                                     model="tiny", clip_len=4, batch_size=2, workers=0,
                                     steps=4, ema_decay=0.0, prev_frame=True))
    model, meta = load_teacher(tmp_path / "model")
    assert meta.model.prev_frame and model.prev_embed.weight.abs().sum() > 0
    old, old_meta = load_teacher(tiny_pipeline.teacher)
    assert not old_meta.model.prev_frame and not hasattr(old, "prev_embed")
    assert not old_meta.model.prev_warp and not hasattr(old, "warp")


def test_prev_warp_teacher_trains_and_loads(tiny_pipeline, tmp_path):
    """--prev-warp travels in the checkpoint and its zero-initialised map learns; without
    --prev-frame it is refused."""
    base = dict(data=str(tiny_pipeline.data), tokenizer=str(tiny_pipeline.tokenizer),
                model="tiny", clip_len=4, batch_size=2, workers=0, steps=4, ema_decay=0.0)
    train_teacher(TeacherTrainConfig(**base, out=str(tmp_path / "w"), prev_frame=True,
                                     prev_warp=True))
    model, meta = load_teacher(tmp_path / "w" / "model")
    assert meta.model.prev_warp and model.warp.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="prev_warp needs prev_frame"):
        train_teacher(TeacherTrainConfig(**base, out=str(tmp_path / "x"), prev_warp=True))


def test_init_starts_from_a_trained_teacher_with_new_layers_at_zero(tiny_pipeline, tmp_path):
    """--init loads a teacher's weights; with --prev-frame --prev-warp added the network gives
    that teacher's velocities until it trains; another network, or one without layers the
    checkpoint has, is refused. A run started so trains and saves."""
    old, meta = load_teacher(tiny_pipeline.teacher)
    net = DiT(replace(meta.model, prev_frame=True, prev_warp=True))
    init_from(net, tiny_pipeline.teacher, meta.mode)
    g = torch.Generator().manual_seed(0)
    c, h = meta.model.latent_channels, meta.model.latent_size
    x = torch.randn(2, 4, c, h, h, generator=g)
    t, a = torch.rand(2, 4, generator=g), torch.randn(2, 4, meta.model.action_dim, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x, t, a, mode=meta.mode), old(x, t, a, mode=meta.mode),
                                   atol=0, rtol=0)
    with pytest.raises(ValueError, match="another network: dim"):
        init_from(DiT(replace(meta.model, dim=meta.model.dim * 2)), tiny_pipeline.teacher, meta.mode)
    with pytest.raises(ValueError, match="causal"):
        init_from(DiT(meta.model), tiny_pipeline.teacher, "causal")
    base = dict(data=str(tiny_pipeline.data), tokenizer=str(tiny_pipeline.tokenizer),
                model="tiny", clip_len=4, batch_size=2, workers=0, steps=2, ema_decay=0.0)
    train_teacher(TeacherTrainConfig(**base, out=str(tmp_path / "w"), prev_frame=True,
                                     prev_warp=True, init=str(tiny_pipeline.teacher)))
    warped, _ = load_teacher(tmp_path / "w" / "model")
    with pytest.raises(ValueError, match="does not fit"):
        init_from(DiT(meta.model), str(tmp_path / "w" / "model"), meta.mode)
    assert warped.warp.weight.abs().sum() > 0


def test_sample_dreams_frames_against_the_game(tiny_pipeline):
    tok, _ = load_tokenizer(tiny_pipeline.tokenizer)
    model, meta = load_teacher(tiny_pipeline.teacher)
    frames, actions = play_game(1_000_000, 32, 6, parse_script("forward:3,yaw=1:3"))
    assert actions[0] == Action() and actions[1] == Action(forward=True)
    dream = dream_teacher(model, meta, tok, frames, actions, context=2, steps=4, cfg_scale=1.5)
    assert dream.shape == (4, 32, 32, 3) and dream.dtype == np.uint8
    again = dream_teacher(model, meta, tok, frames, actions, context=2, steps=4, cfg_scale=1.5)
    assert np.array_equal(dream, again)  # seeded


def test_script_parsing():
    acts = parse_script("forward+sprint:2,yaw=-0.5:1,idle:1")
    assert acts == [Action(forward=True, sprint=True)] * 2 + [Action(yaw=-0.5), Action()]
    with pytest.raises(ValueError, match="unknown action"):
        parse_script("fly:3")


def free_port() -> int:
    """A loopback port nobody listens on now, so that two test runs never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_pipeline, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "distill.train", "teacher",
           "--data", str(tiny_pipeline.data), "--tokenizer", str(tiny_pipeline.tokenizer),
           "--out", str(out), "--model", "tiny", "--clip-len", "4", "--batch-size", "2",
           "--steps", "4", "--workers", "0", "--ckpt-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "train.json").read_text())["step"] == 4
    assert "2 process(es)" in res.stdout + res.stderr


def test_make_batch_keeps_sinks_and_a_recent_frame_as_context_of_gapped_clips():
    x0 = torch.randn(256, 8, 4, 4, 4)
    cfg = TeacherTrainConfig(context_noise=0.0, sink_gap=16, sink_frames=4)
    gap = torch.arange(256) % 2 * 5  # every other clip gapped
    *_, weight = make_batch(x0, torch.zeros(256, 8, 8), cfg, torch.Generator().manual_seed(4),
                            gap=gap)
    n_ctx = (weight == 0).sum(1)
    assert (n_ctx[gap > 0] >= 5).all() and (n_ctx[gap > 0] <= 7).all()
    # contiguous clips keep the usual draw: fewer context frames, and none at all
    assert (n_ctx[gap == 0] < 5).any() and (n_ctx[gap == 0] == 0).any()


def test_freeze_start_holds_the_first_frames_still_then_plays_the_clip():
    x0 = torch.randn(200, 6, 2, 3, 3)
    actions = torch.rand(200, 6, 8) + 0.5  # never "no input"
    frozen, acts = freeze_start(x0, actions, 0.5, torch.Generator().manual_seed(5))
    changed = (frozen != x0).flatten(1).any(1)
    assert 0.3 < changed.float().mean() < 0.7
    for b in range(200):
        rest = int((acts[b] == 0).all(-1).sum())  # frames held still, with no input
        if not changed[b]:
            assert rest == 0 and torch.equal(acts[b], actions[b])
            continue
        assert 2 <= rest <= 5 and (acts[b, :rest] == 0).all()
        assert torch.equal(acts[b, rest:], actions[b, rest:])  # then the clip as recorded
        assert all(torch.equal(frozen[b, i], x0[b, rest - 1]) for i in range(rest))
        assert torch.equal(frozen[b, rest:], x0[b, rest:])
    same = freeze_start(x0, actions, 0.0)
    assert same[0] is x0 and same[1] is actions
    with pytest.raises(ValueError, match="freeze-start"):
        train_teacher(TeacherTrainConfig(freeze_start=1.5))


def test_make_batch_blurs_the_context_only():
    x0 = torch.randn(32, 6, 4, 8, 8)
    cfg = TeacherTrainConfig(context_noise=0.0, p_no_context=0.0, context_blur=1.5)
    x_t, t, _, noise, weight = make_batch(x0, torch.zeros(32, 6, 8), cfg,
                                          torch.Generator().manual_seed(3))
    ctx = weight == 0
    # targets are noised from the sharp frames, as without blur
    torch.testing.assert_close(x_t[~ctx], flow.add_noise(x0, noise, t)[~ctx])
    # context frames are smoothed copies: same mean per channel, less energy off the mean
    soft, sharp = x_t[ctx], x0[ctx]
    torch.testing.assert_close(soft.mean((-1, -2)), sharp.mean((-1, -2)), atol=0.15, rtol=0)
    assert soft.var((-1, -2)).mean() < 0.8 * sharp.var((-1, -2)).mean()
    assert not torch.equal(soft, sharp)
    # a blur of std 0 is the identity, and a constant frame stays constant
    assert torch.equal(blur(sharp, 0.0), sharp)
    torch.testing.assert_close(blur(torch.full((2, 8, 8), 3.0), 2.0), torch.full((2, 8, 8), 3.0))

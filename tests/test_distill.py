"""Distillation on tiny random models: ODE pairs, student init, DMD, packing."""

import argparse
import copy
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distill import distill
from distill.dmd import (
    DmdConfig,
    GanHead,
    critic_gan_loss,
    critic_loss,
    dmd_loss,
    frozen,
    gan_logits,
    rollout,
    split_clip,
)
from distill.ode import ode_pairs
from distill.student_init import init_backward
from worldmodel import checkpoint, flags, flow
from worldmodel.actions import Action
from worldmodel.episode import EpisodeWriter
from worldmodel.model import DiT, get_config
from worldmodel.sampling import StudentConfig, StudentSampler, TeacherConfig, teacher_rollout
from worldmodel.session import WorldSession
from worldmodel.tokenizer import TOKENIZER_PRESETS, Tokenizer

C, H = 4, 4  # tiny preset latents
STEPS, SHIFT, CFG = 8, 3.0, 1.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_dit(seed=0):
    """A tiny DiT whose zero-initialised gates and output are random too, so its velocity
    depends on every frame it attends to and on the actions."""
    torch.manual_seed(seed)
    net = DiT(get_config("tiny"))
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
        for p in net.a_embed.parameters():
            p.normal_(0, 1.0)
    return net.eval().requires_grad_(False)


def clip(B=2, Fc=2, N=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(B, Fc + N, C, H, H, generator=g)
    act = torch.rand(B, Fc + N, 8, generator=g).round()
    return lat[:, :Fc], act, lat[:, Fc:]


TEACHER = TeacherConfig(steps=STEPS, cfg_scale=CFG, shift=SHIFT, clip_len=4)


def pairs(teacher, target, mode="bidirectional", seed=0, **kw):
    context, act, _ = clip(**kw)
    Fc = context.shape[1]
    return ode_pairs(teacher, context, act[:, :Fc], act[:, Fc:], replace(TEACHER, mode=mode),
                     target=target, generator=torch.Generator().manual_seed(seed))


def test_ode_pairs_lie_on_the_teachers_euler_path():
    teacher = random_dit()
    context, act, _ = clip(B=2, Fc=2, N=3)
    levels, end = pairs(teacher, "autoregressive", N=3)
    assert levels.shape == (2, 3, 4, C, H, H) and end.shape == (2, 3, C, H, H)
    # the first level is the initial noise, drawn frame by frame
    g = torch.Generator().manual_seed(0)
    noise = torch.cat([torch.randn(2, 1, C, H, H, generator=g) for _ in range(3)], 1)
    assert torch.equal(levels[:, :, 0], noise)
    # the end points are what the teacher's autoregressive sampler makes from that noise
    ref = teacher_rollout(teacher, context, act[:, :2], act[:, 2:], TEACHER,
                          generator=torch.Generator().manual_seed(0))
    assert torch.allclose(end, ref, atol=1e-6)
    # the levels are the Euler path of the first frame at the student's times
    a = act[:, :3]

    def velocity(x, t):
        tt = torch.zeros(2, 3)
        tt[:, -1] = t
        xx = torch.cat([context, x], 1)
        v_c = teacher(xx, tt, a, mode="bidirectional")
        v_u = teacher(xx, tt, a, mode="bidirectional", action_mask=torch.zeros(2, dtype=bool))
        return flow.cfg_combine(v_c, v_u, CFG)[:, -1:]

    x0, path, ts = flow.euler_sample(velocity, noise[:, :1], STEPS, SHIFT, trajectory=True)
    assert torch.allclose(ts[:-1:STEPS // 4], flow.student_timesteps(4, SHIFT))
    assert torch.allclose(levels[:, 0], path[:-1:STEPS // 4].movedim(0, 1)[:, :, 0], atol=1e-5)
    assert torch.allclose(end[:, :1], x0, atol=1e-5)


def test_joint_targets_see_later_frames_only_with_a_bidirectional_teacher():
    teacher = random_dit()
    ar_lv, ar = pairs(teacher, "autoregressive", N=3)
    joint_lv, joint = pairs(teacher, "joint", N=3)
    assert torch.equal(ar_lv[:, :, 0], joint_lv[:, :, 0])  # same noise
    # bidirectional: even the first frame's trajectory depends on the later (noisy) frames
    for i in range(3):
        assert not torch.allclose(ar[:, i], joint[:, i], atol=1e-3)
    # causal: the first frame sees only the clean context either way; later frames see
    # clean predecessors (autoregressive) or noisy ones (joint)
    _, ar_c = pairs(teacher, "autoregressive", mode="causal", N=3)
    _, joint_c = pairs(teacher, "joint", mode="causal", N=3)
    assert torch.allclose(ar_c[:, 0], joint_c[:, 0], atol=1e-5)
    assert not torch.allclose(ar_c[:, 1:], joint_c[:, 1:], atol=1e-3)


def test_student_init_loss_falls_on_fixed_pairs():
    teacher = random_dit()
    context, act, _ = clip(B=4, Fc=2, N=2)
    levels, end = ode_pairs(teacher, context, act[:, :2], act[:, 2:], TEACHER,
                            generator=torch.Generator().manual_seed(0))
    batch = {"context": context, "actions": act, "levels": levels, "target": end}
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    sampler = StudentConfig(window=3, context_length=2)  # 4 frames: the ring rolls over
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss, err, count = init_backward(student, batch, sampler, torch.Generator().manual_seed(0))
        opt.step()
        losses.append(loss)
    assert count.sum() == 4 * 2 and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]


def test_dmd_pieces():
    teacher = random_dit()
    student = random_dit(seed=3).train().requires_grad_(True)
    sampler = StudentConfig(window=3, context_length=2)
    cfg = DmdConfig(teacher_cfg=1.0)
    context, act, _ = clip(B=2, Fc=2, N=3)

    # the rollout carries gradient to the student only through one step per frame
    x = rollout(student, context, act, sampler, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, C, H, H) and x.requires_grad
    x.sum().backward()
    assert student.final.linear.weight.grad.abs().sum() > 0
    with torch.no_grad():
        x = rollout(student, context, act, sampler, torch.Generator().manual_seed(0))
    assert not x.requires_grad

    # a long rollout plays its history as at inference, without a graph: only the last
    # grad_frames frames reach the weights
    long = rollout(student, context, act, sampler, torch.Generator().manual_seed(0),
                   grad_frames=1)
    w = student.final.linear.weight
    g_hist, = torch.autograd.grad(long[:, :-1].sum(), w, retain_graph=True)
    g_last, = torch.autograd.grad(long[:, -1:].sum(), w)
    assert g_hist.abs().sum() == 0 and g_last.abs().sum() > 0
    play = StudentSampler(student, sampler, 2)
    with torch.no_grad():
        play.prefill(context, act[:, :2])
        first = play.step(act[:, 2:3], torch.Generator().manual_seed(5))
        played = rollout(student, context, act[:, :3], sampler,
                         torch.Generator().manual_seed(5), grad_frames=0)
    torch.testing.assert_close(played, first)  # history frames are the sampler's own frames

    # a critic equal to the teacher, with no guidance, gives exactly no DMD gradient
    critic = copy.deepcopy(teacher).train().requires_grad_(True)
    x = x.requires_grad_(True)
    loss, grad_norm = dmd_loss(x, context, act, teacher, critic, cfg, SHIFT, "bidirectional")
    assert loss.item() == 0 and grad_norm.item() == 0
    guided = DmdConfig(teacher_cfg=3.0)
    loss, grad_norm = dmd_loss(x, context, act, teacher, critic, guided, SHIFT, "bidirectional")
    assert loss.item() > 0 and grad_norm.item() > 0
    loss.backward()
    assert x.grad.abs().sum() > 0

    # the critic's flow-matching loss is finite and falls over its own updates on a fixed batch
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.999))
    losses = []
    for _ in range(15):
        loss = critic_loss(critic, context, x, act, cfg, SHIFT, "bidirectional",
                           torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


def test_gan_term_separates_real_from_fake_and_trains_only_the_generator():
    critic = random_dit().train().requires_grad_(True)
    head = GanHead(critic.cfg.dim)
    cfg = DmdConfig(t_max=0.3)  # little noise: the two sets stay apart
    context, act, real = clip(B=4, Fc=2, N=2)
    fake = 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(7))  # too faint
    g = torch.Generator().manual_seed(0)

    # the discriminator learns to tell the clip's real frames from the faint ones
    params = list(critic.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-4, betas=(0.0, 0.999))
    for _ in range(40):
        _, loss, real_logit, fake_logit = critic_gan_loss(
            critic, head, context, fake, context, real, act, cfg, SHIFT, "bidirectional", g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(loss.item()) and real_logit > fake_logit + 1

    # the critic's flow matching from the same forward scores the student's frames alone
    def flow_term(x, other):
        return critic_gan_loss(critic, head, context, x, context, other, act, cfg, SHIFT,
                               "bidirectional", torch.Generator().manual_seed(4))[0]
    assert torch.equal(flow_term(fake, real), flow_term(fake, 2 * real))
    assert not torch.equal(flow_term(fake, real), flow_term(2 * fake, real))

    # the generator's term reaches its frames and none of the discriminator's weights, and
    # following it makes the frames look more real to the discriminator
    x = fake.clone().requires_grad_(True)
    opt.zero_grad(set_to_none=True)
    step = torch.optim.SGD([x], lr=1.0)
    scores = []
    for _ in range(5):
        with frozen(critic, head):
            logits = gan_logits(critic, head, context, x, act, cfg, SHIFT, "bidirectional",
                                torch.Generator().manual_seed(1))
        step.zero_grad()
        torch.nn.functional.softplus(-logits).mean().backward()
        scores.append(logits.mean().item())
        step.step()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in params)
    assert all(p.requires_grad for p in params)  # and they train again after the block
    assert scores[-1] > scores[0]


# ---------------------------------------------------------------------------------------------
# The stages end to end, through the command line


def make_fixtures(root):
    """Two episodes of random latents, a random tiny teacher and an untrained tokenizer."""
    rng = np.random.default_rng(0)
    for e in range(2):
        with EpisodeWriter(root / "data" / f"ep_{e:06d}", size=32, fps=20) as w:
            for _ in range(12):
                w.append(np.zeros((32, 32, 3), np.uint8),
                         Action(forward=bool(rng.integers(2)), yaw=float(rng.uniform(-1, 1))))
        np.save(root / "data" / f"ep_{e:06d}" / "latents.npy",
                rng.standard_normal((12, C, H, H)).astype(np.float16))
    for name in ("tok", "other_tok"):
        tok = Tokenizer(TOKENIZER_PRESETS["tiny"])
        checkpoint.save(root / name, tok.state_dict(),
                        {"kind": "tokenizer", "model": asdict(tok.cfg)})
    teacher = random_dit()
    checkpoint.save(root / "teacher", teacher.state_dict(),
                    {"kind": "teacher", "model": asdict(teacher.cfg), "mode": "bidirectional",
                     "clip_len": 4, "shift": SHIFT,
                     "tokenizer_hash": checkpoint.file_hash(root / "tok.safetensors")})


def wm_distill(*argv):
    parser = argparse.ArgumentParser()
    distill.add_arguments(parser)
    return distill.main(parser.parse_args([str(a) for a in argv]))


def log_rows(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@torch.no_grad()
def test_rollout_keeps_frames_before_the_context_as_sinks():
    # A rollout's context may start with old frames (DMD's --sink-gap): with sinks they stay
    # in the cache and shape every generated frame; without, a short window evicts them.
    from tests.test_model import make_inputs, make_model
    model = make_model(dtype=torch.float32)
    old, _, actions = make_inputs(model, B=1, F=6, seed=3)
    other, _, _ = make_inputs(model, B=1, F=6, seed=4)
    context = torch.cat([old[:, :2], old[:, 2:4]], 1), torch.cat([other[:, :2], old[:, 2:4]], 1)
    for sinks, differ in ((2, True), (0, False)):
        sampler = StudentConfig(steps=2, window=2, sinks=sinks, context_length=2)
        a, b = (rollout(model, c, actions, sampler, torch.Generator().manual_seed(0))
                for c in context)
        assert a.shape == (1, 2, *old.shape[2:])
        assert (not torch.allclose(a, b)) is differ


def test_split_clip_puts_the_old_sinks_before_the_context():
    lat, act = torch.arange(10.0).view(1, 10, 1, 1, 1), torch.zeros(1, 10, 8)
    context, actions, real = split_clip({"latents": lat, "actions": act}, 2, 3)
    assert context.flatten().tolist() == [0, 1, 2, 3, 4] and real.flatten().tolist() == [5, 6, 7, 8, 9]
    assert actions.shape == (1, 10, 8)
    context, _, real = split_clip({"latents": lat, "actions": act}, 0, 3)
    assert context.flatten().tolist() == [0, 1, 2] and real.shape[1] == 7


def test_distill_end_to_end(tmp_path):
    make_fixtures(tmp_path)
    data, teacher = tmp_path / "data", tmp_path / "teacher"
    ode_dir, init_dir, dmd_dir = tmp_path / "ode", tmp_path / "init", tmp_path / "dmd"

    wm_distill("ode", "--preset", "tiny", "--data", data, "--teacher", teacher, "--out", ode_dir)
    index = json.loads((ode_dir / "index.json").read_text())
    assert index["clips"] == 8 and len(index["shards"]) == 2
    shard = load_file(ode_dir / index["shards"][0]["file"])
    assert shard["levels"].shape == (4, 2, 4, C, H, H) and shard["target"].shape == (4, 2, C, H, H)
    assert shard["context"].shape == (4, 2, C, H, H) and shard["actions"].shape == (4, 4, 8)
    assert (ode_dir / "loss.png").is_file()
    # a rerun asking for more clips keeps the finished shards and adds one
    wm_distill("ode", "--preset", "tiny", "--data", data, "--teacher", teacher, "--out", ode_dir,
               "--clips", 10)
    index = json.loads((ode_dir / "index.json").read_text())
    assert index["clips"] == 10 and len(index["shards"]) == 3
    assert torch.equal(load_file(ode_dir / index["shards"][0]["file"])["target"], shard["target"])

    wm_distill("init", "--preset", "tiny", "--pairs", ode_dir, "--teacher", teacher,
               "--out", init_dir, "--steps", 6)
    wm_distill("init", "--preset", "tiny", "--pairs", ode_dir, "--teacher", teacher,
               "--out", init_dir, "--steps", 8)  # resumes at step 6
    assert json.loads((init_dir / "model.json").read_text())["step"] == 8
    assert [r["step"] for r in log_rows(init_dir)] == [2, 4, 6, 8]
    assert (init_dir / "loss.png").is_file()

    wm_distill("dmd", "--preset", "tiny", "--data", data, "--teacher", teacher,
               "--student", init_dir / "model", "--out", dmd_dir)
    rows = log_rows(dmd_dir)
    assert len(rows) == 3
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("gen_loss", "critic_loss", "dmd_grad_norm",
                                               "real_x0_loss"))
    start = load_file(init_dir / "model.safetensors")
    trained = load_file(dmd_dir / "train.safetensors")
    moved = [k for k, v in start.items() if not torch.equal(v, trained[f"model.generator.{k}"])]
    assert len(moved) > len(start) // 2
    # with the GAN term a discriminator head trains beside the critic and is saved with it
    gan_dir = tmp_path / "dmd-gan"
    wm_distill("dmd", "--preset", "tiny", "--data", data, "--teacher", teacher,
               "--student", init_dir / "model", "--out", gan_dir, "--gan-weight", "0.5")
    rows = log_rows(gan_dir)
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("gan_d_loss", "gan_g_loss", "gan_real_logit",
                                               "gan_fake_logit", "gan_grad_norm"))
    assert any(k.startswith("model.gan_head.") for k in load_file(gan_dir / "train.safetensors"))

    # old sinks before each rollout's context: a student trained with sinks
    with pytest.raises(ValueError, match="sampler has sinks"):
        wm_distill("dmd", "--preset", "tiny", "--data", data, "--teacher", teacher,
                   "--student", init_dir / "model", "--out", tmp_path / "dmd-nosinks",
                   "--sink-gap", "3")
    wm_distill("init", "--preset", "tiny", "--pairs", ode_dir, "--teacher", teacher,
               "--out", tmp_path / "init-sinks", "--steps", 2, "--sinks", 1, "--window", 2)
    wm_distill("dmd", "--preset", "tiny", "--data", data, "--teacher", teacher,
               "--student", tmp_path / "init-sinks" / "model", "--out", tmp_path / "dmd-gap",
               "--sink-gap", "3")
    assert all(np.isfinite(r["real_x0_loss"]) for r in log_rows(tmp_path / "dmd-gap"))

    world = tmp_path / "world"
    with pytest.raises(ValueError, match="not the tokenizer"):
        wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "other_tok",
                   "--out", world)
    wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
               "--out", world)
    session = WorldSession.from_checkpoint(world)
    assert session.sampler.cfg == StudentConfig(window=3, context_length=2)
    assert session.worlds is None  # not declared: any procedural world
    wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
               "--out", tmp_path / "world-few", "--worlds", "0-2,7")
    assert WorldSession.from_checkpoint(tmp_path / "world-few").worlds == [0, 1, 2, 7]
    wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
               "--out", tmp_path / "world-sinks", "--sinks", "2", "--window", "1")
    sunk = WorldSession.from_checkpoint(tmp_path / "world-sinks")
    assert sunk.sampler.cfg == StudentConfig(window=1, sinks=2, context_length=2)
    with pytest.raises(ValueError, match="--window"):
        wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
                   "--out", tmp_path / "world-none", "--window", "0")
    # the range of the data's channel means becomes the sampler's guard, from latents of this
    # tokenizer only
    with pytest.raises(ValueError, match="no latents from"):
        wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
                   "--out", tmp_path / "world-bounds", "--mean-bounds", data)
    tok_hash = checkpoint.file_hash(tmp_path / "tok.safetensors")
    means = []
    for ep in sorted(data.glob("ep_*")):
        (ep / "latents.json").write_text(json.dumps({"tokenizer": tok_hash, "frames": 12}))
        means.append(np.load(ep / "latents.npy").astype(np.float32).mean(axis=(2, 3)))
    wm_distill("pack", "--student", dmd_dir / "model", "--tokenizer", tmp_path / "tok",
               "--out", tmp_path / "world-bounds", "--mean-bounds", data)
    bounded = WorldSession.from_checkpoint(tmp_path / "world-bounds")
    means = np.concatenate(means)
    np.testing.assert_allclose(bounded.sampler.cfg.mean_bounds, [means.min(0), means.max(0)])
    assert bounded.sampler.cfg.mean_bounds[0] != bounded.sampler.cfg.mean_bounds[1]
    # a packed folder's student packs again, keeping its run's facts and worlds
    wm_distill("pack", "--student", tmp_path / "world-few" / "student", "--tokenizer",
               tmp_path / "tok", "--out", tmp_path / "world-again", "--sinks", "1")
    again = json.loads((tmp_path / "world-again" / "student.json").read_text())
    assert again["worlds"] == [0, 1, 2, 7] and again["sampler"]["sinks"] == 1
    assert again["distill"]["stage"] == "dmd" and again["distill"]["step"] == json.loads(
        (dmd_dir / "model.json").read_text())["step"]
    session.reset(np.zeros((3, 32, 32, 3), np.uint8))
    for a in (Action(), Action(forward=True), Action(yaw=0.5)):
        frame = session.step(a)
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


def test_presets_and_flags():
    parser = argparse.ArgumentParser()
    distill.add_arguments(parser)
    cfg = distill.config_from_args(parser.parse_args(["dmd", "--preset", "tiny", "--steps", "7"]))
    assert cfg.steps == 7 and cfg.clip_len == 4 and cfg.critic_steps == 2
    cfg = distill.config_from_args(parser.parse_args(["init"]))
    assert cfg == distill.student_init.PRESETS["cpu"]
    with pytest.raises(SystemExit):
        parser.parse_args(["ode", "--preset", "huge"])
    ode_cfg = distill.config_from_args(parser.parse_args(["ode", "--teacher-steps", "16"]))
    assert ode_cfg.teacher_steps == 16 and ode_cfg.teacher_cfg == TeacherConfig.cfg_scale


def test_every_command_builds_its_flags_from_its_config():
    from distill import eval as wm_eval
    from distill import train
    from worldmodel import bench

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["teacher", "--model", "tiny", "--beta2", "0.95"])
    assert args.model == "tiny" and args.beta2 == 0.95
    with pytest.raises(SystemExit):  # the network size is --model, not --preset
        parser.parse_args(["teacher", "--preset", "tiny"])
    parser = argparse.ArgumentParser()
    wm_eval.add_arguments(parser)
    cfg = flags.config_from_args(wm_eval.EvalConfig, parser.parse_args(["--horizons", "1,4"]))
    assert wm_eval.parse_horizons(cfg.horizons) == [1, 4]
    assert cfg.teacher_steps == TeacherConfig.steps
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    cfg = flags.config_from_args(bench.BenchConfig, parser.parse_args(["--separate-write", "--json"]))
    assert cfg.separate_write and cfg.json and cfg.teacher_clip_len == TeacherConfig.clip_len

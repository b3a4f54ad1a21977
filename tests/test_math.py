"""The math of flow matching, sampling and distillation against numbers worked out by hand
or fields whose solution is known: never against the function under test."""

import pytest
import torch
import torch.nn as nn

from distill.dmd import DmdConfig, dmd_loss
from distill.ode import ode_pairs
from worldmodel import flow
from worldmodel.sampling import StudentConfig, StudentSampler, TeacherConfig, guided_velocity

# ---------------------------------------------------------------------------------------------
# Formulas


def test_add_noise_and_predict_x0_by_hand():
    x0, noise = torch.tensor([[[2.0]]]), torch.tensor([[[-4.0]]])  # (B, F, 1)
    # x_t = (1 - t) x0 + t noise: 0.75 * 2 + 0.25 * -4 = 0.5
    assert flow.add_noise(x0, noise, torch.tensor([[0.25]])).item() == 0.5
    # per-frame times: frame 0 is data, frame 1 is noise
    two = flow.add_noise(torch.tensor([[[2.0], [2.0]]]), torch.tensor([[[-4.0], [-4.0]]]),
                         torch.tensor([[0.0, 1.0]]))
    assert two.flatten().tolist() == [2.0, -4.0]
    # x0 = x_t - t v: 1 - 0.25 * 2 = 0.5
    assert flow.predict_x0(torch.tensor([[[1.0]]]), torch.tensor([[[2.0]]]),
                           torch.tensor([[0.25]])).item() == 0.5


def test_renoise_mixes_the_prediction_with_fresh_noise():
    x0 = torch.full((2, 1, 3), 2.0)
    out = flow.renoise(x0, 0.25, torch.Generator().manual_seed(7))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, 0.75 * 2.0 + 0.25 * noise)
    assert torch.equal(flow.renoise(x0, 0.0, torch.Generator().manual_seed(7)), x0)


def test_cfg_combine_by_hand():
    cond, uncond = torch.tensor([3.0]), torch.tensor([1.0])
    # uncond + s (cond - uncond): 1 + 1.5 * 2 = 4; scale 1 is the conditional model alone
    assert flow.cfg_combine(cond, uncond, 1.5).item() == 4.0
    assert flow.cfg_combine(cond, uncond, 1.0).item() == 3.0
    assert flow.cfg_combine(cond, uncond, 0.0).item() == 1.0


def test_shift_and_schedules_by_hand():
    # shift_time(t, s) = s t / (1 + (s - 1) t): 3 * 0.5 / 2 = 0.75, 3 * 0.25 / 1.5 = 0.5
    assert flow.shift_time(torch.tensor(0.5), 3.0).item() == 0.75
    assert flow.shift_time(torch.tensor(0.25), 3.0).item() == 0.5
    assert flow.shift_time(torch.tensor(0.3), 1.0).item() == torch.tensor(0.3).item()
    # student: linspace(1, 0, 5) without its last point, shifted
    torch.testing.assert_close(flow.student_timesteps(4, 3.0), torch.tensor([1.0, 0.9, 0.75, 0.5]))
    torch.testing.assert_close(flow.student_timesteps(2, 1.0), torch.tensor([1.0, 0.5]))
    # teacher: linspace(1, 0, 3) shifted, both ends kept
    torch.testing.assert_close(flow.ode_timesteps(2, 3.0), torch.tensor([1.0, 0.75, 0.0]))


def test_flow_loss_by_hand():
    # target velocity noise - x0 = (2, 0); error (1 - 2)^2 and (1 - 0)^2 -> mean 1 per frame
    v, x0, noise = torch.ones(1, 2, 2), torch.zeros(1, 2, 2), torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])
    assert flow.flow_loss(v, x0, noise, torch.tensor([[1.0, 1.0]])).item() == 1.0
    v[:, 1] = torch.tensor([2.0, 0.0])  # the second frame exact: the mean over both halves
    assert flow.flow_loss(v, x0, noise, torch.tensor([[1.0, 1.0]])).item() == 0.5


# ---------------------------------------------------------------------------------------------
# The teacher's ODE sampler


def test_euler_is_exact_on_the_flow_of_one_data_point():
    # The rectified flow of a single point x0 has velocity v(x, t) = (x - x0) / t: it depends on
    # x, and the path x_t = (1 - t) x0 + t n is a straight line, so every Euler step lands on
    # it exactly, whatever the grid.
    x0, n = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, -2.0])
    end, path, ts = flow.euler_sample(lambda x, t: (x - x0) / t, n, 2, shift=3.0, trajectory=True)
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(path[1], 0.25 * x0 + 0.75 * n)
    torch.testing.assert_close(end, x0)
    torch.testing.assert_close(path[-1], x0)


def test_euler_steps_by_hand_on_a_linear_field():
    # v = x on the grid 1 -> 0.5 -> 0 (shift 1): x1 = 1 + (0.5 - 1) * 1 = 0.5,
    # x2 = 0.5 + (0 - 0.5) * 0.5 = 0.25
    end, path, _ = flow.euler_sample(lambda x, t: x, torch.tensor([1.0]), 2, shift=1.0,
                                     trajectory=True)
    assert path.flatten().tolist() == [1.0, 0.5, 0.25] and end.item() == 0.25


# ---------------------------------------------------------------------------------------------
# Toy networks with known answers


class StraightTeacher(nn.Module):
    """Every noisy frame flows in a straight line to a known clean frame: v = (x - target) / t,
    so x0 = x - t v = target. With the actions the target is the last clean frame before it
    plus `cond` plus the frame's first action value; without them plus `uncond`. Clean
    frames (t = 0) get velocity 0."""

    def __init__(self, cond: float = 1.0, uncond: float = 0.0):
        super().__init__()
        self.cond, self.uncond = cond, uncond
        self.calls, self.widest = 0, 0

    def forward(self, x, t, actions, mode="bidirectional", action_mask=None):
        self.calls += 1
        B, F = t.shape
        self.widest = max(self.widest, F)
        keep = torch.ones(B, dtype=torch.bool) if action_mask is None else action_mask
        v = torch.zeros_like(x)
        for b in range(B):
            last_clean = None
            for f in range(F):
                if t[b, f] == 0:
                    last_clean = x[b, f]
                    continue
                step = self.cond + actions[b, f, 0] if keep[b] else torch.tensor(self.uncond)
                v[b, f] = (x[b, f] - (last_clean + step)) / t[b, f]
        return v


def test_guided_velocity_is_the_cfg_mix_of_both_branches():
    teacher = StraightTeacher(cond=2.0, uncond=1.0)
    x = torch.zeros(1, 2, 1, 1, 1)  # a clean frame at 0, then a noisy one at 0 with t = 0.5
    t = torch.tensor([[0.0, 0.5]])
    a = torch.zeros(1, 2, 8)
    v = guided_velocity(teacher, x, t, a, mode="bidirectional", cfg_scale=1.5)
    # targets 2 (cond) and 1 (uncond), guided 1 + 1.5 * (2 - 1) = 2.5; v = (0 - 2.5) / 0.5
    assert v[0, 1].item() == -5.0 and teacher.calls == 1  # one doubled batch
    assert guided_velocity(teacher, x, t, a, mode="bidirectional", cfg_scale=1.0)[0, 1].item() == -4.0


def test_ode_pairs_are_the_teachers_trajectory_at_the_student_levels():
    # With the actions a frame moves 1 + a past its predecessor, without them 1: guided by 1.5
    # it moves 1 + 1.5 * ((1 + a) - 1) = 1 + 1.5 a, on a straight path from its noise.
    teacher = StraightTeacher(cond=1.0, uncond=1.0)
    B, Fc, N = 2, 2, 3
    context = torch.zeros(B, Fc, 1, 2, 2)
    context[:, -1] = 10.0
    act = torch.zeros(B, Fc + N, 8)
    act[0, Fc:, 0] = torch.tensor([1.0, 0.0, 2.0])  # clip 0 moves by 2.5, 1, 4 ; clip 1 by 1
    cfg = TeacherConfig(steps=8, cfg_scale=1.5, shift=3.0, clip_len=3)
    levels, end = ode_pairs(teacher, context, act[:, :Fc], act[:, Fc:], cfg,
                            generator=torch.Generator().manual_seed(0))
    want_end = torch.tensor([[12.5, 13.5, 17.5], [11.0, 12.0, 13.0]])  # (B, N)
    torch.testing.assert_close(end, want_end[:, :, None, None, None].expand(B, N, 1, 2, 2))
    g = torch.Generator().manual_seed(0)
    noise = torch.stack([torch.randn(B, 1, 2, 2, generator=g) for _ in range(N)], 1)  # (B, N, ...)
    for k, t in enumerate([1.0, 0.9, 0.75, 0.5]):  # the student's levels, by hand
        torch.testing.assert_close(levels[:, :, k], (1 - t) * end + t * noise)
    assert teacher.widest == cfg.clip_len  # never more frames than it was trained on


# ---------------------------------------------------------------------------------------------
# The student's 4-step loop


class ConstantVelocity(nn.Module):
    """A stand-in student: velocity c everywhere; records what each pass saw."""

    def __init__(self, c: float, size: int = 2):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))
        self.c = c
        self.cfg = type("Cfg", (), {"latent_channels": 1, "latent_size": size})()
        self.seen: list[tuple[torch.Tensor, torch.Tensor, object]] = []

    def init_cache(self, batch, window, sinks, device, dtype):
        return type("Cache", (), {"reset": lambda self: None, "frames": 0})()

    def forward_step(self, x, t, a, cache, write=False):
        self.seen.append((x.clone(), t.clone(), write))
        return torch.full_like(x, self.c)


def test_student_steps_predict_x0_and_renoise_to_the_next_level():
    c = 0.5
    model = ConstantVelocity(c)
    sampler = StudentSampler(model, StudentConfig(steps=4, shift=3.0), fuse_write=False)
    out = sampler.step(torch.zeros(1, 1, 8), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    shape = (1, 1, 1, 2, 2)
    x = torch.randn(shape, generator=g)  # the first draw is the starting noise
    want_x, want_t = [], [1.0, 0.9, 0.75, 0.5]
    for k, t in enumerate(want_t):
        want_x.append(x)
        x0 = x - t * c
        if k < 3:
            nxt = want_t[k + 1]
            x = (1 - nxt) * x0 + nxt * torch.randn(shape, generator=g)
    steps = model.seen[:4]
    for (seen_x, seen_t, write), wx, wt in zip(steps, want_x, want_t):
        assert not write and torch.allclose(seen_t, torch.full((1, 1), wt))
        torch.testing.assert_close(seen_x, wx)
    torch.testing.assert_close(out, x0)
    # the clean frame goes into the cache at t = 0
    cached_x, cached_t, write = model.seen[4]
    assert write and torch.equal(cached_t, torch.zeros(1, 1)) and torch.equal(cached_x, out)


def test_exit_step_returns_that_steps_prediction():
    model = ConstantVelocity(0.5)
    sampler = StudentSampler(model, StudentConfig(steps=4, shift=3.0), fuse_write=False)
    out = sampler.step(torch.zeros(1, 1, 8), torch.Generator().manual_seed(3), exit_step=1)
    assert len(model.seen) == 3  # two denoising passes, then the cache write
    x1, t1, _ = model.seen[1]
    torch.testing.assert_close(out, x1 - 0.9 * 0.5)


# ---------------------------------------------------------------------------------------------
# DMD


class X0Net(nn.Module):
    """Predicts a fixed clean frame per clip: v = (x - target) / t, so x0 = target."""

    def __init__(self, target: torch.Tensor):  # (B, F, C, h, w)
        super().__init__()
        self.target = target

    def forward(self, x, t, actions, mode="bidirectional", action_mask=None):
        target = self.target.repeat(x.shape[0] // self.target.shape[0], 1, 1, 1, 1)
        tt = t.view(*t.shape, 1, 1, 1).clamp_min(1e-12)
        return torch.where(t.view(*t.shape, 1, 1, 1) > 0, (x - target) / tt, torch.zeros_like(x))


def test_dmd_step_moves_the_student_toward_the_teacher():
    # Per clip: the teacher's x0 is R, the critic's (the student's distribution) R + d, the
    # student's frame R + 2d. The DMD gradient is (x0_fake - x0_real) / mean|x - x0_real| =
    # d / 2d = 0.5 in every clip, whatever d: normalised per clip, pointing from the teacher
    # to the critic, so a descent step moves the frame toward the teacher's x0.
    B, Fc, N, shape = 2, 1, 2, (1, 2, 2)
    R = torch.randn(B, Fc + N, *shape, generator=torch.Generator().manual_seed(0))
    d = torch.tensor([2.0, 0.5]).view(B, 1, 1, 1, 1)
    fake = R + d
    teacher, critic = X0Net(R), X0Net(fake)
    context = R[:, :Fc]
    x = (R[:, Fc:] + 2 * d).clone().requires_grad_(True)
    actions = torch.zeros(B, Fc + N, 8)
    cfg = DmdConfig(teacher_cfg=1.5)  # guidance of two equal branches changes nothing
    loss, rms = dmd_loss(x, context, actions, teacher, critic, cfg, 3.0, "bidirectional",
                         torch.Generator().manual_seed(1))
    assert abs(rms.item() - 0.5) < 1e-4
    assert abs(loss.item() - 0.5 * 0.25) < 1e-4  # 0.5 * mean(grad^2)
    loss.backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5 / x.numel()), atol=1e-6, rtol=1e-4)
    before = (x - R[:, Fc:]).abs()
    after = (x - 0.1 * x.numel() * x.grad - R[:, Fc:]).abs()
    assert (after < before).all()


def test_dmd_regression_term_pulls_toward_the_real_frames():
    # Teacher and critic agree, so the DMD gradient is 0; what is left is w * 0.5 * mse(x, real),
    # whose gradient is w * (x - real) / numel.
    B, Fc, N, shape = 2, 1, 2, (1, 2, 2)
    g = torch.Generator().manual_seed(0)
    R = torch.randn(B, Fc + N, *shape, generator=g)
    real = torch.randn(B, N, *shape, generator=g)
    net = X0Net(R)
    x = (R[:, Fc:] + 1.0).clone().requires_grad_(True)
    actions = torch.zeros(B, Fc + N, 8)
    w = 2.0
    cfg = DmdConfig(teacher_cfg=1.5, real_weight=w)
    loss, rms = dmd_loss(x, R[:, :Fc], actions, net, net, cfg, 3.0, "bidirectional",
                         torch.Generator().manual_seed(1), real=real)
    assert rms.item() < 1e-6
    expected = w * 0.5 * (x.detach() - real).pow(2).mean()
    assert abs(loss.item() - expected.item()) < 1e-5
    loss.backward()
    torch.testing.assert_close(x.grad, w * (x.detach() - real) / x.numel(), atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="real frames"):
        dmd_loss(x, R[:, :Fc], actions, net, net, cfg, 3.0, "bidirectional")

"""Rectified flow: the training objective, the teacher's ODE sampler, the student's schedule.

Convention: x_t = (1 - t) * x0 + t * noise, t in [0, 1], t = 0 is data. The network
predicts the velocity v = noise - x0, so x0 = x_t - t * v.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift (SD3): pushes t towards 1 (more noise) for shift > 1."""
    return shift * t / (1 + (shift - 1) * t)


def sample_time(shape, shift: float = 1.0, device=None, generator=None) -> torch.Tensor:
    """Logit-normal t in (0, 1), then shifted."""
    u = torch.randn(shape, device=device, generator=generator)
    return shift_time(torch.sigmoid(u), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """x0, noise: (B, F, ...); t: (B, F) per-frame times, or one time for all."""
    if torch.is_tensor(t):
        t = t.view(*t.shape, *([1] * (x0.dim() - t.dim())))
    return (1 - t) * x0 + t * noise


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(*t.shape, *([1] * (x_t.dim() - t.dim())))
    return x_t - t * v


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
              weight: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error over frames with weight (B, F) > 0 (context frames get 0)."""
    err = (v_pred - (noise - x0)).pow(2).flatten(2).mean(-1)  # (B, F)
    return (err * weight).sum() / weight.sum().clamp_min(1)


def ode_timesteps(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 decreasing times from 1 to 0 on the shifted grid."""
    return shift_time(torch.linspace(1, 0, steps + 1), shift)


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float,
                 trajectory: bool = False):
    """Integrate dx/dt = v from t = 1 (noise) to t = 0 with Euler steps.

    velocity(x_t, t) takes a scalar-time tensor t of shape () and returns v like x_t.
    With trajectory=True also returns every x_t visited (steps + 1 of them) and their times.
    """
    ts = ode_timesteps(steps, shift).to(noise.device)
    x = noise
    path = [x]
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity(x, t)
        path.append(x)
    return (x, torch.stack(path), ts) if trajectory else x


def student_timesteps(steps: int = 4, shift: float = 3.0) -> torch.Tensor:
    """The few noise levels the student denoises from, highest first: 4 steps, shift 3
    gives [1.0, 0.9, 0.75, 0.5]."""
    return shift_time(torch.linspace(1, 0, steps + 1)[:-1], shift)


def renoise(x0: torch.Tensor, t: float | torch.Tensor, generator=None,
            noise: torch.Tensor | None = None) -> torch.Tensor:
    """Jump from a clean prediction to noise level t with fresh noise (few-step sampling);
    `noise` given, that noise instead of a draw from `generator`."""
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    return add_noise(x0, noise, t)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on actions: scale 1 is the conditional model alone."""
    return v_uncond + scale * (v_cond - v_uncond)

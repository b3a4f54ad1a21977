"""Image metrics on uint8 frames (..., H, W, 3): PSNR and SSIM, per frame."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _float(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x))
    return x.float().movedim(-1, -3) / 255.0  # (..., 3, H, W) in 0..1


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR in dB between uint8 frames (..., H, W, 3); identical frames give 100."""
    mse = (_float(a) - _float(b)).pow(2).flatten(-3).mean(-1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp_max(100.0).numpy()


def ssim(a, b, window: int = 7) -> np.ndarray:
    """Per-frame SSIM (mean over channels) with a uniform window, as skimage's default."""
    x, y = _float(a), _float(b)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    y = y.reshape(-1, *y.shape[-3:])
    c = x.shape[1]
    k = torch.ones(c, 1, window, window) / window**2
    mu_x, mu_y = F.conv2d(x, k, groups=c), F.conv2d(y, k, groups=c)
    n = window**2
    cov = n / (n - 1)  # sample covariance, as skimage
    sxx = cov * (F.conv2d(x * x, k, groups=c) - mu_x**2)
    syy = cov * (F.conv2d(y * y, k, groups=c) - mu_y**2)
    sxy = cov * (F.conv2d(x * y, k, groups=c) - mu_x * mu_y)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(-1).reshape(lead).numpy()

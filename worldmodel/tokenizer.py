"""Frame tokenizer: a convolutional autoencoder, 2x spatial downsampling per stage.

    frames (B, 3, S, S) in -1..1  --encode-->  latents (B, C, S/f, S/f), unit variance
    latents                       --decode-->  frames

f = 2^stages: three stages (8x) for the default, two (4x) for sharper 16x16 latents of a
64x64 frame. The decoder runs once per generated frame, so it is kept small: one
upsampling stage per downsampling stage, with one residual block each. Latents are normalised per channel with statistics
measured on the training data after training (`set_latent_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TokenizerConfig:
    latent_channels: int = 8
    channels: tuple[int, ...] = (32, 64, 128)  # widths at S/2, S/4, S/8: one per 2x stage
    frame_size: int = 64

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if not 1 <= len(self.channels) <= 5:
            raise ValueError(f"tokenizer needs 1 to 5 stage widths, got {self.channels}")
        if self.frame_size % self.downsample:
            raise ValueError(f"frame size must be a multiple of {self.downsample}, "
                             f"got {self.frame_size}")

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)

    @property
    def latent_size(self) -> int:
        return self.frame_size // self.downsample


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "tiny": TokenizerConfig(latent_channels=4, channels=(8, 16, 16), frame_size=32),
    "cpu": TokenizerConfig(latent_channels=8, channels=(16, 32, 64), frame_size=64),
    # 4x: 64x64 frames to 16x16x8 latents (4x the values of `cpu`) for sharper rooms and
    # corridors; wider stages, and still a decoder of about the same cost per frame
    "cpu-4x": TokenizerConfig(latent_channels=8, channels=(24, 48), frame_size=64),
    "gpu-128": TokenizerConfig(latent_channels=8, channels=(64, 128, 256), frame_size=128),
    "gpu-256": TokenizerConfig(latent_channels=16, channels=(64, 128, 256), frame_size=256),
}


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c = cfg.channels
        self.stem = nn.Conv2d(3, c[0], 3, padding=1)
        layers: list[nn.Module] = []
        prev = c[0]
        for ch in c:  # each stage halves the resolution
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), ResBlock(ch)]
            prev = ch
        self.down = nn.Sequential(*layers)
        self.out = nn.Conv2d(prev, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.down(self.stem(x))))  # (B, C, S/f, S/f)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c = cfg.channels[::-1]
        self.inp = nn.Conv2d(cfg.latent_channels, c[0], 3, padding=1)
        layers: list[nn.Module] = []
        prev = c[0]
        for ch in c:  # each stage doubles the resolution
            layers += [ResBlock(prev), nn.ConvTranspose2d(prev, ch, 4, stride=2, padding=1)]
            prev = ch
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(prev, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.up(self.inp(z))))  # (B, 3, S, S)


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1,) * (z.dim() - 3) + (-1, 1, 1)  # broadcast over (..., C, h, w)
        return self.latent_mean.view(shape), self.latent_std.view(shape)

    def forward(self, x: torch.Tensor, latent_noise: float = 0.0):
        """Training pass on x (B, 3, S, S): (reconstruction, raw latents). The decoder sees
        the latents with relative Gaussian noise so it tolerates a generator's latents."""
        z = self.encoder(x)
        z_in = z + latent_noise * z.detach().std() * torch.randn_like(z) if latent_noise else z
        return self.decoder(z_in), z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., 3, S, S) in -1..1 -> normalised latents (..., C, S/f, S/f).

        The result does not depend on the memory layout of x: convolutions pick their
        kernels (and so their rounding) by layout, so the batch is put in one first, the
        channels-last layout that `frames_to_tensor` gives contiguous uint8 frames."""
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
        z = self.encoder(x)
        z = z.reshape(*lead, *z.shape[-3:])
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents (..., C, h, w) -> frames (..., 3, S, S), roughly -1..1; like
        encode, the same whatever the memory layout of z."""
        mean, std = self._stats(z)
        lead = z.shape[:-3]
        z = (z * std + mean).reshape(-1, *z.shape[-3:]).contiguous()
        x = self.decoder(z)
        return x.reshape(*lead, *x.shape[-3:])

    @torch.no_grad()
    def set_latent_stats(self, z_raw: torch.Tensor) -> None:
        """Per-channel mean and std from raw latents (N, C, h, w) of training frames."""
        self.latent_mean.copy_(z_raw.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z_raw.std(dim=(0, 2, 3)).clamp_min(1e-4))


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in -1..1."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in -1..1 -> uint8 (..., H, W, 3)."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).movedim(-3, -1)
